package twiliosim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestSignatureVectors(t *testing.T) {
	// The doc's vector (SEC-DOC) and DOMAIN.md's usage-trigger-shaped vector.
	doc := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675310"}, "Digits": {"1234"},
		"From": {"+14158675310"}, "To": {"+18005551212"}}
	if got := SignatureFor("12345", "https://example.com/myapp.php?foo=1&bar=2", doc); got != "L/OH5YylLD5NRKLltdqwSvS0BnU=" {
		t.Errorf("doc vector: %s", got)
	}
	ut := url.Values{
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
	if got := SignatureFor("12345", "https://breaker.example.com/twilio/usage-trigger", ut); got != "bsA3Jp6iLDUXBRaSVyOh+gjFtN0=" {
		t.Errorf("usage-trigger vector: %s", got)
	}
}

func TestSimEndpointsAndState(t *testing.T) {
	e := newEnv(t)
	rc := newReceiver(t)

	a := e.control(http.MethodPost, "/sim/accounts", url.Values{"FriendlyName": {"acme"}})
	wantStatus(t, a, http.StatusCreated)
	acct := a.json(t)
	sid, token := acct["sid"].(string), acct["auth_token"].(string)
	if !ValidAccountSID(sid) || !ValidAuthToken(token) || acct["friendly_name"] != "acme" || acct["status"] != "active" {
		t.Fatalf("created account %v", acct)
	}
	// The new subaccount's own credentials work with twilio-go.
	if got, err := e.api(sid, token).FetchAccount(sid); err != nil || *got.Sid != sid {
		t.Fatalf("own credentials: %v", err)
	}

	tr := e.createTrigger(sid, triggerForm(rc.srv.URL+"/cb", "totalprice", "price", "daily", "10"))
	a = e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {sid}, "UsageCategory": {"calls"},
		"Count": {"3"}, "Usage": {"12.5"}, "Price": {"10.015"}, "Wait": {"true"}})
	wantStatus(t, a, http.StatusOK)
	var ur struct {
		Firings    []Firing   `json:"firings"`
		Deliveries []Delivery `json:"deliveries"`
		Added      Usage      `json:"added"`
	}
	if err := json.Unmarshal(a.body, &ur); err != nil {
		t.Fatal(err)
	}
	if len(ur.Firings) != 1 || ur.Firings[0].TriggerSID != tr["sid"] || len(ur.Deliveries) != 1 || ur.Deliveries[0].Status != 200 ||
		ur.Added.Price.String() != "10.015" {
		t.Fatalf("/sim/usage answer %s", a.body)
	}
	if len(rc.requests()) != 1 {
		t.Fatal("Wait=true answered before the delivery")
	}
	for _, f := range []url.Values{
		{"UsageCategory": {"sms"}},
		{"AccountSid": {sid}},
		{"AccountSid": {sid}, "UsageCategory": {"sms"}, "Price": {"-1"}},
		{"AccountSid": {sid}, "UsageCategory": {"sms"}, "Count": {"1e3"}},
		{"AccountSid": {sid}, "UsageCategory": {"sms"}, "Wait": {"maybe"}},
	} {
		wantStatus(t, e.control(http.MethodPost, "/sim/usage", f), http.StatusBadRequest)
	}
	wantStatus(t, e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {"AC0000000000000000000000000000dead"}, "UsageCategory": {"sms"}}), http.StatusNotFound)

	c := e.control(http.MethodPost, "/sim/clock", url.Values{"Advance": {"36h"}})
	wantStatus(t, c, http.StatusOK)
	if now := c.json(t)["now"]; now != "2026-04-22T21:14:35Z" {
		t.Fatalf("clock now %v", now)
	}
	wantStatus(t, e.control(http.MethodPost, "/sim/clock", url.Values{"Advance": {"soon"}}), http.StatusBadRequest)
	wantStatus(t, e.control(http.MethodPost, "/sim/calls", url.Values{"AccountSid": {sid}}), http.StatusCreated)
	wantStatus(t, e.control(http.MethodGet, "/sim/nope", nil), http.StatusNotFound)
	wantStatus(t, e.control(http.MethodPut, "/sim/state", nil), http.StatusMethodNotAllowed)

	s := e.control(http.MethodGet, "/sim/state", nil)
	wantStatus(t, s, http.StatusOK)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(s.body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"now", "parent", "accounts", "messages", "calls", "deliveries", "requests", "faults"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("/sim/state lacks %q", k)
		}
	}
	var st State
	if err := json.Unmarshal(s.body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Accounts) != 1 || st.Parent.SID != e.parent.SID || st.Parent.AuthToken != e.parent.AuthToken {
		t.Fatalf("state accounts %+v", st.Accounts)
	}
	as := st.Accounts[0]
	if as.SID != sid || as.AuthToken != token || len(as.StatusHistory) != 1 || len(as.Triggers) != 1 ||
		as.Triggers[0].DateFired == nil || len(st.Calls) != 1 || len(st.Deliveries) != 1 {
		t.Fatalf("account state %+v", as)
	}
	// Usage per current period: after the clock moved a day on, only monthly/yearly/alltime keep it.
	if as.Usage["daily"]["calls"].Price.String() != "0" || as.Usage["monthly"]["calls"].Count.String() != "3" ||
		as.Usage["alltime"]["totalprice"].Price.String() != "10.015" || as.Usage["yearly"]["calls"].Usage.String() != "12.5" {
		t.Fatalf("usage %+v", as.Usage)
	}
	var acctKeys map[string]json.RawMessage
	var accts []json.RawMessage
	_ = json.Unmarshal(raw["accounts"], &accts)
	_ = json.Unmarshal(accts[0], &acctKeys)
	for _, k := range []string{"sid", "friendly_name", "status", "auth_token", "status_history", "triggers", "usage"} {
		if _, ok := acctKeys[k]; !ok {
			t.Errorf("account state lacks %q", k)
		}
	}
}

func TestRequestCountsByOperation(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	call, _ := e.sim.StartCall(sub.SID)
	acct := "/2010-04-01/Accounts/" + sub.SID
	trig := e.createTrigger(sub.SID, triggerForm("https://x.example/", "sms", "", "", "100"))
	e.createTrigger(sub.SID, triggerForm("https://x.example/", "sms", "", "", "200"))
	tp := acct + "/Usage/Triggers/" + trig["sid"].(string) + ".json"
	steps := []struct{ method, path string }{
		{"GET", "/2010-04-01/Accounts.json"},
		{"POST", "/2010-04-01/Accounts.json"},
		{"GET", acct + ".json"},
		{"GET", acct + ".json"},
		{"POST", acct + ".json"},
		{"GET", acct + "/Usage/Triggers.json"},
		{"GET", tp},
		{"POST", tp},
		{"DELETE", tp},
		{"GET", acct + "/Usage/Records/Today.json"},
		{"GET", acct + "/Usage/Records.json"},
		{"POST", acct + "/Messages.json"},
		{"GET", acct + "/Calls.json"},
		{"POST", acct + "/Calls/" + call.SID + ".json"},
		{"GET", "/2010-04-01/Foo.json"},
		{"PUT", acct + ".json"},
	}
	for _, s := range steps {
		e.asParent(s.method, s.path, nil)
	}
	e.control(http.MethodGet, "/sim/state", nil) // not counted
	want := map[string]int{
		OpAccountsList: 1, OpAccountsCreate: 1, OpAccountsFetch: 2, OpAccountsUpdate: 1,
		OpTriggersCreate: 2, OpTriggersList: 1, OpTriggersFetch: 1, OpTriggersUpdate: 1, OpTriggersDelete: 1,
		OpRecordsRead: 2, OpMessagesCreate: 1, OpCallsList: 1, OpCallsUpdate: 1, OpUnknown: 2,
	}
	if got := e.sim.State().Requests; !reflect.DeepEqual(got, want) {
		t.Fatalf("requests %v\nwant %v", got, want)
	}
	var names []string
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	if len(names) != len(allOps) {
		t.Fatalf("operation names %v", names)
	}
}

func TestCloseStopsDeliveries(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := newBlockingServer(t, arrived, release)
	e.createTrigger(sub.SID, triggerForm(slow+"/cb", "sms", "count", "", "1"))
	f, err := e.sim.AddUsage(UsageInput{AccountSID: sub.SID, Category: "sms", Count: dec("1")})
	if err != nil || len(f) != 1 {
		t.Fatal(f, err)
	}
	<-arrived
	closed := make(chan struct{})
	go func() { e.sim.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop an in-flight delivery")
	}
	close(release)
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// After Close no new deliveries start.
	e.sim.Advance(24 * time.Hour)
	if f, err := e.sim.AddUsage(UsageInput{AccountSID: sub.SID, Category: "sms", Count: dec("5")}); err != nil || len(f) != 0 {
		t.Fatalf("fired after Close: %v %v", f, err)
	}
}

func newBlockingServer(t *testing.T, arrived chan<- struct{}, release <-chan struct{}) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestConcurrentUse(t *testing.T) {
	e := newEnv(t)
	rc := newReceiver(t)
	var subs []Account
	for i := range 8 {
		sub := e.sim.CreateSubaccount(fmt.Sprintf("t%d", i))
		subs = append(subs, sub)
		e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/cb", "totalprice", "price", "daily", "10"))
	}
	var wg sync.WaitGroup
	for i, sub := range subs {
		wg.Add(3)
		go func() { // usage: crosses the threshold once per account
			defer wg.Done()
			for range 20 {
				if _, err := e.sim.AddUsage(UsageInput{AccountSID: sub.SID, Category: "sms", Price: dec("1")}); err != nil {
					t.Error(err)
				}
			}
		}()
		go func() { // API readers and writers
			defer wg.Done()
			api := e.api(sub.SID, sub.AuthToken)
			for range 10 {
				if _, err := api.FetchAccount(sub.SID); err != nil {
					t.Error(err)
				}
				e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers.json", nil)
				e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+".json", url.Values{"FriendlyName": {fmt.Sprintf("t%d", i)}})
			}
		}()
		go func() { // state readers
			defer wg.Done()
			for range 5 {
				_ = e.sim.State()
				e.control(http.MethodGet, "/sim/state", nil)
			}
		}()
	}
	wg.Wait()
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got := rc.requests()
	if len(got) != len(subs) {
		t.Fatalf("%d callbacks, want one per account (%d)", len(got), len(subs))
	}
	for _, r := range got {
		if r.form.Get("CurrentValue") != "10" {
			t.Errorf("fired at %s", r.form.Get("CurrentValue"))
		}
	}
}
