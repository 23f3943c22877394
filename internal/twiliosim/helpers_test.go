package twiliosim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twilio/twilio-go/client"
	openapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// t0 is the simulated "now" of most tests: a Monday morning, GMT.
var t0 = time.Date(2026, 4, 21, 9, 14, 35, 0, time.UTC)

const (
	testParentSID   = "AC00000000000000000000000000000001"
	testParentToken = "ParentToken0123456789abcdefABCDE"
)

type env struct {
	t      *testing.T
	sim    *Sim
	srv    *httptest.Server
	parent Account
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, Options{}, nil)
}

// newEnvWith starts a simulator with a fixed clock (t0), no retry pause and a
// fixed fault seed, served by an httptest server (optionally through wrap).
func newEnvWith(t *testing.T, opts Options, wrap func(http.Handler) http.Handler) *env {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return t0 }
	}
	if opts.RetryDelay == 0 {
		opts.RetryDelay = -1
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if opts.ParentSID == "" {
		opts.ParentSID, opts.ParentAuthToken = testParentSID, testParentToken
	}
	s := New(opts)
	var h http.Handler = s
	if wrap != nil {
		h = wrap(s)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(s.Close)
	t.Cleanup(srv.Close)
	return &env{t: t, sim: s, srv: srv, parent: s.Parent()}
}

// rewrite points twilio-go (which always calls https://api.twilio.com) at the test server.
type rewrite struct{ target *url.URL }

func (rw rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host, r.Host = rw.target.Scheme, rw.target.Host, rw.target.Host
	return http.DefaultTransport.RoundTrip(r)
}

// api is a twilio-go API service using sid/token against the simulator.
func (e *env) api(sid, token string) *openapi.ApiService {
	u, _ := url.Parse(e.srv.URL)
	c := &client.Client{Credentials: client.NewCredentials(sid, token), HTTPClient: &http.Client{Transport: rewrite{u}}}
	c.SetAccountSid(sid)
	return openapi.NewApiServiceWithClient(c)
}

func (e *env) parentAPI() *openapi.ApiService { return e.api(e.parent.SID, e.parent.AuthToken) }

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %v: %s", a.status, err, a.body)
	}
	return m
}

// do sends a raw request (form in the query for GET/DELETE, else in the body);
// sid "" sends no credentials.
func (e *env) do(method, path string, form url.Values, sid, token string) answer {
	e.t.Helper()
	target := e.srv.URL + path
	var body io.Reader
	if method == http.MethodGet || method == http.MethodDelete {
		if len(form) > 0 {
			sep := "?"
			if strings.Contains(path, "?") {
				sep = "&"
			}
			target += sep + form.Encode()
		}
	} else {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if sid != "" {
		req.SetBasicAuth(sid, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// asParent sends a raw request with the parent's credentials.
func (e *env) asParent(method, path string, form url.Values) answer {
	e.t.Helper()
	return e.do(method, path, form, e.parent.SID, e.parent.AuthToken)
}

func (e *env) control(method, path string, form url.Values) answer {
	e.t.Helper()
	return e.do(method, path, form, "", "")
}

func wantStatus(t *testing.T, a answer, status int) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
}

func wantError(t *testing.T, a answer, status, code int) {
	t.Helper()
	wantStatus(t, a, status)
	m := a.json(t)
	if int(m["code"].(float64)) != code || int(m["status"].(float64)) != status ||
		m["message"] == "" || !strings.HasSuffix(m["more_info"].(string), "/"+itoa(code)) {
		t.Fatalf("error body %s, want code %d status %d", a.body, code, status)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func itoa(n int) string { return decimal.FromInt(int64(n)).String() }

func dec(s string) decimal.Decimal { return decimal.MustParse(s) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// receiver is a callback endpoint that records what it gets.
type receiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	got      []received
	statuses []int // answers to give, in order; then 200
}

type received struct {
	method    string
	url       string // scheme://host/path?query as requested
	header    http.Header
	body      []byte
	form      url.Values
	user      string
	pass      string
	basicAuth bool
}

func newReceiver(t *testing.T, statuses ...int) *receiver {
	rc := &receiver{statuses: statuses}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(b))
		if r.Method == http.MethodGet {
			form = r.URL.Query()
		}
		user, pass, ok := r.BasicAuth()
		rc.mu.Lock()
		rc.got = append(rc.got, received{method: r.Method, url: "http://" + r.Host + r.URL.RequestURI(),
			header: r.Header.Clone(), body: b, form: form, user: user, pass: pass, basicAuth: ok})
		status := http.StatusOK
		if len(rc.statuses) > 0 {
			status, rc.statuses = rc.statuses[0], rc.statuses[1:]
		}
		rc.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received{}, rc.got...)
}

// validSignature checks a received callback with twilio-go's own validator.
func validSignature(token string, r received) bool {
	rv := client.NewRequestValidator(token)
	sig := r.header.Get("X-Twilio-Signature")
	if r.method == http.MethodGet {
		return rv.Validate(r.url, map[string]string{}, sig)
	}
	return rv.ValidateBody(r.url, r.body, sig)
}

// createTrigger creates a trigger through the API with the parent's credentials.
func (e *env) createTrigger(acct string, form url.Values) map[string]any {
	e.t.Helper()
	a := e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+acct+"/Usage/Triggers.json", form)
	wantStatus(e.t, a, http.StatusCreated)
	return a.json(e.t)
}

func triggerForm(callback, category, by, recurring, value string) url.Values {
	f := url.Values{"CallbackUrl": {callback}, "UsageCategory": {category}, "TriggerValue": {value}}
	if by != "" {
		f.Set("TriggerBy", by)
	}
	if recurring != "" {
		f.Set("Recurring", recurring)
	}
	return f
}

// usage adds priced usage through the Go API and waits for the deliveries it causes.
func (e *env) usage(acct, category, price string) ([]Firing, []Delivery) {
	e.t.Helper()
	f, err := e.sim.AddUsage(UsageInput{AccountSID: acct, Category: category, Count: decimal.FromInt(1),
		Usage: decimal.FromInt(1), Price: dec(price)})
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := e.sim.Wait(ctxT(e.t), f...)
	if err != nil {
		e.t.Fatal(err)
	}
	return f, d
}
