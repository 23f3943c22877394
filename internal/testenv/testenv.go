// Package testenv is the test setup several packages' tests share: the
// Twilio simulator served on loopback, the config a daemon runs on against
// it, an in-process Run loop, the real binary as a child process, and the
// small waits and readers around them.
//
// It imports no package of the daemon itself (breaker, store, daemon), so
// that their own tests can use it too.
package testenv

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Listen returns a listener on a free loopback port.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// FreeAddr returns a loopback address that was free a moment ago, for a
// process that binds it itself.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln := Listen(t)
	defer ln.Close()
	return ln.Addr().String()
}

// ListenOn listens on addr again, waiting up to 5 s while the sockets of a
// process that just let go of it linger.
func ListenOn(t testing.TB, addr string) net.Listener {
	t.Helper()
	for i := 0; ; i++ {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln
		}
		if i == 100 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Serve serves h on a new loopback listener until t ends, and returns its
// address (host:port).
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	ln := Listen(t)
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// Buffer is a bytes buffer safe for concurrent use: a logger's output.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WaitFor polls cond every 20 ms until it holds, and fails t with what
// (and detail's text, when set) after limit. Limits are generous: CI is a
// loaded 2-core machine.
func WaitFor(t testing.TB, what string, limit time.Duration, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			more := ""
			for _, d := range detail {
				more += "\n" + d()
			}
			t.Fatalf("timed out waiting for %s%s", what, more)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Metric returns a sample's value in a Prometheus text exposition (0 when
// absent). sample is the metric name with its labels, as exposed.
func Metric(exposition, sample string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	if g := re.FindStringSubmatch(exposition); g != nil {
		v, _ := strconv.ParseFloat(g[1], 64)
		return v
	}
	return 0
}

// Tail returns the last n lines of the file at path.
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WriteFiles writes files (relative path -> content) below dir, making
// their directories.
func WriteFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Do sends req with http.DefaultClient and returns the answer's status and
// body; t fails when no answer comes.
func Do(t testing.TB, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
