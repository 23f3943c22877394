package console

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const testToken = "s3cret-console-token"

// fakeBackend serves fixed data and records every action asked of it.
type fakeBackend struct {
	mu       sync.Mutex
	calls    []string
	coverage CoverageView
	incident IncidentDetail
}

func (f *fakeBackend) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeBackend) actions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeBackend) Overview(context.Context) (Overview, error) {
	return Overview{Instance: "prod", Version: "test", Ready: true, ConfigReloadOK: true,
		Replicas:       []Replica{{Name: "host-1", Role: "this process"}},
		LastReconcile:  &Run{Summary: "50 subaccounts, 46 active: 3 created"},
		PendingActions: 7, Twilio: TwilioCalls{Attempts: 100, Failed: 2, ByCode: []CodeCount{{"429", 2}}},
		Guard: GuardSummary{On: true, MaxSuspensions: 20, Window: time.Hour, HeldSuspensions: 1}}, nil
}

func (f *fakeBackend) Coverage(context.Context) (CoverageView, error) { return f.coverage, nil }

func (f *fakeBackend) Rules(context.Context) ([]Rule, error) {
	return []Rule{{Name: "spend-daily", Watches: "totalprice by price ≥ 50 daily", Action: "suspend", Trips: 3}}, nil
}

func (f *fakeBackend) Incidents(context.Context, IncidentFilter) ([]Incident, error) {
	return []Incident{f.incident.Incident}, nil
}

func (f *fakeBackend) Incident(_ context.Context, id int64) (IncidentDetail, error) {
	if id != f.incident.ID {
		return IncidentDetail{}, ErrNotFound
	}
	return f.incident, nil
}

func (f *fakeBackend) Guard(context.Context) (GuardState, error) {
	return GuardState{GuardSummary: GuardSummary{On: true, MaxSuspensions: 1, Window: time.Hour, HeldSuspensions: 1},
		Suspensions: []Held{{IncidentID: 9, AccountSID: "AC09", AccountName: "tenant-09", Rule: "spend-daily"}}}, nil
}

func (f *fakeBackend) Reconcile(_ context.Context, who string) error {
	f.record("reconcile by " + who)
	return nil
}

func (f *fakeBackend) Reactivate(_ context.Context, sid, reason, who string) (Reactivated, error) {
	f.record(fmt.Sprintf("reactivate %s %q by %s", sid, reason, who))
	return Reactivated{AccountSID: sid, AccountName: "tenant-01", IncidentID: f.incident.ID, Rearmed: 1}, nil
}

func (f *fakeBackend) ReleaseGuard(_ context.Context, who string) (int, error) {
	f.record("release by " + who)
	return 1, nil
}

func (f *fakeBackend) Approve(_ context.Context, id int64, who string) error {
	f.record(fmt.Sprintf("approve %d", id))
	return ErrUnsupported
}

func (f *fakeBackend) Veto(_ context.Context, id int64, reason, who string) error {
	f.record(fmt.Sprintf("veto %d", id))
	return ErrUnsupported
}

func newFake() *fakeBackend {
	t0 := time.Date(2026, 11, 24, 3, 12, 0, 0, time.UTC)
	return &fakeBackend{
		coverage: CoverageView{At: t0, Rules: []string{"spend-daily"}, Accounts: []AccountCoverage{
			{SID: "AC01", Name: "tenant-01", Status: "suspended", States: []string{StateSuspended}},
			{SID: "AC02", Name: "tenant-02", Status: "active", States: []string{StateGuarded}},
			{SID: "AC03", Name: "tenant-03", Status: "active", States: []string{StateMissing}, Error: "create trigger: 400"},
		}},
		incident: IncidentDetail{Incident: Incident{ID: 4, Rule: "spend-daily", AccountSID: "AC01", AccountName: "tenant-01",
			Period: "daily:2026-11-24", Source: "callback", Category: "totalprice", TriggerValue: "50", CurrentValue: "61.5",
			Action: "suspend", State: "done", Outcome: OutcomeSuspended, Firings: 1, CreatedAt: t0, UpdatedAt: t0},
			Actions: []Action{{Kind: "trip", State: "done", Outcome: "suspended", CreatedAt: t0, UpdatedAt: t0.Add(time.Second)},
				{Kind: "notify:ops-slack", State: "done", Outcome: "notified", Attempts: 2, Detail: "sent to ops-slack",
					CreatedAt: t0, UpdatedAt: t0.Add(3 * time.Second)}}},
	}
}

type client struct {
	t   *testing.T
	srv *httptest.Server
	c   *http.Client
}

func newConsole(t *testing.T, b Backend, token string) *client {
	t.Helper()
	h, err := New(Options{Backend: b, Token: func() string { return token }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	return &client{t: t, srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (c *client) do(method, path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, c.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on the page:\n%s", page)
	}
	return m[1]
}

func (c *client) signIn(token string) *http.Response {
	c.t.Helper()
	_, page := c.do("GET", "/ui/signin", nil)
	resp, _ := c.do("POST", "/ui/signin", url.Values{"csrf": {csrfOf(c.t, page)}, "token": {token}})
	return resp
}

func TestSignIn(t *testing.T) {
	c := newConsole(t, newFake(), testToken)

	resp := c.signIn("wrong")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d, want 401", resp.StatusCode)
	}
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after a wrong token the overview answered %d, want a redirect to sign in", resp.StatusCode)
	}

	resp = c.signIn(testToken)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("sign in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	var sc *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			sc = ck
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.MaxAge <= 0 || sc.Path != "/ui/" {
		t.Fatalf("session cookie: %+v", sc)
	}
	if sc.Secure {
		t.Error("the cookie is Secure over plain HTTP: the browser would never send it back")
	}
	resp, page := c.do("GET", "/ui/", nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "host-1") || !strings.Contains(page, "7") {
		t.Fatalf("overview: %d\n%s", resp.StatusCode, page)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") || strings.Contains(page, "<script") {
		t.Errorf("CSP %q; the page must carry no script", csp)
	}

	// Sign-in without the form's nonce is refused.
	c2 := newConsole(t, newFake(), testToken)
	resp, _ = c2.do("POST", "/ui/signin", url.Values{"token": {testToken}})
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-in without the form's CSRF nonce: %d, want 403", resp.StatusCode)
	}

	// Signing out ends the session.
	_, page = c.do("GET", "/ui/", nil)
	c.do("POST", "/ui/signout", url.Values{"csrf": {csrfOf(t, page)}})
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after signing out: %d", resp.StatusCode)
	}
}

func TestNoDataBeforeSignIn(t *testing.T) {
	f := newFake()
	c := newConsole(t, f, testToken)
	for _, p := range []string{"/ui/", "/ui/coverage", "/ui/rules", "/ui/incidents", "/ui/incidents/4", "/ui/guard", "/ui/nope"} {
		resp, body := c.do("GET", p, nil)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
			t.Errorf("GET %s: %d to %q, want 303 to /ui/signin", p, resp.StatusCode, resp.Header.Get("Location"))
		}
		for _, secret := range []string{"tenant-", "AC0", "spend-daily", "host-1"} {
			if strings.Contains(body, secret) {
				t.Errorf("GET %s before sign-in sent %q:\n%s", p, secret, body)
			}
		}
	}
	for _, p := range []string{"/ui/coverage/reconcile", "/ui/incidents/4/reactivate", "/ui/guard/release"} {
		resp, _ := c.do("POST", p, url.Values{"reason": {"x"}})
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST %s before sign-in: %d, want 403", p, resp.StatusCode)
		}
	}
	// A made-up session cookie is no session.
	u, _ := url.Parse(c.srv.URL + "/ui/")
	c.c.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: "forged", Path: "/ui/"}})
	if resp, _ := c.do("GET", "/ui/coverage", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("forged session: %d", resp.StatusCode)
	}
	if a := f.actions(); len(a) != 0 {
		t.Fatalf("actions done without a session: %q", a)
	}
}

func TestConsoleOffWithoutToken(t *testing.T) {
	c := newConsole(t, newFake(), "")
	for _, p := range []string{"/ui/", "/ui/signin"} {
		resp, body := c.do("GET", p, nil)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "admin.token") {
			t.Errorf("GET %s without an admin token: %d %q", p, resp.StatusCode, body)
		}
	}
	resp, _ := c.do("POST", "/ui/signin", url.Values{"token": {""}})
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("sign-in with an empty token while off: %d", resp.StatusCode)
	}
}

func TestRotatedTokenEndsSessions(t *testing.T) {
	var mu sync.Mutex
	token := testToken
	h, err := New(Options{Backend: newFake(), Token: func() string { mu.Lock(); defer mu.Unlock(); return token }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &client{t: t, srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	c.signIn(testToken)
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != 200 {
		t.Fatalf("signed in: %d", resp.StatusCode)
	}
	mu.Lock()
	token = "the-new-token"
	mu.Unlock()
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the token changed: %d, want the session ended", resp.StatusCode)
	}
}

func TestSessionExpires(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h, err := New(Options{Backend: newFake(), Token: func() string { return testToken }, SessionTTL: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &client{t: t, srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	c.signIn(testToken)
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != 200 {
		t.Fatalf("signed in: %d", resp.StatusCode)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("an hour later: %d, want the session expired", resp.StatusCode)
	}
}

func TestCSRFRefusalChangesNothing(t *testing.T) {
	f := newFake()
	c := newConsole(t, f, testToken)
	c.signIn(testToken)
	_, page := c.do("GET", "/ui/incidents/4", nil)
	csrf := csrfOf(t, page)
	if !strings.Contains(page, ">Reactivate</button>") {
		t.Fatalf("no Reactivate button on a suspended incident:\n%s", page)
	}
	if strings.Contains(page, ">Approve<") || strings.Contains(page, ">Veto<") {
		t.Error("Approve/Veto shown on an incident that does not await approval")
	}
	posts := map[string]url.Values{
		"/ui/coverage/reconcile":     {},
		"/ui/incidents/4/reactivate": {"reason": {"customer paid"}},
		"/ui/guard/release":          {},
		"/ui/signout":                {},
	}
	for p, form := range posts {
		for _, bad := range []string{"", "wrong", csrf + "x"} {
			f := url.Values{}
			for k, v := range form {
				f[k] = v
			}
			if bad != "" {
				f.Set("csrf", bad)
			}
			resp, body := c.do("POST", p, f)
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
				t.Errorf("POST %s with csrf %q: %d, want 403", p, bad, resp.StatusCode)
			}
		}
	}
	if a := f.actions(); len(a) != 0 {
		t.Fatalf("refused forms did something: %q", a)
	}
	// Still signed in (the refused sign-out did nothing either).
	if resp, _ := c.do("GET", "/ui/", nil); resp.StatusCode != 200 {
		t.Fatalf("after refused forms: %d", resp.StatusCode)
	}

	// With the token, each does its one thing, as the signed-in operator.
	for _, p := range []string{"/ui/coverage/reconcile", "/ui/incidents/4/reactivate", "/ui/guard/release"} {
		form := url.Values{"csrf": {csrf}}
		for k, v := range posts[p] {
			form[k] = v
		}
		if resp, _ := c.do("POST", p, form); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("POST %s: %d", p, resp.StatusCode)
		}
	}
	a := f.actions()
	if len(a) != 3 || !strings.HasPrefix(a[0], "reconcile by console from 127.0.0.1:") ||
		!strings.HasPrefix(a[1], `reactivate AC01 "customer paid" by console from 127.0.0.1:`) ||
		!strings.HasPrefix(a[2], "release by console from ") {
		t.Fatalf("actions: %q", a)
	}
	// The outcome is shown once, on the page the form went back to.
	_, page = c.do("GET", "/ui/guard", nil)
	if !strings.Contains(page, "Released 1 held suspension(s)") {
		t.Errorf("no release message:\n%s", page)
	}
	if _, page = c.do("GET", "/ui/guard", nil); strings.Contains(page, "Released 1") {
		t.Error("the message was shown twice")
	}
}

func TestReactivateNeedsAReason(t *testing.T) {
	f := newFake()
	c := newConsole(t, f, testToken)
	c.signIn(testToken)
	_, page := c.do("GET", "/ui/incidents/4", nil)
	resp, _ := c.do("POST", "/ui/incidents/4/reactivate", url.Values{"csrf": {csrfOf(t, page)}, "reason": {"   "}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("%d", resp.StatusCode)
	}
	if _, page = c.do("GET", "/ui/incidents/4", nil); !strings.Contains(page, "A reason is required") {
		t.Errorf("no message about the reason:\n%s", page)
	}
	if a := f.actions(); len(a) != 0 {
		t.Fatalf("reactivated without a reason: %q", a)
	}
}

func TestApproveAndVetoOnlyWhenAwaitingApproval(t *testing.T) {
	f := newFake()
	f.incident.Outcome = OutcomeAwaitingApproval
	c := newConsole(t, f, testToken)
	c.signIn(testToken)
	_, page := c.do("GET", "/ui/incidents/4", nil)
	for _, b := range []string{">Approve</button>", ">Veto</button>"} {
		if !strings.Contains(page, b) {
			t.Errorf("no %s button on an incident awaiting approval", b)
		}
	}
	if strings.Contains(page, ">Reactivate</button>") {
		t.Error("Reactivate offered on an incident that is not suspended")
	}
	resp, _ := c.do("POST", "/ui/incidents/4/approve", url.Values{"csrf": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	if a := f.actions(); len(a) != 1 || a[0] != "approve 4" {
		t.Fatalf("approve went to %q", a)
	}
	if _, page = c.do("GET", "/ui/incidents/4", nil); !strings.Contains(page, "not supported") {
		t.Errorf("the backend's answer is not shown:\n%s", page)
	}
}

func TestIncidentTimeline(t *testing.T) {
	f := newFake()
	f.incident.Reactivation = &Reactivation{At: f.incident.CreatedAt.Add(time.Hour), Via: "manual",
		Actor: "console from 127.0.0.1:5555", Reason: "customer paid", Rearmed: 1}
	c := newConsole(t, f, testToken)
	c.signIn(testToken)
	resp, page := c.do("GET", "/ui/incidents/4", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d", resp.StatusCode)
	}
	order := []string{"Firing: totalprice at 61.5", "Action trip done: suspended", "Action notify:ops-slack done: notified",
		"sent to ops-slack (after 2 attempts)", "Reactivated (manual)", "by console from 127.0.0.1:5555", "reason: customer paid"}
	last := -1
	for _, s := range order {
		i := strings.Index(page, s)
		if i < 0 || i < last {
			t.Fatalf("timeline lacks %q in order:\n%s", s, page)
		}
		last = i
	}
	if strings.Contains(page, ">Reactivate</button>") {
		t.Error("Reactivate offered again after a reactivation")
	}
	if resp, _ := c.do("GET", "/ui/incidents/99", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown incident: %d", resp.StatusCode)
	}
}

func TestCoveragePagingAtScale(t *testing.T) {
	f := newFake()
	rules := []string{"spend-daily", "spend-monthly", "sms-daily", "calls-daily", "intl-monthly"}
	f.coverage = CoverageView{At: time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC), Rules: rules}
	for i := range 10000 {
		a := AccountCoverage{SID: fmt.Sprintf("AC%032x", i), Name: fmt.Sprintf("tenant-%05d", i), Status: "active",
			States: []string{StateGuarded, StateGuarded, StateNotMatched, StateGuarded, StateGuarded}}
		switch {
		case i%1000 == 7:
			a.States[1] = StateMissing
			a.Error = "create trigger usagebreaker:prod:spend-monthly: 400 bad request"
		case i%1000 == 8:
			a.States[3] = StateDrifted
		case i%500 == 9:
			a.Status = "suspended"
			for j := range a.States {
				if a.States[j] != StateNotMatched {
					a.States[j] = StateSuspended
				}
			}
		case i%2000 == 11:
			a.States = []string{StateNotMatched, StateNotMatched, StateNotMatched, StateNotMatched, StateNotMatched}
		}
		f.coverage.Accounts = append(f.coverage.Accounts, a)
	}
	c := newConsole(t, f, testToken)
	c.signIn(testToken)

	for _, q := range []string{"", "?per=500", "?page=20", "?state=guarded&per=500"} {
		resp, page := c.do("GET", "/ui/coverage"+q, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("coverage%s: %d", q, resp.StatusCode)
		}
		if len(page) >= 1<<20 {
			t.Errorf("coverage%s is %d bytes, want under 1 MB", q, len(page))
		}
		t.Logf("coverage%s: %d bytes", q, len(page))
	}
	_, page := c.do("GET", "/ui/coverage", nil)
	// Unguarded first: the 10 broken ones, then the 5 no rule matches.
	rows := regexp.MustCompile(`<tr( class="unguarded")?><td><a href="/ui/incidents\?account=[^"]+">(tenant-\d+)</a>`).FindAllStringSubmatch(page, -1)
	if len(rows) != 100 {
		t.Fatalf("%d rows on the first page, want 100", len(rows))
	}
	for i, r := range rows[:25] {
		if r[1] == "" {
			t.Fatalf("row %d (%s) is not marked unguarded; the first 25 are", i, r[2])
		}
	}
	if rows[0][2] != "tenant-00007" || rows[25][1] != "" {
		t.Errorf("first row %s, row 26 unguarded=%q", rows[0][2], rows[25][1])
	}
	if !strings.Contains(page, "page 1 of 100") || !strings.Contains(page, `href="/ui/coverage?page=2"`) {
		t.Error("no pager to page 2 of 100")
	}
	// Filters: one subaccount by name, and per state within a rule.
	_, page = c.do("GET", "/ui/coverage?q=tenant-04008", nil)
	if n := strings.Count(page, "<tr><td>") + strings.Count(page, `<tr class="unguarded"><td>`); n != 1 || !strings.Contains(page, "drifted") {
		t.Errorf("q=tenant-04008: %d rows", n)
	}
	_, page = c.do("GET", "/ui/coverage?rule=spend-monthly&state=missing", nil)
	if !strings.Contains(page, "Showing 1–10 of 10 matching") {
		t.Errorf("rule=spend-monthly&state=missing: %s", regexp.MustCompile(`Showing[^<]*`).FindString(page))
	}
	_, page = c.do("GET", "/ui/coverage?state=unguarded", nil)
	if !strings.Contains(page, "of 25 matching") {
		t.Errorf("state=unguarded: %s", regexp.MustCompile(`Showing[^<]*`).FindString(page))
	}
	_, page = c.do("GET", "/ui/coverage?page=999", nil)
	if !strings.Contains(page, "page 100 of 100") {
		t.Error("a page past the end should show the last page")
	}
}

func TestSpan(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 90 * time.Minute: "1h30m", 5 * time.Minute: "5m",
		30 * time.Second: "30s", 744 * time.Hour: "744h", time.Hour + 30*time.Second: "1h0m30s"} {
		if got := span(d); got != want {
			t.Errorf("span(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestCookiesAreSecureOverTLS(t *testing.T) {
	h, err := New(Options{Backend: newFake(), Token: func() string { return testToken }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	c := srv.Client()
	c.Jar, _ = cookiejar.New(nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cl := &client{t: t, srv: srv, c: c}
	resp, page := cl.do("GET", "/ui/signin", nil)
	for _, ck := range resp.Cookies() {
		if !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
			t.Errorf("sign-in cookie over TLS: %+v", ck)
		}
	}
	resp, _ = cl.do("POST", "/ui/signin", url.Values{"csrf": {csrfOf(t, page)}, "token": {testToken}})
	found := false
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			found = true
			if !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
				t.Errorf("session cookie over TLS: %+v", ck)
			}
		}
	}
	if !found {
		t.Fatalf("no session cookie: %d", resp.StatusCode)
	}
}
