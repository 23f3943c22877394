package daemon

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/webhook"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func authCfg(user, pw string) *config.Config {
	c := &config.Config{}
	if user != "" {
		c.Server.BasicAuth = &config.BasicAuth{Username: user, Password: config.Secret(pw)}
	}
	return c
}

func accepted(p webhook.AuthPolicy) string {
	var out []string
	for _, c := range p.Accept {
		out = append(out, c.Username+":"+c.Password.Reveal())
	}
	s := strings.Join(out, ",")
	if !p.Required {
		s = "optional[" + s + "]"
	}
	return s
}

// TestCallbackAuthGrace: after a basic_auth change, the earlier credentials
// pass until a reconcile that started after the change finished cleanly, and
// the grace period after it has passed.
func TestCallbackAuthGrace(t *testing.T) {
	clock := &testClock{t: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}
	d := &Daemon{opts: Options{Now: clock.now}, log: slog.New(slog.DiscardHandler),
		edge: &edgeState{grace: 10 * time.Minute}}
	set := func(c *config.Config) {
		old := d.cfg.Load()
		d.cfg.Store(c)
		if old != nil {
			d.noteCallbackAuth(old, c)
		}
	}
	want := func(s string) {
		t.Helper()
		if got := accepted(d.callbackAuth()); got != s {
			t.Fatalf("accepted %s, want %s", got, s)
		}
	}
	set(authCfg("u", "A"))
	want("u:A")
	set(authCfg("u", "A")) // unchanged
	want("u:A")

	running := d.reconcileStarting() // started before the change: does not count
	set(authCfg("u", "B"))
	want("u:B,u:A")
	d.reconcileFinished(running, nil)
	want("u:B,u:A")
	n := d.reconcileStarting()
	d.reconcileFinished(n, errString("account X: update trigger: HTTP 500"))
	clock.add(time.Hour)
	want("u:B,u:A") // some trigger may still have A
	n = d.reconcileStarting()
	d.reconcileFinished(n, nil)
	clock.add(9 * time.Minute)
	want("u:B,u:A")
	clock.add(2 * time.Minute)
	want("u:B")

	// Two changes before the triggers caught up: all three pass.
	set(authCfg("u", "C"))
	set(authCfg("v", "D"))
	want("v:D,u:C,u:B")
	n = d.reconcileStarting()
	d.reconcileFinished(n, nil)
	clock.add(11 * time.Minute)
	want("v:D")

	// Turning it off: nothing is required any more, at once.
	set(authCfg("", ""))
	want("optional[v:D]")
	n = d.reconcileStarting()
	d.reconcileFinished(n, nil)
	clock.add(11 * time.Minute)
	want("optional[]")

	// Turning it on: requests without credentials still pass until the
	// triggers carry them.
	set(authCfg("w", "E"))
	want("optional[w:E]")
	n = d.reconcileStarting()
	d.reconcileFinished(n, nil)
	clock.add(11 * time.Minute)
	want("w:E")
}

type errString string

func (e errString) Error() string { return string(e) }

func TestReloadableEdge(t *testing.T) {
	on := &config.Config{Server: config.Server{TLS: &config.TLS{CertFile: "/a.crt", KeyFile: "/a.key"}}}
	moved := &config.Config{Server: config.Server{TLS: &config.TLS{CertFile: "/b.crt", KeyFile: "/b.key"}}}
	off := &config.Config{}
	if err := reloadableEdge(on, moved); err != nil {
		t.Errorf("new certificate paths: %v", err)
	}
	for _, c := range [][2]*config.Config{{on, off}, {off, on}} {
		if err := reloadableEdge(c[0], c[1]); err == nil || !strings.Contains(err.Error(), "server.tls cannot be turned on or off on reload") {
			t.Errorf("TLS on/off: %v", err)
		}
	}
}
