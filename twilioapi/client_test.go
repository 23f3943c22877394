package twilioapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

func TestParentSID(t *testing.T) {
	c := newTestClient(t, testOptions("http://127.0.0.1:1"))
	if got := c.ParentSID(); got != testParent {
		t.Fatalf("ParentSID = %q", got)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	good := testOptions("")
	cases := map[string]func(o *Options){
		"short sid":        func(o *Options) { o.AccountSID = "AC123" },
		"not AC":           func(o *Options) { o.AccountSID = "SK0123456789abcdef0123456789abcdef" },
		"non-hex sid":      func(o *Options) { o.AccountSID = "AC0123456789abcdef0123456789abcdeg" },
		"empty token":      func(o *Options) { o.AuthToken = "" },
		"token with dash":  func(o *Options) { o.AuthToken = "abc-def" + testToken },
		"relative base":    func(o *Options) { o.BaseURL = "api.twilio.com" },
		"ftp base":         func(o *Options) { o.BaseURL = "ftp://api.twilio.com" },
		"base with creds":  func(o *Options) { o.BaseURL = "https://u:" + testToken + "@api.twilio.com" },
		"base with query":  func(o *Options) { o.BaseURL = "https://api.twilio.com?x=1" },
		"negative attempt": func(o *Options) { o.MaxAttempts = -1 },
		"min > max":        func(o *Options) { o.MinBackoff, o.MaxBackoff = time.Second, time.Millisecond },
	}
	for name, mod := range cases {
		o := good
		o.Registerer = nil
		mod(&o)
		_, err := New(o)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("%s: error shows the token: %v", name, err)
		}
	}
	o := good
	o.Registerer = nil
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if c.maxAttempts != 5 || c.minBackoff != o.MinBackoff {
		t.Errorf("options not applied: %d %s", c.maxAttempts, c.minBackoff)
	}
	for _, s := range []string{fmt.Sprint(o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%+v", c), fmt.Sprint(c)} {
		if strings.Contains(s, testToken) {
			t.Errorf("formatting shows the token: %s", s)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := New(Options{AccountSID: testParent, AuthToken: testToken})
	if err != nil {
		t.Fatal(err)
	}
	at := c.attemptHTTP.Transport.(*attemptTransport)
	rw := at.next.(*rewriteTransport)
	if cap(at.sem) != 10 || at.timeout != 10*time.Second || c.maxAttempts != 5 ||
		c.minBackoff != 200*time.Millisecond || c.maxBackoff != 10*time.Second {
		t.Errorf("defaults: conc %d timeout %s attempts %d backoff %s..%s", cap(at.sem), at.timeout, c.maxAttempts, c.minBackoff, c.maxBackoff)
	}
	if rw.scheme != "https" || rw.host != "api.twilio.com" || rw.prefix != "" {
		t.Errorf("default base: %+v", rw)
	}
}

func TestListSubaccountsPaging(t *testing.T) {
	const n = 2500
	all := make([]map[string]any, 0, n+1)
	for i := range n + 1 {
		if i == 700 {
			all = append(all, accountJSON(testParent, "parent", "active"))
			continue
		}
		all = append(all, accountJSON(fmt.Sprintf("AC%032x", i+1), fmt.Sprintf("tenant-%d", i), "active"))
	}
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/2010-04-01/Accounts.json" {
			twilioError(w, 404, 20404, "not found")
			return
		}
		q := r.URL.Query()
		size, _ := strconv.Atoi(q.Get("PageSize"))
		if size != 1000 {
			t.Errorf("PageSize = %q", q.Get("PageSize"))
			size = 1000
		}
		page, _ := strconv.Atoi(q.Get("Page"))
		if page > 0 && q.Get("PageToken") != fmt.Sprintf("PA%d", page) {
			t.Errorf("page %d token %q", page, q.Get("PageToken"))
		}
		lo, hi := page*size, min((page+1)*size, len(all))
		env := map[string]any{
			"accounts": all[lo:hi], "page": page, "page_size": size, "start": lo, "end": hi - 1,
			"uri":           r.URL.RequestURI(),
			"next_page_uri": nil,
		}
		if hi < len(all) {
			env["next_page_uri"] = fmt.Sprintf("/2010-04-01/Accounts.json?PageSize=%d&Page=%d&PageToken=PA%d", size, page+1, page+1)
		}
		writeJSON(w, 200, env)
	})
	opts := testOptions(f.URL)
	c := newTestClient(t, opts)
	got, err := c.ListSubaccounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("got %d subaccounts, want %d", len(got), n)
	}
	seen := map[string]bool{}
	for _, a := range got {
		if a.SID == testParent {
			t.Fatal("the parent is listed")
		}
		if seen[a.SID] {
			t.Fatalf("duplicate %s", a.SID)
		}
		seen[a.SID] = true
		if a.OwnerSID != testParent || a.Status != StatusActive || a.AuthToken == "" {
			t.Fatalf("bad account %+v", a)
		}
	}
	if f.total() != 3 {
		t.Errorf("requests = %d, want 3 pages", f.total())
	}
	if v := metricValue(t, registry(opts), "usagebreaker_twilio_requests_total", map[string]string{"operation": "accounts.list", "code": "200"}); v != 3 {
		t.Errorf("accounts.list 200 = %v", v)
	}
}

func TestAuthFailureIsPermanent(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) { t.Error("authorized?") })
	opts := testOptions(f.URL)
	opts.AuthToken = "wrongToken0123456789"
	c := newTestClient(t, opts)
	_, err := c.FetchAccount(context.Background(), testSub)
	e := asError(t, err)
	if e.Status != 401 || e.Code != CodeAuthenticate || e.Operation != OpAccountsFetch || e.Message != "Authenticate" {
		t.Errorf("error = %+v", e)
	}
	if !IsPermanent(err) || IsRetryable(err) || IsNotFound(err) {
		t.Errorf("classification: permanent %v retryable %v", IsPermanent(err), IsRetryable(err))
	}
	if f.total() != 1 {
		t.Errorf("requests = %d, want 1 (no retry)", f.total())
	}
	if strings.Contains(err.Error(), opts.AuthToken) {
		t.Errorf("token in error: %v", err)
	}
}

type trigStore struct {
	mu       sync.Mutex
	n        int
	triggers []map[string]any
}

func (s *trigStore) add(acct string, form url.Values, created time.Time) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	val := form.Get("TriggerValue")
	if strings.HasPrefix(val, "+") {
		d := decimal.MustParse("1000").Add(decimal.MustParse(val[1:]))
		val = d.StringFixed(6)
	} else {
		val = decimal.MustParse(val).StringFixed(6)
	}
	var rec any
	if r := form.Get("Recurring"); r != "" {
		rec = r
	}
	tr := map[string]any{
		"sid": fmt.Sprintf("UT%032x", s.n), "account_sid": acct,
		"friendly_name": form.Get("FriendlyName"), "callback_url": form.Get("CallbackUrl"),
		"callback_method": orDefault(form.Get("CallbackMethod"), "POST"),
		"usage_category":  form.Get("UsageCategory"), "trigger_by": orDefault(form.Get("TriggerBy"), "usage"),
		"recurring": rec, "trigger_value": val, "current_value": "1000.000000",
		"date_created": created.UTC().Format(time.RFC1123Z), "date_fired": nil,
	}
	s.triggers = append(s.triggers, tr)
	return tr
}

func (s *trigStore) list() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.triggers...)
}

func triggersPath(acct string) string { return "/2010-04-01/Accounts/" + acct + "/Usage/Triggers.json" }

// serveTriggerList serves the store as one page.
func serveTriggerList(w http.ResponseWriter, s *trigStore) {
	writeJSON(w, 200, map[string]any{"usage_triggers": s.list(), "next_page_uri": nil, "page": 0, "page_size": 1000})
}

var testSpec = TriggerSpec{
	FriendlyName:   "usagebreaker:main:sms-spend-daily",
	CallbackURL:    "https://breaker.example.com/twilio/usage-triggers/sms-spend-daily",
	CallbackMethod: "POST",
	UsageCategory:  "totalprice",
	TriggerBy:      "price",
	Recurring:      "daily",
	TriggerValue:   "50",
}

func TestCreateTriggerOffsetOnTheWire(t *testing.T) {
	store := &trigStore{}
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), "TriggerValue=%2B50") {
			t.Errorf("body %q lacks TriggerValue=%%2B50", body)
		}
		form, _ := url.ParseQuery(string(body))
		writeJSON(w, 201, store.add(testSub, form, time.Now()))
	})
	c := newTestClient(t, testOptions(f.URL))
	spec := testSpec
	spec.TriggerValue = "+50"
	tr, err := c.CreateTrigger(context.Background(), testSub, spec)
	if err != nil {
		t.Fatal(err)
	}
	if f.count("POST "+triggersPath(testSub)) != 1 {
		t.Errorf("requests: %v", f.requests)
	}
	if !tr.TriggerValue.Equal(decimal.MustParse("1050")) || tr.Recurring != "daily" || tr.AccountSID != testSub ||
		tr.FriendlyName != spec.FriendlyName || tr.TriggerBy != "price" || !strings.HasPrefix(tr.SID, "UT") {
		t.Errorf("trigger = %+v", tr)
	}
	if !spec.Matches(tr) {
		t.Error("created trigger does not match its offset spec")
	}
}

func TestRetry429ThenSuccess(t *testing.T) {
	var n atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			twilioError(w, 429, CodeTooManyRequests, "Too Many Requests")
			return
		}
		writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
	})
	opts := testOptions(f.URL)
	c := newTestClient(t, opts)
	a, err := c.FetchAccount(context.Background(), testSub)
	if err != nil {
		t.Fatal(err)
	}
	if a.SID != testSub || a.FriendlyName != "tenant" {
		t.Errorf("account = %+v", a)
	}
	if got := f.count("GET /2010-04-01/Accounts/" + testSub + ".json"); got != 3 {
		t.Errorf("requests = %d, want 3", got)
	}
	reg := registry(opts)
	for code, want := range map[string]float64{"429": 2, "200": 1} {
		if v := metricValue(t, reg, "usagebreaker_twilio_requests_total", map[string]string{"operation": "accounts.fetch", "code": code}); v != want {
			t.Errorf("requests_total{accounts.fetch,%s} = %v, want %v", code, v, want)
		}
	}
	if v := metricValue(t, reg, "usagebreaker_twilio_request_duration_seconds", map[string]string{"operation": "accounts.fetch"}); v != 3 {
		t.Errorf("duration samples = %v, want 3", v)
	}
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	p := &retryPolicy{now: func() time.Time { return now }, jitter: func(n int64) int64 { return n - 1 }}
	resp := func(status int, ra string) *http.Response {
		h := http.Header{}
		if ra != "" {
			h.Set("Retry-After", ra)
		}
		return &http.Response{StatusCode: status, Header: h}
	}
	minW, maxW := 200*time.Millisecond, 10*time.Second
	cases := []struct {
		name    string
		attempt int
		resp    *http.Response
		want    time.Duration
	}{
		{"seconds", 0, resp(429, "3"), 3 * time.Second},
		{"zero", 3, resp(429, "0"), 0},
		{"capped", 0, resp(503, "120"), maxW},
		{"http date", 0, resp(429, now.Add(4*time.Second).Format(http.TimeFormat)), 4 * time.Second},
		{"past date", 0, resp(429, now.Add(-time.Minute).Format(http.TimeFormat)), 0},
		{"garbage falls back", 0, resp(429, "soon"), minW},
		{"exp attempt 0", 0, resp(500, ""), minW},
		{"exp attempt 2", 2, resp(500, ""), 4 * minW},
		{"exp capped", 30, nil, maxW},
		{"transport error", 1, nil, 2 * minW},
	}
	for _, c := range cases {
		if got := p.backoff(minW, maxW, c.attempt, c.resp); got != c.want {
			t.Errorf("%s: wait %s, want %s", c.name, got, c.want)
		}
	}
	// Equal jitter: with the smallest random draw the wait is half the step.
	p.jitter = func(int64) int64 { return 0 }
	if got := p.backoff(minW, maxW, 2, nil); got != 2*minW {
		t.Errorf("low jitter: %s", got)
	}
	// The real jitter stays within [step/2, step].
	p = newRetryPolicy()
	for range 100 {
		if got := p.backoff(minW, maxW, 1, nil); got < minW || got > 2*minW {
			t.Fatalf("jittered wait %s out of range", got)
		}
	}
}

func TestRetryAfterUsedByClient(t *testing.T) {
	var n atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "0")
			twilioError(w, 429, CodeTooManyRequests, "Too Many Requests")
		case 2:
			w.Header().Set("Retry-After", "120")
			twilioError(w, 503, 20503, "Service Unavailable")
		default:
			writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
		}
	})
	opts := testOptions(f.URL)
	opts.MinBackoff, opts.MaxBackoff = time.Millisecond, 3*time.Millisecond
	var logs testenv.Buffer
	opts.Logger = debugLogger(&logs)
	c := newTestClient(t, opts)
	if _, err := c.FetchAccount(context.Background(), testSub); err != nil {
		t.Fatal(err)
	}
	retries := lines(logs.String(), "retrying Twilio request")
	if len(retries) != 2 {
		t.Fatalf("retry log lines:\n%s", logs.String())
	}
	// Retry-After: 0 means no wait (not the 0.5-1ms jittered backoff);
	// Retry-After: 120 is capped by MaxBackoff (3ms, more than the jittered 2ms).
	for i, want := range []string{"attempt=1 status=429 wait=0s", "attempt=2 status=503 wait=3ms"} {
		if !strings.Contains(retries[i], "operation=accounts.fetch "+want) {
			t.Errorf("retry %d logged %q, want %q", i+1, retries[i], want)
		}
	}
}

func TestEndless500GivesUpAfterMaxAttempts(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		twilioError(w, 500, 20500, "Internal Server Error")
	})
	opts := testOptions(f.URL)
	opts.MaxAttempts = 4
	c := newTestClient(t, opts)
	_, err := c.UpdateTrigger(context.Background(), testSub, "UT0123456789abcdef0123456789abcdef", TriggerUpdate{FriendlyName: "x"})
	e := asError(t, err)
	if e.Status != 500 || e.Code != 20500 || e.Operation != OpTriggersUpdate || !IsRetryable(err) || IsPermanent(err) {
		t.Errorf("error = %+v", e)
	}
	if got := f.total(); got != 4 {
		t.Errorf("attempts = %d, want MaxAttempts = 4", got)
	}
}

func TestNonJSON502(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(502)
		io.WriteString(w, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>")
	})
	opts := testOptions(f.URL)
	opts.MaxAttempts = 2
	c := newTestClient(t, opts)
	_, err := c.ListSubaccounts(context.Background())
	e := asError(t, err)
	if e.Status != 502 || e.Code != 0 || e.Message != "502 Bad Gateway" || !IsRetryable(err) {
		t.Errorf("error = %+v (%v)", e, err)
	}
	if f.total() != 2 {
		t.Errorf("attempts = %d, want 2", f.total())
	}
}

func TestXMLErrorBody(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(404)
		io.WriteString(w, `<?xml version='1.0' encoding='UTF-8'?><TwilioResponse><RestException><Code>20404</Code><Message>The requested resource was not found</Message><MoreInfo>https://www.twilio.com/docs/errors/20404</MoreInfo><Status>404</Status></RestException></TwilioResponse>`)
	})
	c := newTestClient(t, testOptions(f.URL))
	_, err := c.FetchAccount(context.Background(), testSub)
	e := asError(t, err)
	if e.Status != 404 || e.Code != CodeNotFound || e.Message != "The requested resource was not found" ||
		e.MoreInfo != "https://www.twilio.com/docs/errors/20404" || !IsNotFound(err) || !IsPermanent(err) {
		t.Errorf("error = %+v", e)
	}
}

func TestParseErrorBody(t *testing.T) {
	cases := []struct {
		body     string
		code     int
		msg      string
		moreInfo string
	}{
		{`{"code":"20003","message":"Authenticate"}`, 20003, "Authenticate", ""},
		{`{"code": 20429, "message": "Too many"`, 20429, `{"code": 20429, "message": "Too many"`, ""},
		{"upstream connect error", 0, "upstream connect error", ""},
		{"<html><body><h1>Service\n Unavailable</h1><script>x()</script></body></html>", 0, "Service Unavailable", ""},
	}
	for _, c := range cases {
		code, msg, more := parseErrorBody([]byte(c.body))
		if code != c.code || msg != c.msg || more != c.moreInfo {
			t.Errorf("%q: %d %q %q", c.body, code, msg, more)
		}
	}
}

func TestContextCancelStopsRetries(t *testing.T) {
	first := make(chan struct{})
	var once sync.Once
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(first) })
		twilioError(w, 503, 20503, "Service Unavailable")
	})
	opts := testOptions(f.URL)
	opts.MinBackoff, opts.MaxBackoff = time.Hour, time.Hour // a wait that would never end
	c := newTestClient(t, opts)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-first
		cancel()
	}()
	_, err := c.ListTriggers(ctx, testSub)
	e := asError(t, err)
	if !errors.Is(err, context.Canceled) || e.Status != 0 || e.Operation != OpTriggersList {
		t.Errorf("error = %+v (%v)", e, err)
	}
	if f.total() != 1 {
		t.Errorf("attempts = %d, want 1", f.total())
	}
}

func TestContextCancelWhileWaitingForSlot(t *testing.T) {
	inHandler := make(chan struct{})
	unblock := make(chan struct{})
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		<-unblock
		writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
	})
	opts := testOptions(f.URL)
	opts.MaxConcurrency = 1
	c := newTestClient(t, opts)
	done := make(chan error, 1)
	go func() {
		_, err := c.FetchAccount(context.Background(), testSub)
		done <- err
	}()
	<-inHandler // the only slot is taken
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.FetchAccount(ctx, testSub2)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	close(unblock)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f.total() != 1 {
		t.Errorf("requests = %d, want 1", f.total())
	}
}

func TestConcurrencyCap(t *testing.T) {
	const limit, calls = 8, 200
	var inFlight, maxSeen atomic.Int32
	reached := make(chan struct{})
	gate := make(chan struct{})
	var once sync.Once
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			m := maxSeen.Load()
			if n <= m || maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		if n >= limit {
			once.Do(func() { close(reached) })
		}
		<-gate
		inFlight.Add(-1)
		writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
	})
	opts := testOptions(f.URL)
	opts.MaxConcurrency = limit
	opts.Timeout = time.Minute
	c := newTestClient(t, opts)
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			if _, err := c.FetchAccount(context.Background(), testSub); err != nil {
				errs <- err
			}
		})
	}
	select {
	case <-reached:
	case <-time.After(time.Minute):
		t.Fatal("the cap was never reached")
	}
	// Hold the first requests a moment: with a broken limit more would pile
	// in now. (Only the sensitivity of the check depends on this pause.)
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxSeen.Load(); m != limit {
		t.Errorf("max in flight = %d, want exactly the cap %d", m, limit)
	}
	if f.total() != calls {
		t.Errorf("requests = %d", f.total())
	}
}

func TestCreateTriggerAdoptsAfterAmbiguousFailure(t *testing.T) {
	for _, failure := range []string{"500", "dropped connection"} {
		t.Run(failure, func(t *testing.T) {
			store := &trigStore{}
			var posts atomic.Int32
			f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
				switch r.Method {
				case http.MethodPost:
					r.ParseForm()
					store.add(testSub, r.PostForm, time.Now())
					if posts.Add(1) == 1 { // created, but the answer is lost
						if failure == "500" {
							twilioError(w, 500, 20500, "Internal Server Error")
						} else {
							dropConnection(t, w)
						}
						return
					}
					t.Error("created twice")
					writeJSON(w, 201, store.list()[len(store.list())-1])
				case http.MethodGet:
					serveTriggerList(w, store)
				}
			})
			c := newTestClient(t, testOptions(f.URL))
			tr, err := c.CreateTrigger(context.Background(), testSub, testSpec)
			if err != nil {
				t.Fatal(err)
			}
			ts := store.list()
			if len(ts) != 1 {
				t.Fatalf("%d triggers at Twilio, want 1", len(ts))
			}
			if tr.SID != ts[0]["sid"] || !testSpec.Matches(tr) {
				t.Errorf("adopted %+v, stored %v", tr, ts[0])
			}
			if f.count("POST "+triggersPath(testSub)) != 1 || f.count("GET "+triggersPath(testSub)) != 1 {
				t.Errorf("requests: %v", f.requests)
			}
		})
	}
}

func TestCreateTriggerCreatesOnceWhen500DidNotCreate(t *testing.T) {
	store := &trigStore{}
	var posts atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			if posts.Add(1) == 1 {
				twilioError(w, 500, 20500, "Internal Server Error") // nothing created
				return
			}
			r.ParseForm()
			writeJSON(w, 201, store.add(testSub, r.PostForm, time.Now()))
		case http.MethodGet:
			serveTriggerList(w, store)
		}
	})
	c := newTestClient(t, testOptions(f.URL))
	tr, err := c.CreateTrigger(context.Background(), testSub, testSpec)
	if err != nil {
		t.Fatal(err)
	}
	ts := store.list()
	if len(ts) != 1 || tr.SID != ts[0]["sid"] {
		t.Fatalf("triggers %v, result %+v", ts, tr)
	}
	if f.count("POST "+triggersPath(testSub)) != 2 || f.count("GET "+triggersPath(testSub)) != 1 {
		t.Errorf("requests: %v", f.requests)
	}
}

func TestCreateTriggerOffsetAdoptsOnlyTheNewTrigger(t *testing.T) {
	spec := testSpec
	spec.TriggerValue = "+50"
	store := &trigStore{}
	old := url.Values{"FriendlyName": {spec.FriendlyName}, "CallbackUrl": {spec.CallbackURL}, "UsageCategory": {spec.UsageCategory},
		"TriggerBy": {spec.TriggerBy}, "Recurring": {spec.Recurring}, "TriggerValue": {"+10"}}
	store.add(testSub, old, time.Now().Add(-time.Hour)) // an older trigger with the same fields
	var posts atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			r.ParseForm()
			store.add(testSub, r.PostForm, time.Now())
			if posts.Add(1) == 1 {
				twilioError(w, 502, 0, "Bad Gateway")
				return
			}
			t.Error("created twice")
		case http.MethodGet:
			serveTriggerList(w, store)
		}
	})
	c := newTestClient(t, testOptions(f.URL))
	tr, err := c.CreateTrigger(context.Background(), testSub, spec)
	if err != nil {
		t.Fatal(err)
	}
	ts := store.list()
	if len(ts) != 2 || tr.SID != ts[1]["sid"] || !tr.TriggerValue.Equal(decimal.MustParse("1050")) {
		t.Errorf("adopted %+v; store %v", tr, ts)
	}
}

func TestCreateTriggerGivesUpWhenBudgetIsSpent(t *testing.T) {
	store := &trigStore{}
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			serveTriggerList(w, store)
			return
		}
		twilioError(w, 500, 20500, "Internal Server Error")
	})
	opts := testOptions(f.URL)
	opts.MaxAttempts = 3
	c := newTestClient(t, opts)
	_, err := c.CreateTrigger(context.Background(), testSub, testSpec)
	if e := asError(t, err); e.Status != 500 || e.Operation != OpTriggersCreate || !IsRetryable(err) {
		t.Errorf("error = %+v", e)
	}
	if f.count("POST "+triggersPath(testSub)) != 3 || f.count("GET "+triggersPath(testSub)) != 3 {
		t.Errorf("requests: %v", f.requests)
	}
}

func TestCreateTrigger429IsRetried(t *testing.T) {
	store := &trigStore{}
	var posts atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			t.Errorf("unexpected %s", r.Method)
			return
		}
		if posts.Add(1) == 1 {
			twilioError(w, 429, CodeTooManyRequests, "Too Many Requests")
			return
		}
		r.ParseForm()
		writeJSON(w, 201, store.add(testSub, r.PostForm, time.Now()))
	})
	c := newTestClient(t, testOptions(f.URL))
	if _, err := c.CreateTrigger(context.Background(), testSub, testSpec); err != nil {
		t.Fatal(err)
	}
	if posts.Load() != 2 || len(store.list()) != 1 {
		t.Errorf("posts %d, triggers %d", posts.Load(), len(store.list()))
	}
}

func TestTriggerSpecMatches(t *testing.T) {
	base := Trigger{
		FriendlyName: testSpec.FriendlyName, CallbackURL: testSpec.CallbackURL, CallbackMethod: "POST",
		UsageCategory: "totalprice", TriggerBy: "price", Recurring: "daily", TriggerValue: decimal.MustParse("50.000000"),
	}
	if !testSpec.Matches(base) {
		t.Fatal("exact trigger does not match")
	}
	mut := map[string]func(*Trigger){
		"name":     func(t *Trigger) { t.FriendlyName += "x" },
		"url":      func(t *Trigger) { t.CallbackURL += "x" },
		"method":   func(t *Trigger) { t.CallbackMethod = "GET" },
		"category": func(t *Trigger) { t.UsageCategory = "sms" },
		"by":       func(t *Trigger) { t.TriggerBy = "usage" },
		"rec":      func(t *Trigger) { t.Recurring = "monthly" },
		"value":    func(t *Trigger) { t.TriggerValue = decimal.MustParse("50.01") },
	}
	for name, m := range mut {
		tr := base
		m(&tr)
		if testSpec.Matches(tr) {
			t.Errorf("%s: differs but matches", name)
		}
	}
	off := testSpec
	off.TriggerValue = "+5"
	tr := base
	tr.TriggerValue = decimal.MustParse("1234.5")
	if !off.Matches(tr) {
		t.Error("offset spec compares the value")
	}
	// Defaults and Twilio's spelling of a non-recurring trigger.
	s := TriggerSpec{FriendlyName: "n", CallbackURL: "u", UsageCategory: "sms", Recurring: "alltime", TriggerValue: "10"}
	if !s.Matches(Trigger{FriendlyName: "n", CallbackURL: "u", UsageCategory: "sms", CallbackMethod: "post", TriggerBy: "usage", TriggerValue: decimal.MustParse("10")}) {
		t.Error(`"" recurring / default method / default trigger_by do not match`)
	}
}

func TestSendMessageNotRetriedAfterAmbiguousFailure(t *testing.T) {
	for _, failure := range []string{"500", "dropped connection"} {
		t.Run(failure, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/2010-04-01/Accounts/"+testParent+"/Messages.json" {
					t.Errorf("path %s", r.URL.Path)
				}
				r.ParseForm()
				if r.PostForm.Get("To") != "+15005550006" || r.PostForm.Get("From") != "+15005550001" || r.PostForm.Get("Body") != "tripped" {
					t.Errorf("form %v", r.PostForm)
				}
				if failure == "500" {
					twilioError(w, 500, 20500, "Internal Server Error")
				} else {
					dropConnection(t, w)
				}
			})
			opts := testOptions(f.URL)
			c := newTestClient(t, opts)
			_, err := c.SendMessage(context.Background(), Message{To: "+15005550006", From: "+15005550001", Body: "tripped"})
			e := asError(t, err)
			if !IsRetryable(err) || e.Operation != OpMessagesCreate {
				t.Errorf("error = %+v", e)
			}
			if f.total() != 1 {
				t.Errorf("attempts = %d, want 1", f.total())
			}
		})
	}
}

func TestSendMessageRetriedOn429(t *testing.T) {
	var n atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			twilioError(w, 429, CodeTooManyRequests, "Too Many Requests")
			return
		}
		r.ParseForm()
		if r.PostForm.Get("MessagingServiceSid") != "MG0123456789abcdef0123456789abcdef" || r.PostForm.Get("From") != "" {
			t.Errorf("form %v", r.PostForm)
		}
		writeJSON(w, 201, map[string]any{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"})
	})
	c := newTestClient(t, testOptions(f.URL))
	sid, err := c.SendMessage(context.Background(), Message{To: "+15005550006", MessagingServiceSID: "MG0123456789abcdef0123456789abcdef", Body: "x"})
	if err != nil || sid != "SM0123456789abcdef0123456789abcdef" || f.total() != 2 {
		t.Errorf("sid %q err %v requests %d", sid, err, f.total())
	}
}

func TestDialErrorsAreRetriedEvenForCreates(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {})
	base := f.URL
	f.Close() // connection refused: nothing can have been sent
	opts := testOptions(base)
	opts.MaxAttempts = 3
	c := newTestClient(t, opts)
	_, err := c.SendMessage(context.Background(), Message{To: "+1", From: "+2", Body: "x"})
	if e := asError(t, err); e.Status != 0 || !IsRetryable(err) {
		t.Errorf("error = %+v", e)
	}
	if v := metricValue(t, registry(opts), "usagebreaker_twilio_requests_total", map[string]string{"operation": "messages.create", "code": "error"}); v != 3 {
		t.Errorf("attempts = %v, want 3", v)
	}
}

func TestTransportErrorRetriedForIdempotent(t *testing.T) {
	var n atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			dropConnection(t, w)
			return
		}
		w.WriteHeader(204)
	})
	opts := testOptions(f.URL)
	opts.Transport = &http.Transport{DisableKeepAlives: true} // no net/http-level replays
	c := newTestClient(t, opts)
	if err := c.DeleteTrigger(context.Background(), testSub, "UT0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	reg := registry(opts)
	if f.total() != 2 ||
		metricValue(t, reg, "usagebreaker_twilio_requests_total", map[string]string{"operation": "triggers.delete", "code": "error"}) != 1 ||
		metricValue(t, reg, "usagebreaker_twilio_requests_total", map[string]string{"operation": "triggers.delete", "code": "204"}) != 1 {
		t.Errorf("requests %d", f.total())
	}
}

func TestPerAttemptTimeout(t *testing.T) {
	var n atomic.Int32
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select { // hang until the client's attempt times out
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
	})
	opts := testOptions(f.URL)
	opts.Timeout = 50 * time.Millisecond
	c := newTestClient(t, opts)
	if _, err := c.FetchAccount(context.Background(), testSub); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, registry(opts), "usagebreaker_twilio_requests_total", map[string]string{"operation": "accounts.fetch", "code": "error"}); v != 1 {
		t.Errorf("timeouts counted = %v", v)
	}
}

func TestDeleteTriggerNotFoundIsSuccess(t *testing.T) {
	var n atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodDelete {
			t.Errorf("method %s", r.Method)
		}
		if n.Add(1) == 1 { // deleted, but the answer is lost
			twilioError(w, 500, 20500, "Internal Server Error")
			return
		}
		twilioError(w, 404, CodeNotFound, "The requested resource was not found")
	})
	c := newTestClient(t, testOptions(f.URL))
	if err := c.DeleteTrigger(context.Background(), testSub, "UT0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	if f.total() != 2 {
		t.Errorf("requests = %d", f.total())
	}
}

func TestListTriggersPagesAndValues(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != triggersPath(testSub) {
			twilioError(w, 404, 20404, "nope")
			return
		}
		if r.URL.Query().Get("PageSize") != "1000" {
			t.Errorf("query %v", r.URL.Query())
		}
		if r.URL.Query().Get("Page") == "" {
			writeJSON(w, 200, map[string]any{
				"usage_triggers": []map[string]any{{
					"sid": "UT00000000000000000000000000000001", "account_sid": testSub, "friendly_name": "a",
					"callback_url": "https://x/cb", "callback_method": "POST", "usage_category": "totalprice",
					"trigger_by": "price", "recurring": nil, "trigger_value": "1000.000000", "current_value": "12.34",
					"date_fired": nil,
				}},
				"next_page_uri": triggersPath(testSub) + "?PageSize=1000&Page=1&PageToken=PAUT1",
			})
			return
		}
		writeJSON(w, 200, map[string]any{
			"usage_triggers": []map[string]any{{
				"sid": "UT00000000000000000000000000000002", "account_sid": testSub, "recurring": "monthly",
				"trigger_value": "0.000001", "current_value": "", "date_fired": "Mon, 21 Apr 2014 09:14:35 +0000",
			}},
			"next_page_uri": nil,
		})
	})
	c := newTestClient(t, testOptions(f.URL))
	ts, err := c.ListTriggers(context.Background(), testSub)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 {
		t.Fatalf("triggers %+v", ts)
	}
	if ts[0].Recurring != "" || !SameRecurring(ts[0].Recurring, "alltime") || ts[0].TriggerValue.String() != "1000" ||
		ts[0].CurrentValue.String() != "12.34" || ts[0].DateFired != "" {
		t.Errorf("first %+v", ts[0])
	}
	if ts[1].Recurring != "monthly" || ts[1].TriggerValue.String() != "0.000001" || !ts[1].CurrentValue.IsZero() ||
		ts[1].DateFired == "" {
		t.Errorf("second %+v", ts[1])
	}
}

func TestUsageRecordExactDecimals(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("IncludeSubaccounts") != "false" {
			t.Errorf("query %v", q)
		}
		mu.Lock()
		paths = append(paths, r.URL.Path+"?"+q.Get("StartDate"))
		mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/AllTime.json"):
			writeJSON(w, 200, map[string]any{"usage_records": []any{}})
		case strings.HasSuffix(r.URL.Path, "/Yearly.json"):
			io.WriteString(w, `{"usage_records":[
				{"account_sid":"`+testSub+`","category":"totalprice","start_date":"2026-01-01","end_date":"2026-12-31","count":null,"usage":12.5,"price":12.5,"price_unit":"usd"}]}`)
		default:
			io.WriteString(w, `{"usage_records":[
				{"account_sid":"`+testSub+`","category":"totalprice","start_date":"2026-05-01","end_date":"2026-05-01","count":"","count_unit":"","usage":"2192.84855","usage_unit":"usd","price":"2192.84855","price_unit":"usd"}],
				"next_page_uri":null}`)
		}
	})
	c := newTestClient(t, testOptions(f.URL))
	c.now = func() time.Time { return time.Date(2026, 5, 1, 23, 30, 0, 0, time.FixedZone("x", -5*3600)) } // 2026-05-02 GMT
	ctx := context.Background()

	// read is the totalprice record of a period (at most one).
	read := func(p Period) (UsageRecord, int, error) {
		recs, err := c.UsageRecords(ctx, testSub, p)
		for _, r := range recs {
			if r.Category == "totalprice" {
				return r, len(recs), err
			}
		}
		return UsageRecord{}, len(recs), err
	}
	rec, _, err := read(PeriodDaily)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Price.String() != "2192.84855" || !rec.Price.Equal(decimal.MustParse("2192.84855")) ||
		rec.Usage.String() != "2192.84855" || !rec.Count.IsZero() || rec.PriceUnit != "usd" ||
		rec.StartDate != "2026-05-01" || rec.AccountSID != testSub || rec.Value("price").String() != "2192.84855" {
		t.Errorf("daily %+v", rec)
	}
	if _, _, err := read(PeriodMonthly); err != nil {
		t.Fatal(err)
	}
	rec, _, err = read(PeriodYearly)
	if err != nil || rec.Price.String() != "12.5" {
		t.Fatalf("yearly %+v %v", rec, err)
	}
	rec, n, err := read(PeriodAllTime)
	if err != nil || !rec.Price.IsZero() || n != 0 {
		t.Fatalf("alltime %+v (%d records) %v", rec, n, err)
	}
	prefix := "/2010-04-01/Accounts/" + testSub + "/Usage/Records/"
	want := []string{prefix + "Today.json?", prefix + "ThisMonth.json?", prefix + "Yearly.json?2026-01-01", prefix + "AllTime.json?"}
	if fmt.Sprint(paths) != fmt.Sprint(want) {
		t.Errorf("paths %v, want %v", paths, want)
	}
	if _, err := c.UsageRecords(ctx, testSub, Period("weekly")); !IsPermanent(err) || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unknown period: %v", err)
	}
}

func TestBaseURLWithPathPrefix(t *testing.T) {
	const prefix = "/proxy/twilio"
	var hosts sync.Map
	inner := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		hosts.Store(r.Host, true)
		if r.URL.Query().Get("Page") == "" {
			writeJSON(w, 200, map[string]any{
				"usage_triggers": []any{},
				// Twilio's URIs are relative to the API root, without our prefix.
				"next_page_uri": triggersPath(testSub) + "?PageSize=1000&Page=1&PageToken=PA1",
			})
			return
		}
		writeJSON(w, 200, map[string]any{"usage_triggers": []any{}, "next_page_uri": nil})
	})
	var outside atomic.Int32
	proxy := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, prefix+"/2010-04-01/") {
			outside.Add(1)
			twilioError(w, 404, 20404, "not under the prefix")
			return
		}
		r.URL.Path = strings.TrimPrefix(r.URL.Path, prefix)
		inner.Config.Handler.ServeHTTP(w, r)
	})
	c := newTestClient(t, testOptions(proxy.URL+prefix+"/"))
	if _, err := c.ListTriggers(context.Background(), testSub); err != nil {
		t.Fatal(err)
	}
	if outside.Load() != 0 || inner.count("GET "+triggersPath(testSub)) != 2 {
		t.Errorf("outside %d, inner %v", outside.Load(), inner.requests)
	}
	host := strings.TrimPrefix(proxy.URL, "http://")
	hosts.Range(func(k, _ any) bool {
		if k != host {
			t.Errorf("Host header %v, want %s", k, host)
		}
		return true
	})
}

func TestCallsListAndEnd(t *testing.T) {
	const callSID = "CA0123456789abcdef0123456789abcdef"
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		base := "/2010-04-01/Accounts/" + testSub + "/Calls"
		switch {
		case r.Method == http.MethodGet && r.URL.Path == base+".json":
			if r.URL.Query().Get("Status") != "in-progress" {
				t.Errorf("query %v", r.URL.Query())
			}
			writeJSON(w, 200, map[string]any{"calls": []map[string]any{{"sid": callSID, "status": "in-progress", "from": "+1", "to": "+2"}}, "next_page_uri": nil})
		case r.Method == http.MethodPost && r.URL.Path == base+"/"+callSID+".json":
			r.ParseForm()
			if r.PostForm.Get("Status") != "completed" {
				t.Errorf("form %v", r.PostForm)
			}
			writeJSON(w, 200, map[string]any{"sid": callSID, "status": "completed"})
		default:
			twilioError(w, 404, 20404, "nope")
		}
	})
	c := newTestClient(t, testOptions(f.URL))
	calls, err := c.ListInProgressCalls(context.Background(), testSub)
	if err != nil || len(calls) != 1 || calls[0] != (Call{SID: callSID, Status: "in-progress", From: "+1", To: "+2"}) {
		t.Fatalf("calls %+v %v", calls, err)
	}
	if err := c.EndCall(context.Background(), testSub, callSID); err != nil {
		t.Fatal(err)
	}
}

func TestSetAccountStatus(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		writeJSON(w, 200, accountJSON(testSub, "tenant", r.PostForm.Get("Status")))
	})
	c := newTestClient(t, testOptions(f.URL))
	a, err := c.SetAccountStatus(context.Background(), testSub, StatusSuspended)
	if err != nil || a.Status != StatusSuspended {
		t.Fatalf("%+v %v", a, err)
	}
	for _, bad := range []struct{ sid, status string }{{testSub, StatusClosed}, {testParent, StatusSuspended}, {"AC../../x", StatusActive}} {
		_, err := c.SetAccountStatus(context.Background(), bad.sid, bad.status)
		if !IsPermanent(err) || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%v: %v", bad, err)
		}
	}
	if f.total() != 1 {
		t.Errorf("requests = %d", f.total())
	}
}

func TestMetricsLabels(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, testSub2) {
			twilioError(w, 404, 20404, "nope")
			return
		}
		writeJSON(w, 200, accountJSON(testSub, "tenant", "active"))
	})
	opts := testOptions(f.URL)
	c := newTestClient(t, opts)
	c.FetchAccount(context.Background(), testSub)
	c.FetchAccount(context.Background(), testSub2)
	c.SetAccountStatus(context.Background(), testSub, StatusActive)

	// A second client on the same registry shares the collectors.
	if _, err := New(opts); err != nil {
		t.Fatalf("second client on the same registry: %v", err)
	}
	mfs, err := registry(opts).Gather()
	if err != nil {
		t.Fatal(err)
	}
	sidRe := regexp.MustCompile(`AC[0-9a-fA-F]{32}`)
	want := map[string]string{
		"usagebreaker_twilio_requests_total":           "code,operation",
		"usagebreaker_twilio_request_duration_seconds": "operation",
	}
	found := 0
	for _, mf := range mfs {
		labels, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		found++
		for _, m := range mf.GetMetric() {
			var names []string
			for _, lp := range m.GetLabel() {
				names = append(names, lp.GetName())
				if sidRe.MatchString(lp.GetValue()) {
					t.Errorf("%s carries a SID: %s", mf.GetName(), lp.GetValue())
				}
			}
			if strings.Join(names, ",") != labels {
				t.Errorf("%s labels %v", mf.GetName(), names)
			}
		}
	}
	if found != 2 {
		t.Errorf("found %d of the 2 metrics", found)
	}
	reg := registry(opts)
	for _, c := range []struct {
		op, code string
		want     float64
	}{{"accounts.fetch", "200", 1}, {"accounts.fetch", "404", 1}, {"accounts.update", "200", 1}} {
		if v := metricValue(t, reg, "usagebreaker_twilio_requests_total", map[string]string{"operation": c.op, "code": c.code}); v != c.want {
			t.Errorf("%s %s = %v", c.op, c.code, v)
		}
	}
	var _ prometheus.Gatherer = reg
}

func TestCredentialsNeverInErrorsOrLogs(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		// A misbehaving proxy that echoes the request's credentials.
		w.WriteHeader(503)
		_, p, _ := r.BasicAuth()
		io.WriteString(w, "<html><title>unavailable for "+r.Header.Get("Authorization")+" "+p+"</title></html>")
	})
	opts := testOptions(f.URL)
	opts.MaxAttempts = 2
	var logs testenv.Buffer
	opts.Logger = debugLogger(&logs)
	c := newTestClient(t, opts)
	_, err := c.FetchAccount(context.Background(), testSub)
	if err == nil {
		t.Fatal("no error")
	}
	basic := c.secret.basic
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), asError(t, err).Message, logs.String()} {
		if strings.Contains(s, testToken) || strings.Contains(s, basic) {
			t.Errorf("credentials leak: %s", s)
		}
	}
	if !strings.Contains(asError(t, err).Message, "<redacted>") {
		t.Errorf("message %q", asError(t, err).Message)
	}
}

func TestRewriteTransportPrefix(t *testing.T) {
	var got *http.Request
	rt := newRewriteTransport(mustURL(t, "http://127.0.0.1:9/p%20x/"), roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got = r
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	}))
	for in, want := range map[string]string{
		"https://api.twilio.com/2010-04-01/Accounts.json?PageSize=1000": "http://127.0.0.1:9/p%20x/2010-04-01/Accounts.json?PageSize=1000",
		"https://api.twilio.com/p%20x/2010-04-01/Accounts.json":         "http://127.0.0.1:9/p%20x/2010-04-01/Accounts.json",
	} {
		req, _ := http.NewRequest(http.MethodGet, in, nil)
		rt.RoundTrip(req)
		if got.URL.String() != want || got.Host != "127.0.0.1:9" || req.URL.String() != in {
			t.Errorf("%s -> %s (host %s), want %s", in, got.URL, got.Host, want)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func BenchmarkFetchAccount(b *testing.B) {
	body := `{"sid":"` + testSub + `","status":"active"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer srv.Close()
	c, err := New(testOptions(srv.URL))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.FetchAccount(ctx, testSub); err != nil {
			b.Fatal(err)
		}
	}
}
