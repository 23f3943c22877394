package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// strace -f -ttt output: two threads, each fsync and fdatasync split by the
// other's calls; plus lines that are not calls.
const straceSample = `28348 1796342208.421126 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---
28389 1796342208.528423 fsync(3 <unfinished ...>
28348 1796342208.528706 fsync(3 <unfinished ...>
28389 1796342208.529348 <... fsync resumed>) = 0
28389 1796342208.529404 fdatasync(3 <unfinished ...>
28348 1796342208.529443 <... fsync resumed>) = 0
28348 1796342208.529471 fdatasync(3) = 0
28389 1796342208.529545 <... fdatasync resumed>) = 0
28389 1796342209.600000 fsync(3) = 0
28389 1796342209.731763 +++ exited with 0 +++
`

func TestCountSyscalls(t *testing.T) {
	p := filepath.Join(t.TempDir(), "strace.txt")
	if err := os.WriteFile(p, []byte(straceSample), 0o644); err != nil {
		t.Fatal(err)
	}
	at := func(s float64) time.Time { return time.UnixMicro(int64(s * 1e6)) }
	for _, c := range []struct {
		from, to float64
		want     int
	}{
		{1796342208, 1796342210, 5},
		{1796342208, 1796342209, 4},
		{1796342208.5287, 1796342209, 3}, // all but the first fsync
		{1796342210, 1796342211, 0},
	} {
		got, err := countSyscalls(p, at(c.from), at(c.to))
		if err != nil || got != c.want {
			t.Errorf("countSyscalls(%v, %v) = %d, %v; want %d", c.from, c.to, got, err, c.want)
		}
	}
}

// TestSideBySideSmoke runs the whole harness, small, when
// UBBENCH_SMOKE_BIN names a built usagebreaker (and bench/node has its
// node_modules). It asserts that it runs, never how fast.
func TestSideBySideSmoke(t *testing.T) {
	bin := os.Getenv("UBBENCH_SMOKE_BIN")
	if bin == "" {
		t.Skip("set UBBENCH_SMOKE_BIN to a built usagebreaker to run the side-by-side harness once, small")
	}
	if err := os.Chdir("../.."); err != nil { // the repository's root, for bench/node and ./bench/ceiling
		t.Fatal(err)
	}
	if err := sidebysideCmd(bin, false, []string{"-accounts", "30", "-warmup", "10", "-latency", "10", "-rounds", "1"}); err != nil {
		t.Fatal(err)
	}
}
