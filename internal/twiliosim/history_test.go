package twiliosim

import (
	"net/http"
	"net/url"
	"testing"
)

// TestHistory: POST /sim/history books usage on past days, which the Daily
// records endpoint (and the month's record) then report; no trigger fires.
func TestHistory(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	today := t0.Format(dateLayout)
	rc := newReceiver(t)
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL, "totalprice", "price", "daily", "1"))
	for _, f := range []url.Values{
		{"AccountSid": {sub.SID}, "Category": {"totalprice"}, "Day": {"2026-04-18"}, "Price": {"50"}},
		{"AccountSid": {sub.SID}, "Category": {"sms"}, "Day": {"2026-04-19"}, "Count": {"30"}, "Usage": {"30"}, "Price": {"2.5"}},
		{"AccountSid": {sub.SID}, "Category": {"sms"}, "Day": {"2026-04-19"}, "Count": {"1"}, "Usage": {"1"}, "Price": {"0.25"}},
		{"AccountSid": {sub.SID}, "Category": {"totalprice"}, "Day": {today}, "Price": {"3"}},
	} {
		wantStatus(t, e.control(http.MethodPost, "/sim/history", f), http.StatusOK)
	}
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("history fired %d callbacks", n)
	}
	p := e.records(sub.SID, "Daily", url.Values{"StartDate": {"2026-04-18"}, "EndDate": {"2026-04-19"}, "IncludeSubaccounts": {"false"}})
	got := map[string]string{}
	for _, r := range p.UsageRecords {
		got[r.StartDate+" "+r.Category] = r.Count + "/" + r.Usage + "/" + string(r.Price)
	}
	want := map[string]string{
		"2026-04-18 sms": "0/0/0", "2026-04-18 totalprice": "0/50/50",
		"2026-04-19 sms": "31/31/2.75", "2026-04-19 totalprice": "0/2.75/2.75",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if len(p.UsageRecords) != 4 {
		t.Errorf("%d records: %v", len(p.UsageRecords), got)
	}

	// Bad requests.
	for _, f := range []url.Values{
		{"AccountSid": {sub.SID}, "Category": {"sms"}},
		{"AccountSid": {sub.SID}, "Category": {"sms"}, "Day": {"19/04/2026"}},
		{"AccountSid": {sub.SID}, "Category": {"sms"}, "Day": {"2026-04-19"}, "Price": {"-1"}},
		{"AccountSid": {sub.SID}, "Category": {"sms"}, "Day": {"2999-01-01"}},
	} {
		wantError(t, e.control(http.MethodPost, "/sim/history", f), 400, 70002)
	}
	wantStatus(t, e.control(http.MethodPost, "/sim/history", url.Values{"AccountSid": {"AC" + "0123456789abcdef0123456789abcde0"}, "Category": {"sms"}, "Day": {"2026-04-19"}}), 404)
}
