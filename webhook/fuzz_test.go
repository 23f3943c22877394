package webhook

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/breaker"
)

// FuzzCallback throws arbitrary requests at the callback handler. Whatever
// comes in: it never panics, answers only with the statuses the contract
// lists, and accepts (200, and only then hands the firing to the breaker)
// only a POST form whose X-Twilio-Signature is right for the subaccount's
// token, the public URL and the exact path and body, for a rule that exists,
// with every required parameter. The signature oracle here is independent
// of the handler's (it signs as Twilio documents, with and without :443).
//
// The seeds run as an ordinary test; explore with
//
//	go test ./webhook -run '^$' -fuzz FuzzCallback -fuzztime 60s
func FuzzCallback(f *testing.F) {
	good := firing(acctA)
	add := func(method, path, ctype string, body []byte, sig string) { f.Add(method, path, ctype, body, sig) }
	form := "application/x-www-form-urlencoded"
	valid := signed("tokenA", path, good)
	add("POST", path, form, []byte(valid.body), valid.sig)
	add("POST", path, form+"; charset=utf-8", []byte(valid.body), valid.sig)
	add("POST", path, form, []byte(strings.Replace(valid.body, "50.12", "50.13", 1)), valid.sig)
	add("POST", path, form, []byte(valid.body), sign("tokenB", public+path, good))
	add("POST", "/twilio/usage-triggers/other", form, []byte(valid.body), valid.sig)
	add("POST", "/twilio/usage-triggers/nope", form, []byte(valid.body), sign("tokenA", public+"/twilio/usage-triggers/nope", good))
	add("POST", path+"/x", form, []byte(valid.body), valid.sig)
	add("POST", path+"?a=1", form, []byte(valid.body), sign("tokenA", public+path+"?a=1", good))
	add("GET", path+"?"+valid.body, "", nil, sign("tokenA", public+path+"?"+valid.body, nil))
	add("PUT", path, form, []byte(valid.body), valid.sig)
	add("POST", path, "application/json", []byte(`{"AccountSid":"`+acctA.SID+`"}`), valid.sig)
	add("POST", path, form, []byte(valid.body+"&CurrentValue=%zz"), valid.sig)
	add("POST", path, form, []byte(valid.body+"&AccountSid="+acctB.SID), valid.sig)
	add("POST", path, form, []byte("%"), "")
	add("POST", path, form, []byte(""), "")
	add("POST", path, form, bytes.Repeat([]byte("a="), 40000), valid.sig)
	missing := firing(acctA)
	missing.Del("CurrentValue")
	m := signed("tokenA", path, missing)
	add("POST", path, form, []byte(m.body), m.sig)
	unknown := firing(acctA)
	unknown.Set("AccountSid", "AC"+strings.Repeat("9", 32))
	u := signed("tokenA", path, unknown)
	add("POST", path, form, []byte(u.body), u.sig)

	f.Fuzz(func(t *testing.T, method, p, ctype string, body []byte, sig string) {
		target, err := url.Parse("http://10.0.0.1:8080" + p)
		if err != nil || target.Host != "10.0.0.1:8080" {
			return // not a request a server would route here
		}
		fb := newFake()
		m := breaker.NewMetrics(nil)
		h := New(fb, m, nil)
		req := httptest.NewRequest(http.MethodGet, "http://10.0.0.1:8080/", nil)
		req.Method = method
		req.URL = target
		req.RequestURI = target.RequestURI()
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if sig != "" {
			req.Header.Set("X-Twilio-Signature", sig)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)

		switch w.Code {
		case 200, 400, 403, 404, 405, 503:
		default:
			t.Fatalf("status %d is not one the contract lists", w.Code)
		}
		if len(fb.accepted) > 1 {
			t.Fatalf("one request accepted %d firings", len(fb.accepted))
		}
		if (w.Code == 200) != (len(fb.accepted) == 1) {
			t.Fatalf("status %d, %d firings handed to the breaker", w.Code, len(fb.accepted))
		}
		if w.Code != 200 {
			return
		}
		// Accepted: check everything independently.
		rule, ok := strings.CutPrefix(target.Path, "/twilio/usage-triggers/")
		if method != http.MethodPost || !ok || fb.Rule(rule) == nil {
			t.Fatalf("accepted %s %s", method, target.Path)
		}
		if mt, _, _ := strings.Cut(ctype, ";"); !strings.EqualFold(strings.TrimSpace(mt), "application/x-www-form-urlencoded") {
			t.Fatalf("accepted content type %q", ctype)
		}
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			t.Fatalf("accepted a body that does not parse: %v", err)
		}
		acct, ok := fb.accounts[vals.Get("AccountSid")]
		if !ok {
			t.Fatalf("accepted an unknown account %q", vals.Get("AccountSid"))
		}
		signedURL := public + target.EscapedPath()
		withPort := "https://breaker.example.com:443" + target.EscapedPath()
		if target.RawQuery != "" {
			signedURL += "?" + target.RawQuery
			withPort += "?" + target.RawQuery
		}
		for k, v := range vals {
			if len(v) != 1 {
				t.Fatalf("accepted a repeated parameter %s", k)
			}
		}
		if sig != sign(acct.AuthToken, signedURL, vals) && sig != sign(acct.AuthToken, withPort, vals) {
			t.Fatalf("accepted a signature that is not %s's for %s", acct.FriendlyName, signedURL)
		}
		for _, k := range required {
			if strings.TrimSpace(vals.Get(k)) == "" {
				t.Fatalf("accepted without %s", k)
			}
		}
		cb := fb.accepted[0]
		if cb.AccountSID != acct.SID || cb.IdempotencyToken != vals.Get("IdempotencyToken") || cb.CurrentValue != vals.Get("CurrentValue") {
			t.Fatalf("handed over %+v for %v", cb, vals)
		}
	})
}
