package testenv

import (
	"fmt"
	"go/build"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BuildBinary builds the main package pkg (an import path, or "." for the
// test's own) into dir, with -race when race is set (pass the test's own
// race setting, so the build reuses what is already compiled).
func BuildBinary(t testing.TB, dir, pkg string, race bool) string {
	t.Helper()
	bin := filepath.Join(dir, "usagebreaker")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(build.Default.GOROOT, "bin", "go")
	}
	out, err := exec.Command(goTool, append(args, pkg)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// Process is a daemon run as a child process: started, killed and started
// again on the same arguments, each run logging to a file of its own
// (Dir/Name-N.log). Its admin listener answers /-/ready and /metrics.
type Process struct {
	Name  string // names its log files
	Dir   string
	Bin   string
	Args  []string
	Admin string // the admin listener's base URL
	HTTP  *http.Client

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	logf   *os.File
	starts int
}

// NewProcess returns a process that is killed when t ends, and whose last
// log's tail is shown when t failed.
func NewProcess(t testing.TB, p *Process) *Process {
	if p.HTTP == nil {
		p.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	t.Cleanup(func() {
		if p.Running() {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() && p.starts > 0 {
			t.Logf("last log of %s:\n%s", p.Name, Tail(p.LogPath(), 40))
		}
	})
	return p
}

// LogPath is the current (or last) run's log file.
func (p *Process) LogPath() string {
	return filepath.Join(p.Dir, fmt.Sprintf("%s-%d.log", p.Name, p.starts))
}

// Start starts the process; it does not wait for it to be ready.
func (p *Process) Start(t testing.TB) {
	t.Helper()
	p.starts++
	f, err := os.Create(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	p.logf = f
	p.cmd = exec.Command(p.Bin, p.Args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	p.exited = exited
	go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(p.cmd)
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// WaitReady waits until /-/ready answers 200, failing t if the process
// exits first or is not ready in 90 s.
func (p *Process) WaitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-p.exited:
			t.Fatalf("%s (start %d) exited: %v\n%s", p.Name, p.starts, p.cmd.ProcessState, Tail(p.LogPath(), 40))
		default:
		}
		if p.Status("/-/ready") == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (start %d) not ready in time\n%s", p.Name, p.starts, Tail(p.LogPath(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	p.logf.Close()
}

// Stop sends SIGTERM and expects a clean exit (status 0) within 60 s.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("%s exited with %v after SIGTERM\n%s", p.Name, p.cmd.ProcessState, Tail(p.LogPath(), 40))
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not exit after SIGTERM", p.Name)
	}
	p.logf.Close()
}

// Status is the status code of a GET of path on the admin listener (0
// when it does not answer).
func (p *Process) Status(path string) int {
	resp, err := p.HTTP.Get(p.Admin + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Metric returns a sample's value from /metrics (0 when absent), or an
// error when the process does not answer.
func (p *Process) Metric(sample string) (float64, error) {
	resp, err := p.HTTP.Get(p.Admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return Metric(string(b), sample), nil
}

// Post POSTs to path on the admin listener with a bearer token and
// expects 202 Accepted.
func (p *Process) Post(t testing.TB, path, token string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, p.Admin+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := p.HTTP.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s on %s: %v %v", path, p.Name, resp, err)
	}
	resp.Body.Close()
}
