package twiliosim

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twilio/twilio-go/client"
)

func (e *env) fault(form url.Values) {
	e.t.Helper()
	wantStatus(e.t, e.control(http.MethodPost, "/sim/faults", form), http.StatusCreated)
}

func TestAPIFaults(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	api := e.parentAPI()
	acctPath := "/2010-04-01/Accounts/" + sub.SID + ".json"

	// A status with a Twilio JSON error body, once (Times defaults to 1).
	e.fault(url.Values{"Path": {`^/2010-04-01/Accounts\.json$`}, "Status": {"500"}})
	_, err := api.ListAccount(nil)
	var tre *client.TwilioRestError
	if !errors.As(err, &tre) || tre.Status != 500 || tre.Code != 20500 || tre.MoreInfo != "https://www.twilio.com/docs/errors/20500" {
		t.Fatalf("500 fault seen by twilio-go as %v", err)
	}
	if _, err := api.ListAccount(nil); err != nil {
		t.Fatalf("the fault outlived Times=1: %v", err)
	}

	// A non-JSON 502 page.
	e.fault(url.Values{"Path": {`Accounts/AC[0-9a-f]+\.json$`}, "Status": {"502"}, "Body": {"html"}})
	a := e.asParent(http.MethodGet, acctPath, nil)
	if a.status != 502 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || !strings.Contains(string(a.body), "<html>") {
		t.Fatalf("502 html fault: %d %s %s", a.status, a.header.Get("Content-Type"), a.body)
	}
	e.fault(url.Values{"Path": {`Accounts/AC[0-9a-f]+\.json$`}, "Status": {"503"}, "Body": {"html"}, "RetryAfter": {"3"}})
	_, err = api.FetchAccount(sub.SID)
	if err == nil || errors.As(err, &tre) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("html 503 seen by twilio-go as %v", err)
	}

	// 429 with Retry-After; Times=2; Method filter.
	e.fault(url.Values{"Path": {`/Usage/Triggers\.json$`}, "Method": {"GET"}, "Status": {"429"}, "Times": {"2"}, "RetryAfter": {"7"}})
	trPath := "/2010-04-01/Accounts/" + sub.SID + "/Usage/Triggers.json"
	wantStatus(t, e.asParent(http.MethodPost, trPath, triggerForm("https://x.example/", "sms", "", "", "5")), http.StatusCreated)
	for range 2 {
		a := e.asParent(http.MethodGet, trPath, nil)
		wantError(t, a, http.StatusTooManyRequests, 20429)
		if a.header.Get("Retry-After") != "7" {
			t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
		}
	}
	wantStatus(t, e.asParent(http.MethodGet, trPath, nil), http.StatusOK)

	// Unlimited, never on /sim/*, cleared by DELETE /sim/faults.
	e.fault(url.Values{"Path": {".*"}, "Status": {"500"}, "Times": {"-1"}})
	for range 3 {
		wantError(t, e.asParent(http.MethodGet, acctPath, nil), 500, 20500)
	}
	wantStatus(t, e.control(http.MethodGet, "/sim/state", nil), http.StatusOK)
	if st := e.sim.State(); len(st.Faults) != 1 || st.Faults[0].Times != -1 {
		t.Fatalf("faults in state: %+v", st.Faults)
	}
	wantStatus(t, e.control(http.MethodDelete, "/sim/faults", nil), http.StatusNoContent)
	wantStatus(t, e.asParent(http.MethodGet, acctPath, nil), http.StatusOK)

	// A delay alone answers normally, late.
	e.fault(url.Values{"Path": {`Accounts/AC[0-9a-f]+\.json$`}, "DelayMs": {"60"}})
	start := time.Now()
	wantStatus(t, e.asParent(http.MethodGet, acctPath, nil), http.StatusOK)
	if took := time.Since(start); took < 60*time.Millisecond {
		t.Fatalf("delayed answer took %v", took)
	}

	// After: the request takes effect, the client only sees the failure (a lost answer).
	e.fault(url.Values{"Path": {`/Usage/Triggers\.json$`}, "Method": {"POST"}, "Status": {"500"}, "After": {"true"}})
	wantError(t, e.asParent(http.MethodPost, trPath, triggerForm("https://x.example/", "sms", "", "", "6")), 500, 20500)
	if n := len(e.sim.Triggers(sub.SID)); n != 2 {
		t.Fatalf("After fault: %d triggers, want 2 (created despite the 500)", n)
	}
	// Drop: the connection closes without an answer.
	e.fault(url.Values{"Path": {`Accounts/AC[0-9a-f]+\.json$`}, "Drop": {"true"}})
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+acctPath, nil)
	req.SetBasicAuth(e.parent.SID, e.parent.AuthToken)
	// A fresh connection: Go's transport retries an idempotent request once on
	// a reused connection that closes without an answer.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := fresh.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("dropped request got an answer: %d", resp.StatusCode)
	}

	// Bad fault definitions are refused.
	for _, f := range []url.Values{{"Path": {"("}}, {"Status": {"42"}}, {"Target": {"db"}}, {"Probability": {"1.5"}}, {"Body": {"xml"}}, {"Times": {"x"}}} {
		wantStatus(t, e.control(http.MethodPost, "/sim/faults", f), http.StatusBadRequest)
	}
	// Faults were answered, and counted.
	if n := e.sim.Requests()[OpAccountsFetch]; n < 8 {
		t.Fatalf("accounts.fetch counted %d", n)
	}
}

func TestFaultProbabilityIsSeeded(t *testing.T) {
	pattern := func() string {
		e := newEnvWith(t, Options{Seed: 42}, nil)
		if _, err := e.sim.AddFault(Fault{Path: `^/2010-04-01/Accounts\.json$`, Status: 500, Times: -1, Probability: 0.3}); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for range 300 {
			if e.asParent(http.MethodGet, "/2010-04-01/Accounts.json", nil).status == 500 {
				b.WriteByte('x')
			} else {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	p1, p2 := pattern(), pattern()
	if p1 != p2 {
		t.Fatal("the same seed gave different failure patterns")
	}
	if n := strings.Count(p1, "x"); n < 60 || n > 120 {
		t.Fatalf("%d of 300 requests failed with Probability 0.3", n)
	}
}

func TestCallbackFaults(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/twilio/usage-triggers/a", "sms", "count", "daily", "1"))
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/twilio/usage-triggers/b", "mms", "count", "daily", "1"))

	// Status: the attempt counts as answered with it, nothing is sent; retries follow.
	e.fault(url.Values{"Target": {"callbacks"}, "Path": {"/a$"}, "Status": {"503"}, "Times": {"2"}})
	_, d := e.usage(sub.SID, "sms", "1")
	if len(d) != 3 || d[0].Status != 503 || !d[0].Fault || d[1].Status != 503 || d[2].Status != 200 || d[2].Fault {
		t.Fatalf("deliveries %+v", d)
	}
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("receiver got %d requests", n)
	}
	// Status 0 without delay: the attempt is lost as if the network failed, then retried.
	e.fault(url.Values{"Target": {"callbacks"}, "Path": {"/b$"}})
	// A callbacks fault on another path does not apply.
	e.fault(url.Values{"Target": {"callbacks"}, "Path": {"/zzz$"}, "Status": {"500"}})
	_, d = e.usage(sub.SID, "mms", "1")
	if len(d) != 2 || d[0].Status != 0 || d[0].Error != "dropped by fault" || d[1].Status != 200 {
		t.Fatalf("dropped deliveries %+v", d)
	}
	got := rc.requests()
	if len(got) != 2 || !strings.HasSuffix(got[1].url, "/b") || !validSignature(sub.AuthToken, got[1]) {
		t.Fatalf("receiver got %d", len(got))
	}
	// API faults do not touch callbacks, nor callbacks faults API requests.
	e.fault(url.Values{"Path": {".*"}, "Status": {"500"}, "Times": {"-1"}})
	e.createTrigger2(t, sub.SID)
	if st := e.sim.State(); len(st.Faults) != 2 {
		t.Fatalf("faults left: %+v", st.Faults)
	}
}

// createTrigger2 checks that an API fault covering everything fails trigger
// creation but leaves callback deliveries alone.
func (e *env) createTrigger2(t *testing.T, acct string) {
	a := e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+acct+"/Usage/Triggers.json", triggerForm("https://x/", "sms", "", "", "1"))
	wantError(t, a, 500, 20500)
	// Deliveries still work: fire the existing "a" trigger in a new period.
	e.sim.Advance(24 * time.Hour)
	_, d := e.usage(acct, "sms", "1")
	if len(d) != 1 || d[0].Status != 200 {
		t.Fatalf("delivery under an API fault: %+v", d)
	}
}
