package twiliosim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
)

// The documented example (/sim/usage with Count and Price, docs/SIMULATOR.md) must
// trip a rule left on the default trigger_by, usage: without Usage, a count
// category's usage is its count.
func TestSimUsageDefaultsToCount(t *testing.T) {
	e := newEnv(t)
	rc := newReceiver(t)
	acct := e.control(http.MethodPost, "/sim/accounts", url.Values{"FriendlyName": {"tenant-a"}}).json(t)
	sid := acct["sid"].(string)
	form := triggerForm(rc.srv.URL+"/cb", "sms", "usage", "daily", "100")
	e.createTrigger(sid, form)
	// The documented command, as written in docs/SIMULATOR.md.
	a := e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {sid}, "UsageCategory": {"sms"},
		"Count": {"100"}, "Price": {"7.90"}, "Wait": {"true"}})
	wantStatus(t, a, http.StatusOK)
	var ur struct {
		Firings []Firing `json:"firings"`
		Added   Usage    `json:"added"`
	}
	if err := json.Unmarshal(a.body, &ur); err != nil {
		t.Fatal(err)
	}
	if len(ur.Firings) != 1 || ur.Added.Usage.String() != "100" {
		t.Fatalf("a usage trigger at 100 after Count=100: %s", a.body)
	}
	// An explicit Usage still wins.
	a = e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {sid}, "UsageCategory": {"calls"},
		"Count": {"2"}, "Usage": {"7"}})
	if err := json.Unmarshal(a.body, &ur); err != nil || ur.Added.Usage.String() != "7" {
		t.Fatalf("explicit Usage: %s", a.body)
	}
}
