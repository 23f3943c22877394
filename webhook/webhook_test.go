package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// sign computes X-Twilio-Signature as Twilio documents it: HMAC-SHA1 keyed
// with the auth token over the URL followed by each POST parameter's name
// and value, sorted by name; base64.
func sign(token, u string, form url.Values) string {
	keys := make([]string, 0, len(form))
	for k := range form {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(u)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteString(form.Get(k))
	}
	mac := hmac.New(sha1.New, []byte(token))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func TestSignMatchesTwilioVector(t *testing.T) {
	// The usage-trigger-shaped vector from DOMAIN.md §4.
	form := url.Values{
		"AccountSid":       {"AC00000000000000000000000000000001"},
		"UsageTriggerSid":  {"UT00000000000000000000000000000001"},
		"DateFired":        {"Mon, 21 Apr 2014 09:14:35 +0000"},
		"Recurring":        {"daily"},
		"UsageCategory":    {"totalprice"},
		"TriggerBy":        {"price"},
		"TriggerValue":     {"50"},
		"CurrentValue":     {"50.12"},
		"UsageRecordUri":   {"/2010-04-01/Accounts/AC00000000000000000000000000000001/Usage/Records/Daily.json?Category=totalprice"},
		"IdempotencyToken": {"AC00000000000000000000000000000001-FIRES-UT00000000000000000000000000000001-2014-04-21"},
	}
	if got := sign("12345", "https://breaker.example.com/twilio/usage-trigger", form); got != "bsA3Jp6iLDUXBRaSVyOh+gjFtN0=" {
		t.Fatalf("sign = %s", got)
	}
	if !validSignature("12345", "https://breaker.example.com/twilio/usage-trigger", []byte(form.Encode()), "bsA3Jp6iLDUXBRaSVyOh+gjFtN0=") {
		t.Fatal("validSignature rejects the documented vector")
	}
}

const public = "https://breaker.example.com"

type fakeBreaker struct {
	mu        sync.Mutex
	rules     *rules.Set
	accounts  map[string]twilioapi.Account
	rotated   map[string]string // sid -> token Refresh returns
	lookupErr error
	acceptErr error
	accepted  []breaker.Callback
	tokens    map[string]bool
	refreshes int
}

func (f *fakeBreaker) Rule(name string) *rules.Rule { return f.rules.Get(name) }
func (f *fakeBreaker) PublicURL() string            { return public }
func (f *fakeBreaker) LookupAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	if f.lookupErr != nil {
		return twilioapi.Account{}, f.lookupErr
	}
	a, ok := f.accounts[sid]
	if !ok {
		return a, breaker.ErrNotSubaccount
	}
	return a, nil
}
func (f *fakeBreaker) RefreshAccount(ctx context.Context, sid string) (twilioapi.Account, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshes++
	a := f.accounts[sid]
	if tok, ok := f.rotated[sid]; ok {
		a.AuthToken = tok
		f.accounts[sid] = a
		delete(f.rotated, sid)
		return a, true
	}
	return a, false
}
func (f *fakeBreaker) Accept(ctx context.Context, r *rules.Rule, acct twilioapi.Account, cb breaker.Callback) (breaker.AcceptResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.acceptErr != nil {
		return breaker.AcceptResult{}, f.acceptErr
	}
	dup := f.tokens[cb.IdempotencyToken]
	f.tokens[cb.IdempotencyToken] = true
	if !dup {
		f.accepted = append(f.accepted, cb)
	}
	return breaker.AcceptResult{Incident: store.Incident{ID: 1}, Duplicate: dup}, nil
}

var (
	acctA = twilioapi.Account{SID: "AC" + strings.Repeat("a", 32), FriendlyName: "tenant-a", Status: "active", AuthToken: "tokenA"}
	acctB = twilioapi.Account{SID: "AC" + strings.Repeat("b", 32), FriendlyName: "tenant-b", Status: "active", AuthToken: "tokenB"}
)

func newFake() *fakeBreaker {
	r := &rules.Rule{Name: "spend", UsageCategory: "totalprice", TriggerBy: "price", Recurring: "daily", Threshold: decimal.MustParse("50"), Action: "suspend"}
	r2 := &rules.Rule{Name: "other", UsageCategory: "sms", TriggerBy: "count", Recurring: "daily", Threshold: decimal.MustParse("5"), Action: "notify"}
	return &fakeBreaker{rules: rules.NewSet([]*rules.Rule{r, r2}),
		accounts: map[string]twilioapi.Account{acctA.SID: acctA, acctB.SID: acctB},
		rotated:  map[string]string{}, tokens: map[string]bool{}}
}

func firing(acct twilioapi.Account) url.Values {
	return url.Values{
		"AccountSid":       {acct.SID},
		"UsageTriggerSid":  {"UT" + strings.Repeat("1", 32)},
		"DateFired":        {"Tue, 24 Nov 2026 10:00:00 +0000"},
		"Recurring":        {"daily"},
		"UsageCategory":    {"totalprice"},
		"TriggerBy":        {"price"},
		"TriggerValue":     {"50"},
		"CurrentValue":     {"50.12"},
		"UsageRecordUri":   {"/2010-04-01/Accounts/" + acct.SID + "/Usage/Records/Today.json?Category=totalprice"},
		"IdempotencyToken": {acct.SID + "-FIRES-UT1-2026-11-24"},
	}
}

type req struct {
	method, path, ctype, sig string
	body                     string
}

func signed(token, path string, form url.Values) req {
	return req{http.MethodPost, path, "application/x-www-form-urlencoded", sign(token, public+path, form), form.Encode()}
}

func do(h http.Handler, r req) *httptest.ResponseRecorder {
	hr := httptest.NewRequest(r.method, "http://10.0.0.1:8080"+r.path, strings.NewReader(r.body))
	if r.ctype != "" {
		hr.Header.Set("Content-Type", r.ctype)
	}
	if r.sig != "" {
		hr.Header.Set("X-Twilio-Signature", r.sig)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, hr)
	return w
}

const path = "/twilio/usage-triggers/spend"

func TestCallbackAnswers(t *testing.T) {
	good := firing(acctA)
	altered := firing(acctA)
	altered.Set("CurrentValue", "5000")
	extra := firing(acctA)
	extra.Set("Extra", "1") // Twilio may add parameters: they are signed too
	missing := firing(acctA)
	missing.Del("IdempotencyToken")
	badSID := firing(acctA)
	badSID.Set("AccountSid", "AC"+strings.Repeat("c", 32))
	parent := firing(acctA)
	parent.Set("AccountSid", "garbage")
	nul := firing(acctA)
	nul.Set("CurrentValue", "1\x002")
	notUTF8 := firing(acctA)
	notUTF8.Set("UsageCategory", "sms\xff")

	cases := []struct {
		name    string
		r       req
		status  int
		outcome string
	}{
		{"valid", signed("tokenA", path, good), 200, breaker.OutcomeAccepted},
		{"valid with a parameter Twilio added", signed("tokenA", path, extra), 200, breaker.OutcomeAccepted},
		{"altered parameter", func() req { r := signed("tokenA", path, good); r.body = altered.Encode(); return r }(), 403, breaker.OutcomeBadSignature},
		{"signed with another subaccount's token", signed("tokenB", path, good), 403, breaker.OutcomeBadSignature},
		{"signed for another rule's path", func() req { r := signed("tokenA", "/twilio/usage-triggers/other", good); r.path = path; return r }(), 403, breaker.OutcomeBadSignature},
		{"signed with the Host header's URL", func() req {
			r := signed("tokenA", path, good)
			r.sig = sign("tokenA", "http://10.0.0.1:8080"+path, good)
			return r
		}(), 403, breaker.OutcomeBadSignature},
		{"missing signature", func() req { r := signed("tokenA", path, good); r.sig = ""; return r }(), 403, breaker.OutcomeBadSignature},
		{"unknown account", signed("tokenA", path, badSID), 403, breaker.OutcomeUnknownAccount},
		{"unknown rule, valid signature", signed("tokenA", "/twilio/usage-triggers/nope", good), 404, breaker.OutcomeUnknownRule},
		{"no rule in path", signed("tokenA", "/twilio/usage-triggers/", good), 404, breaker.OutcomeUnknownRule},
		{"nested path", signed("tokenA", "/twilio/usage-triggers/spend/x", good), 404, breaker.OutcomeUnknownRule},
		{"GET", req{method: http.MethodGet, path: path}, 405, breaker.OutcomeBadRequest},
		{"JSON", func() req { r := signed("tokenA", path, good); r.ctype = "application/json"; return r }(), 400, breaker.OutcomeBadRequest},
		{"no content type", func() req { r := signed("tokenA", path, good); r.ctype = ""; return r }(), 400, breaker.OutcomeBadRequest},
		{"broken encoding", func() req { r := signed("tokenA", path, good); r.body = "AccountSid=%zz&x=1"; return r }(), 400, breaker.OutcomeBadRequest},
		{"repeated parameter", func() req {
			r := signed("tokenA", path, good)
			r.body += "&AccountSid=" + acctB.SID
			return r
		}(), 400, breaker.OutcomeBadRequest},
		{"too large", func() req {
			r := signed("tokenA", path, good)
			r.body += "&pad=" + strings.Repeat("x", MaxBodyBytes)
			return r
		}(), 400, breaker.OutcomeBadRequest},
		{"missing AccountSid", signed("tokenA", path, url.Values{"CurrentValue": {"1"}}), 400, breaker.OutcomeBadRequest},
		{"malformed AccountSid", signed("tokenA", path, parent), 403, breaker.OutcomeUnknownAccount},
		{"missing IdempotencyToken (signed)", signed("tokenA", path, missing), 400, breaker.OutcomeBadRequest},
		{"a NUL byte in a field (signed)", signed("tokenA", path, nul), 400, breaker.OutcomeBadRequest},
		{"invalid UTF-8 in a field (signed)", signed("tokenA", path, notUTF8), 400, breaker.OutcomeBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fb := newFake()
			m := breaker.NewMetrics(nil)
			h := New(fb, m, nil)
			w := do(h, c.r)
			if w.Code != c.status {
				t.Fatalf("status = %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), c.status)
			}
			if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(c.outcome)); v != 1 {
				t.Errorf("callbacks_total{outcome=%s} = %v", c.outcome, v)
			}
			if c.status != 200 && len(fb.accepted) != 0 {
				t.Errorf("a rejected callback was accepted: %+v", fb.accepted)
			}
			if c.status == 405 && w.Header().Get("Allow") != "POST" {
				t.Errorf("Allow = %q", w.Header().Get("Allow"))
			}
		})
	}
}

func TestCallbackAcceptedFieldsAndDuplicate(t *testing.T) {
	fb := newFake()
	m := breaker.NewMetrics(nil)
	h := New(fb, m, nil)
	form := firing(acctA)
	for i := 0; i < 5; i++ {
		if w := do(h, signed("tokenA", path, form)); w.Code != 200 {
			t.Fatalf("delivery %d: %d", i, w.Code)
		}
	}
	if len(fb.accepted) != 1 {
		t.Fatalf("accepted %d", len(fb.accepted))
	}
	cb := fb.accepted[0]
	if cb.AccountSID != acctA.SID || cb.CurrentValue != "50.12" || cb.UsageCategory != "totalprice" || cb.TriggerBy != "price" ||
		cb.IdempotencyToken != form.Get("IdempotencyToken") || cb.DateFired != form.Get("DateFired") || cb.Recurring != "daily" {
		t.Errorf("callback = %+v", cb)
	}
	if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(breaker.OutcomeDuplicate)); v != 4 {
		t.Errorf("duplicates = %v", v)
	}
}

func TestCallbackSignatureWithDefaultPort(t *testing.T) {
	fb := newFake()
	h := New(fb, nil, nil)
	form := firing(acctA)
	r := signed("tokenA", path, form)
	r.sig = sign("tokenA", "https://breaker.example.com:443"+path, form)
	if w := do(h, r); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
}

func TestCallbackRotatedToken(t *testing.T) {
	fb := newFake()
	fb.rotated[acctA.SID] = "newTokenA"
	h := New(fb, nil, nil)
	if w := do(h, signed("newTokenA", path, firing(acctA))); w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if fb.refreshes != 1 {
		t.Fatalf("refreshes = %d", fb.refreshes)
	}
}

func TestCallbackCannotRecord(t *testing.T) {
	fb := newFake()
	fb.acceptErr = errors.New("disk full")
	m := breaker.NewMetrics(nil)
	h := New(fb, m, nil)
	if w := do(h, signed("tokenA", path, firing(acctA))); w.Code != 503 {
		t.Fatalf("status %d", w.Code)
	}
	if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(breaker.OutcomeError)); v != 1 {
		t.Errorf("error outcome = %v", v)
	}
}

// An unknown account whose lookup is rate-limited is 403
// unknown_account (never error, which pages).
func TestCallbackLookupLimited(t *testing.T) {
	fb := newFake()
	fb.lookupErr = breaker.ErrLookupLimited
	m := breaker.NewMetrics(nil)
	if w := do(New(fb, m, nil), signed("tokenA", path, firing(acctA))); w.Code != 403 {
		t.Fatalf("status %d", w.Code)
	}
	if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(breaker.OutcomeUnknownAccount)); v != 1 {
		t.Errorf("unknown_account = %v", v)
	}
	if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(breaker.OutcomeError)); v != 0 {
		t.Errorf("error = %v", v)
	}
}

// A wrong public_url looked like an attack. The sampled
// rejection line names the URL that was checked (no credentials), and
// Twilio-shaped callbacks that keep failing say public_url is probably wrong.
func TestWrongPublicURLIsSaidPlainly(t *testing.T) {
	var logs bytes.Buffer
	h := New(newFake(), breaker.NewMetrics(nil), slog.New(slog.NewJSONHandler(&logs, nil)))
	send := func(ua string) int {
		form := firing(acctA)
		// Twilio signs the URL it calls, which is not public_url.
		r := req{http.MethodPost, path, "application/x-www-form-urlencoded", sign("tokenA", "https://elsewhere.example.com"+path, form), form.Encode()}
		hr := httptest.NewRequest(r.method, "http://10.0.0.1:8080"+r.path, strings.NewReader(r.body))
		hr.Header.Set("Content-Type", r.ctype)
		hr.Header.Set("X-Twilio-Signature", r.sig)
		hr.Header.Set("User-Agent", ua)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, hr)
		return w.Code
	}
	const hint = "server.public_url probably differs from the URL Twilio calls"
	for i := 0; i < 5; i++ {
		if code := send("curl/8.0"); code != 403 {
			t.Fatalf("status %d", code)
		}
	}
	if strings.Contains(logs.String(), hint) {
		t.Fatal("requests that do not look like Twilio's were taken for Twilio's")
	}
	if !strings.Contains(logs.String(), `"checked_url":"`+public+path+`"`) {
		t.Errorf("the rejection line does not name the checked URL:\n%s", logs.String())
	}
	for i := 0; i < URLMismatchAfter; i++ {
		send("TwilioProxy/1.1")
	}
	if n := strings.Count(logs.String(), hint); n != 1 {
		t.Fatalf("%d hints after %d Twilio-shaped failures:\n%s", n, URLMismatchAfter, logs.String())
	}
	send("TwilioProxy/1.1")
	if n := strings.Count(logs.String(), hint); n != 1 {
		t.Errorf("the hint repeated at once (%d)", n)
	}
}

func TestCheckedURLHasNoCredentials(t *testing.T) {
	if got := withoutCredentials("https://twilio:s3cret@breaker.example.com/twilio/usage-triggers/a"); got != "https://breaker.example.com/twilio/usage-triggers/a" {
		t.Errorf("got %s", got)
	}
}
