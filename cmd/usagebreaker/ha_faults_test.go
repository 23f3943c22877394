package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/store"
)

// cutProxy is a TCP proxy to Postgres that the test can cut: every
// connection through it is closed and new ones are refused until it is
// mended. It stands for a network partition between one replica and the
// database.
type cutProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.cut.Load() {
				c.Close()
				continue
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	return p
}

func (p *cutProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[u] = true, true
	p.mu.Unlock()
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
	c.Close()
}

func (p *cutProxy) setCut(cut bool) {
	p.cut.Store(cut)
	if !cut {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// throughProxy is dsn with its host and port replaced by addr.
func throughProxy(t *testing.T, dsn, addr string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Skipf("the proxy test needs a URL DSN (%s)", dsn)
	}
	u.Host = addr
	return u.String()
}

func pgAddr(t *testing.T, dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Skipf("the proxy test needs a URL DSN")
	}
	if u.Port() == "" {
		return u.Hostname() + ":5432"
	}
	return u.Host
}

// TestPostgresUnreachable: one replica loses the database. It answers
// /-/ready and callbacks with 503 and usagebreaker_state_backend_up is 0,
// while the other replica keeps serving; when the database is back, so is
// the replica.
func TestPostgresUnreachable(t *testing.T) {
	var proxy *cutProxy
	e := newHAEnv(t, 2, 4, 1, func(i int, dsn string) string {
		if i != 0 {
			return dsn
		}
		proxy = newCutProxy(t, pgAddr(t, dsn))
		return throughProxy(t, dsn, proxy.ln.Addr().String())
	})
	cut, ok := e.replicas[0], e.replicas[1]
	e.start(cut, true)
	e.start(ok, true)
	if v := e.metric(cut, "usagebreaker_state_backend_up"); v != 1 {
		t.Fatalf("backend up %v at start", v)
	}
	if v := e.metric(cut, `usagebreaker_replica_info{replica="replica-0"}`); v != 1 {
		t.Fatalf("usagebreaker_replica_info %v", v)
	}

	proxy.setCut(true)
	e.waitFor("replica-0 unready", 30*time.Second, func() bool { return cut.Status("/-/ready") == 503 })
	if v := e.metric(cut, "usagebreaker_state_backend_up"); v != 0 {
		t.Fatalf("backend up %v while cut off", v)
	}
	// A callback to the cut-off replica: 503, which Twilio retries.
	e.setOut(1, true)
	var sid string
	for _, a := range e.sim.State().Accounts {
		sid = a.SID
		break
	}
	f, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: sid, Category: "sms", Count: decimal.FromInt(1), Usage: decimal.FromInt(1)})
	if err != nil || len(f) == 0 {
		t.Fatalf("usage: %v %v", f, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.sim.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range e.sim.Deliveries() {
		if d.Status != http.StatusServiceUnavailable {
			t.Fatalf("a callback to the cut-off replica was answered %d, want 503", d.Status)
		}
	}
	// The other replica serves: ready, and records the next firing.
	if s := ok.Status("/-/ready"); s != 200 {
		t.Fatalf("replica-1 ready: %d", s)
	}
	e.setOut(0, true)
	e.setOut(1, false)
	before := len(e.sim.Deliveries())
	if _, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: sid, Category: "totalprice", Price: decimal.MustParse("25")}); err != nil {
		t.Fatal(err)
	}
	if err := e.sim.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	got200 := 0
	for _, d := range e.sim.Deliveries()[before:] {
		if d.Status == 200 {
			got200++
		}
	}
	if got200 == 0 {
		t.Fatal("replica-1 answered no callback 200 while replica-0 was cut off")
	}

	proxy.setCut(false)
	e.waitFor("replica-0 ready again", 30*time.Second, func() bool { return cut.Status("/-/ready") == 200 })
	if v := e.metric(cut, "usagebreaker_state_backend_up"); v != 1 {
		t.Fatalf("backend up %v after the cut", v)
	}
	e.stop(cut)
	e.stop(ok)
}

// TestPostgresRollingRestart: 3 replicas restarted one after another (taken
// out of the balancer, SIGTERM, started, ready, put back, as a Deployment's
// RollingUpdate does) under a steady stream of callbacks: every firing is
// answered 200 within Twilio's retries and recorded.
func TestPostgresRollingRestart(t *testing.T) {
	e := newHAEnv(t, 3, 20, 2, nil)
	e.startAll()
	var sids []string
	for _, a := range e.sim.State().Accounts {
		sids = append(sids, a.SID)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if i%len(sids) == 0 {
				e.sim.Advance(24 * time.Hour) // a new day: every daily trigger fires again
			}
			e.sim.AddUsage(twiliosim.UsageInput{AccountSID: sids[i%len(sids)], Category: "sms",
				Count: decimal.FromInt(1), Usage: decimal.FromInt(1)})
		}
	}()
	for i, r := range e.replicas {
		e.setOut(i, true)
		e.stop(r)
		e.start(r, true)
		e.setOut(i, false)
	}
	close(stop)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.sim.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	db := e.db()
	e.waitFor("no pending action", 60*time.Second, func() bool { return e.pendingActions(db) == 0 })
	got200 := map[string]bool{}
	tokens := map[string]bool{}
	failed := 0
	for _, d := range e.sim.Deliveries() {
		tokens[d.IdempotencyToken] = true
		if d.Status == 200 {
			got200[d.IdempotencyToken] = true
		} else {
			failed++
		}
	}
	var lost []string
	for tok := range tokens {
		if !got200[tok] {
			lost = append(lost, tok)
		}
	}
	recorded := 0
	db.QueryRow(`SELECT count(*) FROM firings`).Scan(&recorded)
	if len(lost) > 0 {
		t.Errorf("%d firings never answered 200: %s", len(lost), strings.Join(lost, ", "))
	}
	if recorded != len(got200) {
		t.Errorf("%d firings answered 200, %d recorded", len(got200), recorded)
	}
	t.Logf("rolling restart of %d replicas: %d firings, %d answered 200, %d attempts not answered 200 (retried), %d recorded",
		len(e.replicas), len(tokens), len(got200), failed, recorded)
	if len(tokens) == 0 {
		t.Fatal("no firing: the test proved nothing")
	}
	for _, r := range e.replicas {
		e.stop(r)
	}
}

// TestPostgresGuardAcrossReplicas: 12 subaccounts overspend at once, their
// callbacks spread over 3 replicas; the guard allows 4 suspensions: exactly
// 4 subaccounts are suspended whichever replicas ran them, the rest are held,
// and the notifier gets one guard page.
func TestPostgresGuardAcrossReplicas(t *testing.T) {
	const accounts, max = 12, 4
	e := newHAEnv(t, 3, accounts, 3, nil, "guard:\n  max_suspensions: 4\n  window: 1h\n")
	e.startAll()
	var wg sync.WaitGroup
	for _, a := range e.sim.State().Accounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.sim.AddUsage(twiliosim.UsageInput{AccountSID: a.SID, Category: "totalprice", Price: decimal.MustParse("25")})
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.sim.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	db := e.db()
	var held int
	e.waitFor("every trip suspended or held", 60*time.Second, func() bool {
		var running int
		db.QueryRow(`SELECT count(*) FILTER (WHERE state = 'held'), count(*) FILTER (WHERE state IN ('available', 'running'))
			FROM actions WHERE kind = 'trip'`).Scan(&held, &running)
		return running == 0
	})
	suspended := 0
	for _, a := range e.sim.State().Accounts {
		for _, h := range a.StatusHistory {
			if h.Status == "suspended" {
				suspended++
			}
		}
	}
	if suspended != max {
		t.Errorf("%d subaccounts suspended across the replicas, want the guard's %d", suspended, max)
	}
	if held == 0 {
		t.Error("nothing held")
	}
	var pages int
	e.waitFor("the guard's page", 30*time.Second, func() bool {
		db.QueryRow(`SELECT count(*) FROM actions WHERE kind LIKE 'guard:%' AND state = 'done'`).Scan(&pages)
		return pages >= 1
	})
	if pages != 1 {
		t.Errorf("%d guard pages, want 1", pages)
	}
	t.Logf("guard across 3 replicas: %d suspended, %d trip actions held, %d page", suspended, held, pages)
	for _, r := range e.replicas {
		e.stop(r)
	}
}

// usagebreaker migrate moves a SQLite state into the config's Postgres, and
// a replica started on it finds the incidents.
func TestPostgresMigrateCommand(t *testing.T) {
	e := newHAEnv(t, 1, 2, 4, nil)
	ctx := context.Background()
	path := filepath.Join(e.dir, "old.db")
	old, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.RecordFiring(ctx, store.Firing{Source: store.SourceCallback, IdempotencyToken: "old-token", Rule: "s-spend-daily",
		AccountSID: "AC00000000000000000000000000000099", Period: "daily:2026-11-24", Actions: []store.ActionKind{store.ActionTrip}}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	var out, errOut strings.Builder
	if code := dispatch([]string{"migrate", "--config", e.replicas[0].cfg, "--from-sqlite", path}, &out, &errOut); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "incidents: 1") || !strings.Contains(out.String(), "firings: 1") {
		t.Fatalf("migrate said:\n%s", out.String())
	}
	var tok string
	if err := e.db().QueryRow(`SELECT idempotency_token FROM firings`).Scan(&tok); err != nil || tok != "old-token" {
		t.Fatalf("the firing in Postgres: %q %v", tok, err)
	}
	// A second run refuses: the Postgres state is not empty.
	out.Reset()
	errOut.Reset()
	if code := dispatch([]string{"migrate", "--config", e.replicas[0].cfg, "--from-sqlite", path}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "already has 1 incidents") {
		t.Fatalf("second migrate: exit %d: %s", code, errOut.String())
	}
}
