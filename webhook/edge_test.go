package webhook

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// spy counts the requests that get past the edge.
type spy struct {
	mu   sync.Mutex
	n    int
	next http.Handler
}

func (s *spy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.n++
	s.mu.Unlock()
	s.next.ServeHTTP(w, r)
}

func (s *spy) count() int { s.mu.Lock(); defer s.mu.Unlock(); return s.n }

type edgeFixture struct {
	fb    *fakeBreaker
	spy   *spy
	m     *breaker.Metrics
	clock *fakeClock
	lim   *RejectLimiter
	logs  *bytes.Buffer
	edge  *Edge
	pol   AuthPolicy
}

var creds = Credential{Username: "twilio", Password: config.Secret("callback-password-0123")}

func newEdgeFixture(pol AuthPolicy, lim RejectLimit) *edgeFixture {
	f := &edgeFixture{fb: newFake(), m: breaker.NewMetrics(nil), clock: &fakeClock{t: time.Unix(1_800_000_000, 0)},
		logs: &bytes.Buffer{}, pol: pol}
	log := slog.New(slog.NewJSONHandler(f.logs, nil))
	f.spy = &spy{next: New(f.fb, f.m, log)}
	f.lim = NewRejectLimiter(lim, f.clock.now)
	f.edge = NewEdge(f.spy, EdgeOptions{Auth: func() AuthPolicy { return f.pol }, Limiter: f.lim, Metrics: f.m, Logger: log})
	return f
}

// send sends r from the client at addr, with Basic credentials when user != "".
func (f *edgeFixture) send(r req, addr, user, pass string) *httptest.ResponseRecorder {
	hr := httptest.NewRequest(r.method, "http://10.0.0.1:8080"+r.path, strings.NewReader(r.body))
	hr.RemoteAddr = addr
	if r.ctype != "" {
		hr.Header.Set("Content-Type", r.ctype)
	}
	if r.sig != "" {
		hr.Header.Set("X-Twilio-Signature", r.sig)
	}
	if user != "" {
		hr.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	f.edge.ServeHTTP(w, hr)
	return w
}

func (f *edgeFixture) outcome(o string) float64 {
	return testutil.ToFloat64(f.m.Callbacks.WithLabelValues(o))
}

func TestEdgeUnknownPathsRevealNothing(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{Required: true, Accept: []Credential{creds}}, RejectLimit{Burst: 1000, Every: time.Second})
	for _, p := range []string{"/", "/metrics", "/-/healthy", "/config", "/api/v1/incidents", "/twilio/usage-triggers",
		"/twilio/usage-trigger/spend", "/TWILIO/usage-triggers/spend", "/favicon.ico", "/.env"} {
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodHead, http.MethodOptions} {
			w := f.send(req{method: m, path: p}, "192.0.2.1:5000", creds.Username, creds.Password.Reveal())
			if w.Code != 404 {
				t.Errorf("%s %s: %d", m, p, w.Code)
			}
			if m != http.MethodHead && w.Body.String() != "not found\n" {
				t.Errorf("%s %s: body %q", m, p, w.Body.String())
			}
			for _, h := range []string{"Location", "WWW-Authenticate", "Allow", "Server"} {
				if w.Header().Get(h) != "" {
					t.Errorf("%s %s: header %s: %s", m, p, h, w.Header().Get(h))
				}
			}
		}
	}
	if f.spy.count() != 0 || f.logs.Len() != 0 {
		t.Errorf("unknown paths reached the handler (%d) or the log:\n%s", f.spy.count(), f.logs)
	}
}

func TestEdgeBasicAuth(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{Required: true, Accept: []Credential{creds}}, DefaultRejectLimit)
	good := firing(acctA)
	r := signed("tokenA", path, good) // Twilio signs the URL without the credentials
	pw := creds.Password.Reveal()

	for name, c := range map[string][2]string{
		"missing":        {"", ""},
		"wrong password": {"twilio", pw + "x"},
		"wrong user":     {"twilio2", pw},
		"empty password": {"twilio", ""},
		"swapped":        {pw, "twilio"},
	} {
		w := f.send(r, "192.0.2.1:5000", c[0], c[1])
		if w.Code != 401 || w.Header().Get("WWW-Authenticate") != `Basic realm="usagebreaker", charset="UTF-8"` {
			t.Errorf("%s: %d %q", name, w.Code, w.Header().Get("WWW-Authenticate"))
		}
	}
	if f.spy.count() != 0 || len(f.fb.accepted) != 0 {
		t.Fatalf("an unauthorized request reached the handler")
	}
	if v := f.outcome(OutcomeUnauthorized); v != 5 {
		t.Errorf("unauthorized = %v", v)
	}
	if strings.Contains(f.logs.String(), pw) {
		t.Errorf("the password is in the log:\n%s", f.logs)
	}

	if w := f.send(r, "192.0.2.1:5000", "twilio", pw); w.Code != 200 {
		t.Fatalf("right credentials: %d %s", w.Code, w.Body)
	}
	if len(f.fb.accepted) != 1 || f.outcome(breaker.OutcomeAccepted) != 1 {
		t.Fatalf("accepted %d", len(f.fb.accepted))
	}

	// Right credentials and a signature over the URL with them in it (if
	// Twilio signed the URL as registered) are accepted too.
	other := firing(acctB)
	withCreds := strings.Replace(public+path, "https://", "https://twilio:"+pw+"@", 1)
	r2 := req{http.MethodPost, path, "application/x-www-form-urlencoded", sign("tokenB", withCreds, other), other.Encode()}
	if w := f.send(r2, "192.0.2.1:5000", "twilio", pw); w.Code != 200 {
		t.Fatalf("signature over the URL with credentials: %d %s", w.Code, w.Body)
	}
	// ...but only with the credentials the request really carried.
	r3 := req{http.MethodPost, path, "application/x-www-form-urlencoded", sign("tokenB", strings.Replace(withCreds, pw, "guess", 1), other), other.Encode()}
	if w := f.send(r3, "192.0.2.1:5000", "twilio", pw); w.Code != 403 {
		t.Fatalf("signature over other credentials: %d", w.Code)
	}

	// After a password change, the earlier credentials still pass while
	// they may be registered somewhere; then only the new ones do.
	next := Credential{Username: "twilio", Password: config.Secret("new-password-456789")}
	f.pol = AuthPolicy{Required: true, Accept: []Credential{next, creds}}
	if w := f.send(signed("tokenA", path, good), "192.0.2.1:5000", "twilio", pw); w.Code != 200 {
		t.Fatalf("previous credentials in their grace period: %d", w.Code)
	}
	if !strings.Contains(f.logs.String(), "earlier basic_auth credentials") {
		t.Error("use of the earlier credentials not logged")
	}
	f.pol = AuthPolicy{Required: true, Accept: []Credential{next}}
	if w := f.send(signed("tokenA", path, good), "192.0.2.1:5000", "twilio", pw); w.Code != 401 {
		t.Fatalf("previous credentials after the grace period: %d", w.Code)
	}
	if w := f.send(signed("tokenA", path, good), "192.0.2.1:5000", "twilio", next.Password.Reveal()); w.Code != 200 {
		t.Fatalf("new credentials: %d", w.Code)
	}
	// Basic auth being turned on: requests without credentials still pass.
	f.pol = AuthPolicy{Required: false, Accept: []Credential{next}}
	if w := f.send(signed("tokenA", path, good), "192.0.2.1:5000", "", ""); w.Code != 200 {
		t.Fatalf("no credentials while basic auth is being turned on: %d", w.Code)
	}
}

func TestAuthPolicyMatch(t *testing.T) {
	a := Credential{"u1", "password-aaaaaaaaaa"}
	b := Credential{"u2", "password-bbbbbbbbbb"}
	p := AuthPolicy{Required: true, Accept: []Credential{a, b}}
	for _, c := range []struct {
		user, pass string
		has        bool
		want       int
	}{
		{"u1", "password-aaaaaaaaaa", true, 0}, {"u2", "password-bbbbbbbbbb", true, 1},
		{"u1", "password-bbbbbbbbbb", true, -1}, {"u2", "password-aaaaaaaaaa", true, -1},
		{"", "", true, -1}, {"u1", "password-aaaaaaaaaa", false, -1}, {"u1", "password-aaaaaaaaa", true, -1},
	} {
		if got := p.match(c.user, c.pass, c.has); got != c.want {
			t.Errorf("match(%q, %q, %v) = %d, want %d", c.user, c.pass, c.has, got, c.want)
		}
	}
	same := AuthPolicy{Accept: []Credential{a, a}}
	if got := same.match("u1", "password-aaaaaaaaaa", true); got != 0 {
		t.Errorf("the first of two equal credentials: %d", got)
	}
}

// TestEdgeRateLimitsRejected: without basic auth, a client that keeps
// getting rejected gets 429 before its requests are read; other clients and
// accepted requests are not affected; it recovers at the configured rate.
func TestEdgeRateLimitsRejected(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{}, RejectLimit{Burst: 3, Every: time.Minute, MaxClients: 100})
	forged := signed("tokenB", path, firing(acctA))
	attacker, twilio := "198.51.100.9:4000", "203.0.113.5:443"

	// Accepted requests never count: 50 deliveries of a valid callback.
	valid := signed("tokenA", path, firing(acctA))
	for i := 0; i < 50; i++ {
		if w := f.send(valid, twilio, "", ""); w.Code != 200 {
			t.Fatalf("valid delivery %d: %d", i, w.Code)
		}
	}

	for i := 0; i < 3; i++ {
		if w := f.send(forged, attacker, "", ""); w.Code != 403 {
			t.Fatalf("forged %d: %d", i, w.Code)
		}
	}
	reached := f.spy.count()
	for i := 0; i < 100; i++ {
		w := f.send(forged, attacker, "", "")
		if w.Code != 429 || w.Header().Get("Retry-After") != "60" || w.Body.String() != "too many rejected requests\n" {
			t.Fatalf("throttled %d: %d %q %q", i, w.Code, w.Header().Get("Retry-After"), w.Body)
		}
	}
	if f.spy.count() != reached {
		t.Fatalf("throttled requests reached the handler")
	}
	if v := f.outcome(OutcomeRateLimited); v != 100 {
		t.Errorf("rate_limited = %v", v)
	}
	if n := strings.Count(f.logs.String(), "client throttled"); n != 1 {
		t.Errorf("the throttling was logged %d times:\n%s", n, f.logs)
	}
	// Unknown paths from the throttled client: counted apart, still 404.
	if w := f.send(req{method: "GET", path: "/"}, attacker, "", ""); w.Code != 404 {
		t.Errorf("unknown path: %d", w.Code)
	}
	// Others are not affected.
	if w := f.send(signed("tokenA", path, firing(acctB)), twilio, "", ""); w.Code != 403 {
		t.Errorf("another client: %d", w.Code)
	}
	if w := f.send(valid, "198.51.100.10:4000", "", ""); w.Code != 200 {
		t.Errorf("a neighbour's valid callback: %d", w.Code)
	}
	// One more rejection a minute.
	f.clock.advance(time.Minute)
	if w := f.send(forged, attacker, "", ""); w.Code != 403 {
		t.Errorf("after a minute: %d", w.Code)
	}
	if w := f.send(forged, attacker, "", ""); w.Code != 429 {
		t.Errorf("again: %d", w.Code)
	}
	f.clock.advance(30 * time.Second)
	if w := f.send(forged, attacker, "", ""); w.Code != 429 || w.Header().Get("Retry-After") != "30" {
		t.Errorf("half a minute later: %d %s", w.Code, w.Header().Get("Retry-After"))
	}
}

// TestEdgeRateLimitWithBasicAuth: a flood without the credentials is
// throttled, but never holds back a request with them from the same address
// (Twilio's egress and a proxy are shared), and requests with them are never
// throttled.
func TestEdgeRateLimitWithBasicAuth(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{Required: true, Accept: []Credential{creds}}, RejectLimit{Burst: 2, Every: time.Hour, MaxClients: 100})
	shared := "203.0.113.5:443"
	pw := creds.Password.Reveal()
	valid := signed("tokenA", path, firing(acctA))
	for i := 0; i < 20; i++ {
		want := 401
		if i >= 2 {
			want = 429
		}
		if w := f.send(valid, shared, "twilio", "guess"); w.Code != want {
			t.Fatalf("unauthenticated %d: %d, want %d", i, w.Code, want)
		}
	}
	if v := f.outcome(OutcomeUnauthorized); v != 2 {
		t.Errorf("unauthorized = %v", v)
	}
	if w := f.send(valid, shared, "twilio", pw); w.Code != 200 {
		t.Fatalf("a real callback from the same address: %d", w.Code)
	}
	forged := signed("tokenA", path, firing(acctB))
	for i := 0; i < 20; i++ {
		if w := f.send(forged, shared, "twilio", pw); w.Code != 403 {
			t.Fatalf("authenticated, bad signature %d: %d", i, w.Code)
		}
	}
	if w := f.send(signed("tokenB", path, firing(acctB)), shared, "twilio", pw); w.Code != 200 {
		t.Fatalf("valid callback after rejected authenticated ones: %d", w.Code)
	}
}

func TestRejectLimiterBoundedMemory(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	l := NewRejectLimiter(RejectLimit{Burst: 1, Every: time.Hour, MaxClients: 3}, c.now)
	for i := 1; i <= 1000; i++ {
		l.reject(fmt.Sprintf("192.0.2.%d", i%250), bucketAuthenticated)
	}
	if l.Len() != 3 {
		t.Fatalf("%d clients remembered", l.Len())
	}
	// The most recently rejected are kept.
	for _, k := range []string{"192.0.2.0", "192.0.2.249", "192.0.2.248"} {
		if th, _, _ := l.throttled(k, bucketAuthenticated); !th {
			t.Errorf("%s forgotten", k)
		}
	}
	if th, _, _ := l.throttled("192.0.2.1", bucketAuthenticated); th {
		t.Error("an evicted client is still throttled")
	}
	if th, _, _ := l.throttled("192.0.2.0", bucketUnauthenticated); th {
		t.Error("buckets are not separate")
	}
}

func TestClientKey(t *testing.T) {
	trusted := &config.TrustedProxies{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
	for _, c := range []struct {
		remote, xff string
		trusted     *config.TrustedProxies
		want        string
	}{
		{"192.0.2.7:1234", "", nil, "192.0.2.7"},
		{"192.0.2.7:1234", "203.0.113.9", nil, "192.0.2.7"}, // an untrusted peer's header is ignored
		{"10.1.2.3:1234", "203.0.113.9", trusted, "203.0.113.9"},
		{"10.1.2.3:1234", "6.6.6.6, 203.0.113.9, 10.9.9.9", trusted, "203.0.113.9"}, // the client can prepend anything
		{"10.1.2.3:1234", "10.2.2.2, 10.9.9.9", trusted, "10.2.2.2"},
		{"10.1.2.3:1234", "", trusted, "10.1.2.3"},
		{"10.1.2.3:1234", "garbage, 10.9.9.9", trusted, "10.9.9.9"},
		{"10.1.2.3:1234", "203.0.113.9:5555", trusted, "203.0.113.9"},
		{"[2001:db8:1:2:3:4:5:6]:443", "", nil, "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:443", "", nil, "2001:db8:1:2::/64"},
		{"[::ffff:192.0.2.7]:443", "", nil, "192.0.2.7"},
		{"[fd00::1]:443", "2001:db8:9::1", trusted, "2001:db8:9::/64"},
		{"pipe", "", nil, "pipe"},
		{"[::1]:443", "", nil, "::1"},
	} {
		r := httptest.NewRequest("POST", "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := ClientKey(r, c.trusted); got != c.want {
			t.Errorf("ClientKey(%s, XFF %q) = %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}

// TestEdgeLoopbackNotLimited: a loopback peer is a local proxy everyone comes
// through; it is never throttled (trust it to limit by X-Forwarded-For).
func TestEdgeLoopbackNotLimited(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{}, RejectLimit{Burst: 1, Every: time.Hour, MaxClients: 10})
	forged := signed("tokenB", path, firing(acctA))
	for _, addr := range []string{"127.0.0.1:5000", "127.9.9.9:5000", "[::1]:5000"} {
		for i := 0; i < 10; i++ {
			if w := f.send(forged, addr, "", ""); w.Code != 403 {
				t.Fatalf("%s, request %d: %d", addr, i, w.Code)
			}
			if w := f.send(req{method: "GET", path: "/x"}, addr, "", ""); w.Code != 404 {
				t.Fatalf("%s, unknown path %d: %d", addr, i, w.Code)
			}
		}
	}
	if f.lim.Len() != 0 {
		t.Errorf("%d loopback clients remembered", f.lim.Len())
	}
	if w := f.send(signed("tokenA", path, firing(acctA)), "127.0.0.1:5000", "", ""); w.Code != 200 {
		t.Fatalf("valid callback through the local proxy: %d", w.Code)
	}
}

// A flood of unknown AccountSids past the lookup budget counts
// toward the per-client limit on rejected requests.
func TestEdgeRateLimitsUnknownAccountsPastTheLookupBudget(t *testing.T) {
	f := newEdgeFixture(AuthPolicy{}, RejectLimit{Burst: 3, Every: time.Minute, MaxClients: 100})
	f.fb.lookupErr = breaker.ErrLookupLimited
	forged := signed("made-up", path, firing(acctA))
	attacker := "198.51.100.9:4000"
	for i := 0; i < 3; i++ {
		if w := f.send(forged, attacker, "", ""); w.Code != 403 {
			t.Fatalf("forged %d: %d", i, w.Code)
		}
	}
	if w := f.send(forged, attacker, "", ""); w.Code != 429 {
		t.Fatalf("after the burst: %d", w.Code)
	}
	if f.outcome(breaker.OutcomeUnknownAccount) != 3 || f.outcome(breaker.OutcomeError) != 0 {
		t.Errorf("unknown_account %v, error %v", f.outcome(breaker.OutcomeUnknownAccount), f.outcome(breaker.OutcomeError))
	}
}
