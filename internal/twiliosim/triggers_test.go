package twiliosim

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	openapi "github.com/twilio/twilio-go/rest/api/v2010"
)

func TestTriggerCRUDWithTwilioGo(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	api := e.parentAPI()

	cp := &openapi.CreateUsageTriggerParams{}
	cp.SetPathAccountSid(sub.SID)
	cp.SetCallbackUrl("https://breaker.example.com/twilio/usage-triggers/sms-spend")
	cp.SetTriggerValue("1000")
	cp.SetUsageCategory("totalprice")
	cp.SetTriggerBy("price")
	cp.SetRecurring("daily")
	cp.SetFriendlyName("usagebreaker:prod:sms-spend")
	tr, err := api.CreateUsageTrigger(cp)
	if err != nil {
		t.Fatal(err)
	}
	if !sidRE["UT"].MatchString(*tr.Sid) || *tr.AccountSid != sub.SID || *tr.TriggerValue != "1000.000000" ||
		*tr.CurrentValue != "0" || tr.DateFired != nil || *tr.CallbackMethod != "POST" || *tr.Recurring != "daily" ||
		*tr.TriggerBy != "price" || *tr.UsageCategory != "totalprice" || *tr.ApiVersion != "2010-04-01" ||
		*tr.DateCreated != "Tue, 21 Apr 2026 09:14:35 +0000" ||
		*tr.UsageRecordUri != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records/Today.json?Category=totalprice" ||
		*tr.Uri != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+*tr.Sid+".json" {
		t.Fatalf("created trigger: %s", dump(tr))
	}

	// A second, non-recurring trigger and a monthly count trigger.
	nr := e.createTrigger(sub.SID, triggerForm("https://x.example/cb", "sms", "count", "", "500"))
	if nr["recurring"] != nil || nr["trigger_by"] != "count" ||
		nr["usage_record_uri"] != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records.json?Category=sms" ||
		nr["friendly_name"] != "Trigger for sms at count of 500" {
		t.Fatalf("non-recurring trigger: %v", nr)
	}
	mo := e.createTrigger(sub.SID, triggerForm("https://x.example/cb", "sms", "", "monthly", "7.5"))
	if mo["trigger_by"] != "usage" || mo["trigger_value"] != "7.500000" ||
		mo["usage_record_uri"] != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records/ThisMonth.json?Category=sms" {
		t.Fatalf("monthly trigger: %v", mo)
	}
	yr := e.createTrigger(sub.SID, triggerForm("https://x.example/cb", "calls", "", "yearly", "1"))
	if yr["usage_record_uri"] != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records/Yearly.json?Category=calls" {
		t.Fatalf("yearly trigger: %v", yr)
	}

	lp := &openapi.ListUsageTriggerParams{}
	lp.SetPathAccountSid(sub.SID)
	all, err := api.ListUsageTrigger(lp)
	if err != nil || len(all) != 4 || *all[0].Sid != *tr.Sid {
		t.Fatalf("list: %d triggers, %v", len(all), err)
	}
	for _, c := range []struct {
		recurring, by, category string
		want                    int
	}{{"daily", "", "", 1}, {"alltime", "", "", 1}, {"", "count", "", 1}, {"", "", "sms", 2}, {"monthly", "usage", "sms", 1}, {"yearly", "", "sms", 0}} {
		lp := &openapi.ListUsageTriggerParams{}
		lp.SetPathAccountSid(sub.SID)
		if c.recurring != "" {
			lp.SetRecurring(c.recurring)
		}
		if c.by != "" {
			lp.SetTriggerBy(c.by)
		}
		if c.category != "" {
			lp.SetUsageCategory(c.category)
		}
		got, err := api.ListUsageTrigger(lp)
		if err != nil || len(got) != c.want {
			t.Errorf("filter %+v: %d triggers, %v", c, len(got), err)
		}
	}

	fp := &openapi.FetchUsageTriggerParams{}
	fp.SetPathAccountSid(sub.SID)
	got, err := api.FetchUsageTrigger(*tr.Sid, fp)
	if err != nil || !reflect.DeepEqual(got, tr) {
		t.Fatalf("fetch: %v %s", err, dump(got))
	}

	// Update changes only CallbackUrl, CallbackMethod and FriendlyName; the rest is ignored.
	e.sim.Advance(time.Hour)
	up := e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+*tr.Sid+".json", url.Values{
		"CallbackUrl": {"https://new.example/cb"}, "CallbackMethod": {"GET"}, "FriendlyName": {"renamed"},
		"TriggerValue": {"1"}, "UsageCategory": {"sms"}, "Recurring": {"monthly"}, "TriggerBy": {"count"}})
	wantStatus(t, up, http.StatusOK)
	m := up.json(t)
	if m["callback_url"] != "https://new.example/cb" || m["callback_method"] != "GET" || m["friendly_name"] != "renamed" ||
		m["trigger_value"] != "1000.000000" || m["usage_category"] != "totalprice" || m["recurring"] != "daily" ||
		m["trigger_by"] != "price" || m["date_updated"] != "Tue, 21 Apr 2026 10:14:35 +0000" || m["date_created"] != *tr.DateCreated {
		t.Fatalf("updated trigger: %v", m)
	}

	dp := &openapi.DeleteUsageTriggerParams{}
	dp.SetPathAccountSid(sub.SID)
	if err := api.DeleteUsageTrigger(*tr.Sid, dp); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+*tr.Sid+".json", nil), http.StatusNotFound, 20404)
	wantError(t, e.asParent(http.MethodDelete, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+*tr.Sid+".json", nil), http.StatusNotFound, 20404)
	// A trigger is reachable only under its own account.
	other := e.sim.CreateSubaccount("other")
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+other.SID+"/Usage/Triggers/"+nr["sid"].(string)+".json", nil), http.StatusNotFound, 20404)

	// Parameter errors.
	base := "/2010-04-01/Accounts/" + sub.SID + "/Usage/Triggers.json"
	for _, f := range []url.Values{
		{"TriggerValue": {"1"}, "UsageCategory": {"sms"}},
		{"CallbackUrl": {"https://x/"}, "UsageCategory": {"sms"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"abc"}, "UsageCategory": {"sms"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"-1"}, "UsageCategory": {"sms"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}, "UsageCategory": {"sms"}, "Recurring": {"hourly"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}, "UsageCategory": {"sms"}, "TriggerBy": {"minutes"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}, "UsageCategory": {"sms"}, "CallbackMethod": {"PUT"}},
		{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}, "UsageCategory": {"sms"}, "FriendlyName": {strings.Repeat("x", 65)}},
	} {
		wantError(t, e.asParent(http.MethodPost, base, f), http.StatusBadRequest, 70002)
	}
	wantError(t, e.asParent(http.MethodPost, base, url.Values{"CallbackUrl": {"not a url"}, "TriggerValue": {"1"}, "UsageCategory": {"sms"}}),
		http.StatusBadRequest, 21502)
	if n := len(e.sim.Triggers(sub.SID)); n != 3 {
		t.Fatalf("%d triggers left, want 3", n)
	}
}

func dump(v any) string { return fmt.Sprintf("%+v", deref(v)) }

func deref(v any) any {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return v
	}
	out := map[string]any{}
	for i := range rv.NumField() {
		f := rv.Field(i)
		if f.Kind() == reflect.Pointer && !f.IsNil() {
			out[rv.Type().Field(i).Name] = f.Elem().Interface()
		} else {
			out[rv.Type().Field(i).Name] = f.Interface()
		}
	}
	return out
}

func TestTriggerPagingTokensSurviveDeletes(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	var sids []string
	for i := range 25 {
		m := e.createTrigger(sub.SID, triggerForm("https://x.example/cb", "sms", "", "", fmt.Sprint(100+i)))
		sids = append(sids, m["sid"].(string))
	}
	get := func(uri string) (list []string, next *string) {
		a := e.asParent(http.MethodGet, uri, nil)
		wantStatus(t, a, http.StatusOK)
		var p struct {
			UsageTriggers []struct{ Sid string } `json:"usage_triggers"`
			Next          *string                `json:"next_page_uri"`
		}
		if err := jsonUnmarshal(a.body, &p); err != nil {
			t.Fatal(err)
		}
		for _, x := range p.UsageTriggers {
			list = append(list, x.Sid)
		}
		return list, p.Next
	}
	first, next := get("/2010-04-01/Accounts/" + sub.SID + "/Usage/Triggers.json?PageSize=10&UsageCategory=sms")
	if len(first) != 10 || next == nil || !strings.Contains(*next, "UsageCategory=sms") {
		t.Fatalf("first page %d, next %v", len(first), next)
	}
	// Delete one already seen and the last one seen (the token's SID).
	for _, sid := range []string{first[2], first[9]} {
		wantStatus(t, e.asParent(http.MethodDelete, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+sid+".json", nil), http.StatusNoContent)
	}
	seen := append([]string{}, first...)
	for next != nil {
		var page []string
		page, next = get(*next)
		seen = append(seen, page...)
	}
	if !reflect.DeepEqual(seen, sids) {
		t.Fatalf("paging across deletes saw %d triggers, want all %d in order", len(seen), len(sids))
	}
}

func TestTriggerLimitIs1000PerAccount(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	other := e.sim.CreateSubaccount("other")
	path := "/2010-04-01/Accounts/" + sub.SID + "/Usage/Triggers.json"
	form := triggerForm("https://x.example/cb", "sms", "", "", "1000").Encode()
	post := func(path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.SetBasicAuth(e.parent.SID, e.parent.AuthToken)
		w := httptest.NewRecorder()
		e.sim.ServeHTTP(w, r)
		return w
	}
	for i := range MaxTriggersPerAccount {
		if w := post(path); w.Code != http.StatusCreated {
			t.Fatalf("trigger %d: %d %s", i, w.Code, w.Body)
		}
	}
	w := post(path)
	wantError(t, answer{status: w.Code, header: w.Header(), body: w.Body.Bytes()}, http.StatusBadRequest, 59200)
	if !strings.Contains(w.Body.String(), "1000") {
		t.Errorf("limit error does not say the limit: %s", w.Body)
	}
	if w := post("/2010-04-01/Accounts/" + other.SID + "/Usage/Triggers.json"); w.Code != http.StatusCreated {
		t.Fatalf("the limit is per account, yet another account got %d", w.Code)
	}
	// Deleting one makes room again.
	sid := e.sim.Triggers(sub.SID)[0].SID
	wantStatus(t, e.asParent(http.MethodDelete, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+sid+".json", nil), http.StatusNoContent)
	if w := post(path); w.Code != http.StatusCreated {
		t.Fatalf("after a delete: %d %s", w.Code, w.Body)
	}
}

func TestTriggerValueOffsets(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	e.usage(sub.SID, "sms", "0.75")
	e.usage(sub.SID, "sms", "0.5")
	// +N is relative to the watched value of the trigger's own field and period.
	cases := []struct{ by, recurring, value, want string }{
		{"price", "daily", "+10", "11.250000"},
		{"count", "", "+3", "5.000000"},
		{"usage", "monthly", "+0.5", "2.500000"},
		{"price", "yearly", "10", "10.000000"},
	}
	for _, c := range cases {
		m := e.createTrigger(sub.SID, triggerForm(rc.srv.URL, "sms", c.by, c.recurring, c.value))
		if m["trigger_value"] != c.want {
			t.Errorf("%+v: trigger_value %v", c, m["trigger_value"])
		}
	}
	// The raw form must carry %2B: an unencoded + decodes as a space, which is rejected.
	req := "CallbackUrl=https%3A%2F%2Fx.example%2F&UsageCategory=sms&TriggerValue=+5"
	r := httptest.NewRequest(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers.json", strings.NewReader(req))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth(e.parent.SID, e.parent.AuthToken)
	w := httptest.NewRecorder()
	e.sim.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest {
		t.Errorf("unencoded + accepted: %d %s", w.Code, w.Body)
	}
	// After a daily rollover a +N created earlier keeps its absolute value.
	e.sim.Advance(24 * time.Hour)
	m := e.createTrigger(sub.SID, triggerForm(rc.srv.URL, "sms", "price", "daily", "+10"))
	if m["trigger_value"] != "10.000000" || m["current_value"] != "0" {
		t.Errorf("after rollover: %v %v", m["trigger_value"], m["current_value"])
	}
}

// wantParams are exactly the parameters Twilio sends with a usage-trigger callback.
var wantParams = []string{"AccountSid", "CurrentValue", "DateFired", "IdempotencyToken", "Recurring",
	"TriggerBy", "TriggerValue", "UsageCategory", "UsageRecordUri", "UsageTriggerSid"}

func keys(v url.Values) []string {
	var out []string
	for k := range v {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestTriggerFiresOncePerPeriodAndAgainAfterRollover(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	tr := e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/twilio/usage-triggers/sms-spend", "totalprice", "price", "daily", "50"))
	sid := tr["sid"].(string)

	if f, _ := e.usage(sub.SID, "sms", "30"); len(f) != 0 {
		t.Fatalf("fired below the threshold: %v", f)
	}
	f, d := e.usage(sub.SID, "sms", "20.12")
	if len(f) != 1 || len(d) != 1 || d[0].Status != 200 || d[0].Attempt != 1 {
		t.Fatalf("firings %v deliveries %v", f, d)
	}
	if more, _ := e.usage(sub.SID, "sms", "100"); len(more) != 0 {
		t.Fatalf("fired twice in one period")
	}
	got := rc.requests()
	if len(got) != 1 {
		t.Fatalf("%d callbacks", len(got))
	}
	r := got[0]
	if r.method != http.MethodPost || r.header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		t.Fatalf("callback %s %s", r.method, r.header.Get("Content-Type"))
	}
	if k := keys(r.form); !reflect.DeepEqual(k, wantParams) {
		t.Fatalf("callback params %v, want %v", k, wantParams)
	}
	want := map[string]string{
		"AccountSid": sub.SID, "UsageTriggerSid": sid, "DateFired": "Tue, 21 Apr 2026 09:14:35 +0000",
		"Recurring": "daily", "UsageCategory": "totalprice", "TriggerBy": "price", "TriggerValue": "50",
		"CurrentValue": "50.12", "UsageRecordUri": "/2010-04-01/Accounts/" + sub.SID + "/Usage/Records/Today.json?Category=totalprice",
		"IdempotencyToken": sub.SID + "-FIRES-" + sid + "-2026-04-21",
	}
	for k, v := range want {
		if r.form.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, r.form.Get(k), v)
		}
	}
	if !validSignature(sub.AuthToken, r) {
		t.Fatal("twilio-go's validator rejects the signature")
	}
	if validSignature(e.parent.AuthToken, r) {
		t.Fatal("signed with the parent's token; Twilio signs with the subaccount's")
	}
	if d[0].Signature != r.header.Get("X-Twilio-Signature") || d[0].URL != rc.srv.URL+"/twilio/usage-triggers/sms-spend" {
		t.Fatalf("delivery record %+v", d[0])
	}
	fetched := e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+sid+".json", nil).json(t)
	if fetched["date_fired"] != "Tue, 21 Apr 2026 09:14:35 +0000" || fetched["current_value"] != "150.12" {
		t.Fatalf("after firing: date_fired %v current_value %v", fetched["date_fired"], fetched["current_value"])
	}

	// The next GMT day is a new period: usage starts at 0 and the trigger may fire again.
	e.sim.Advance(15 * time.Hour) // 2026-04-22 00:14:35
	if f, _ := e.usage(sub.SID, "sms", "49.99"); len(f) != 0 {
		t.Fatal("fired in the new period below the threshold")
	}
	f, d = e.usage(sub.SID, "sms", "0.01")
	if len(f) != 1 || d[0].IdempotencyToken != sub.SID+"-FIRES-"+sid+"-2026-04-22" || f[0].CurrentValue.String() != "50" {
		t.Fatalf("second period firing %+v %+v", f, d)
	}
	got = rc.requests()
	if len(got) != 2 || got[1].form.Get("DateFired") != "Wed, 22 Apr 2026 00:14:35 +0000" || !validSignature(sub.AuthToken, got[1]) {
		t.Fatalf("second callback %+v", got[len(got)-1].form)
	}
}

func TestTriggerFiringRules(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	e.usage(sub.SID, "calls", "5")

	// Created with its threshold already reached: fires, as at Twilio's next evaluation.
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/now", "totalprice", "price", "monthly", "4"))
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("%d callbacks for a trigger created above its threshold", n)
	}
	// A non-recurring trigger fires at most once, ever.
	nr := e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/once", "calls", "count", "", "2"))
	e.usage(sub.SID, "calls", "1")
	e.sim.Advance(400 * 24 * time.Hour)
	e.usage(sub.SID, "calls", "1")
	e.usage(sub.SID, "calls", "1")
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var once []received
	for _, r := range rc.requests() {
		if strings.HasSuffix(r.url, "/once") {
			once = append(once, r)
		}
	}
	if len(once) != 1 || once[0].form.Get("Recurring") != "" || once[0].form.Get("CurrentValue") != "2" ||
		once[0].form.Get("UsageTriggerSid") != nr["sid"] {
		t.Fatalf("non-recurring callbacks: %d %v", len(once), once)
	}
	// Updating a trigger re-evaluates it (it does not re-fire in a period it already fired in).
	e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+nr["sid"].(string)+".json",
		url.Values{"FriendlyName": {"x"}})
	// The monthly trigger fires again after the month rolled over, on the next usage.
	e.usage(sub.SID, "calls", "4")
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(rc.requests()); n != 3 {
		t.Fatalf("%d callbacks in all, want 3", n)
	}
	// Usage of one subaccount does not fire another's triggers.
	other := e.sim.CreateSubaccount("other")
	e.createTrigger(other.SID, triggerForm(rc.srv.URL+"/other", "totalprice", "price", "daily", "1"))
	e.usage(sub.SID, "calls", "100")
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	for _, r := range rc.requests() {
		if strings.HasSuffix(r.url, "/other") {
			t.Fatal("another account's usage fired the trigger")
		}
	}
}

func TestCallbackRetriesThreeTimesAfter5xx(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")

	rc := newReceiver(t, 500, 503, 502)
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/a", "sms", "count", "daily", "1"))
	_, d := e.usage(sub.SID, "sms", "1")
	if len(d) != 4 || d[3].Status != 200 {
		t.Fatalf("deliveries %+v", d)
	}
	got := rc.requests()
	for i, r := range got {
		if d[i].Attempt != i+1 || d[i].Status != []int{500, 503, 502, 200}[i] ||
			r.form.Get("IdempotencyToken") != got[0].form.Get("IdempotencyToken") ||
			r.header.Get("X-Twilio-Signature") != got[0].header.Get("X-Twilio-Signature") || !validSignature(sub.AuthToken, r) {
			t.Fatalf("attempt %d: %+v", i+1, d[i])
		}
	}

	// Never more than the first try and three retries.
	always := newReceiver(t, 500, 500, 500, 500, 500, 500)
	e.createTrigger(sub.SID, triggerForm(always.srv.URL+"/b", "sms", "count", "daily", "2"))
	if _, d := e.usage(sub.SID, "sms", "1"); len(d) != 4 || len(always.requests()) != 4 {
		t.Fatalf("%d attempts against a failing receiver", len(d))
	}
	// A 4xx is not retried.
	four := newReceiver(t, 403)
	e.createTrigger(sub.SID, triggerForm(four.srv.URL+"/c", "sms", "count", "daily", "3"))
	if _, d := e.usage(sub.SID, "sms", "1"); len(d) != 1 || d[0].Status != 403 {
		t.Fatalf("4xx deliveries %+v", d)
	}
	// A transport error is retried.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	e.createTrigger(sub.SID, triggerForm(deadURL+"/d", "sms", "count", "daily", "4"))
	if _, d := e.usage(sub.SID, "sms", "1"); len(d) != 4 || d[0].Status != 0 || d[0].Error == "" {
		t.Fatalf("transport-error deliveries %+v", d)
	}
	if n := len(e.sim.State().Deliveries); n != 4+4+1+4 {
		t.Fatalf("state has %d deliveries", n)
	}
}

func TestCallbackBasicAuthFromUserinfoAndGET(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	u, _ := url.Parse(rc.srv.URL)
	withCreds := "http://twilio:s3cr%2Ft@" + u.Host + "/twilio/usage-triggers/r1?x=1#rc=3"
	e.createTrigger(sub.SID, triggerForm(withCreds, "sms", "count", "daily", "1"))
	_, d := e.usage(sub.SID, "sms", "1")
	r := rc.requests()[0]
	if !r.basicAuth || r.user != "twilio" || r.pass != "s3cr/t" {
		t.Fatalf("basic auth %v %q %q", r.basicAuth, r.user, r.pass)
	}
	plain := "http://" + u.Host + "/twilio/usage-triggers/r1?x=1"
	if r.url != plain || d[0].URL != plain || d[0].BasicAuthUser != "twilio" || strings.Contains(fmt.Sprint(e.sim.Deliveries()), "s3cr") {
		t.Fatalf("url %q delivery %+v", r.url, d[0])
	}
	if !validSignature(sub.AuthToken, r) {
		t.Fatal("signature over the URL without userinfo does not validate")
	}

	// GET: the parameters go in the query and the signature covers the full URL.
	e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/get?a=b", "mms", "count", "", "1"))
	tr := e.sim.Triggers(sub.SID)
	upd := e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Triggers/"+tr[1].SID+".json", url.Values{"CallbackMethod": {"GET"}})
	wantStatus(t, upd, http.StatusOK)
	_, d = e.usage(sub.SID, "mms", "1")
	g := rc.requests()[1]
	if g.method != http.MethodGet || len(g.body) != 0 || g.form.Get("a") != "b" || g.form.Get("UsageTriggerSid") != tr[1].SID {
		t.Fatalf("GET callback %s %q %v", g.method, g.body, g.form)
	}
	if !validSignature(sub.AuthToken, g) || d[0].URL != g.url {
		t.Fatalf("GET signature or recorded URL wrong: %q vs %q", d[0].URL, g.url)
	}
}

func TestSuspendedAccountUsageIsRefused(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	api := e.parentAPI()
	p := &openapi.UpdateAccountParams{}
	p.SetStatus("suspended")
	if _, err := api.UpdateAccount(sub.SID, p); err != nil {
		t.Fatal(err)
	}
	a := e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {sub.SID}, "UsageCategory": {"sms"}, "Price": {"1"}})
	wantError(t, a, http.StatusConflict, 10001)
	if _, err := e.sim.AddUsage(UsageInput{AccountSID: sub.SID, Category: "sms"}); err == nil {
		t.Fatal("AddUsage accepted a suspended account's usage")
	}
	wantError(t, e.control(http.MethodPost, "/sim/calls", url.Values{"AccountSid": {sub.SID}}), http.StatusConflict, 10001)
	p.SetStatus("active")
	if _, err := api.UpdateAccount(sub.SID, p); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, e.control(http.MethodPost, "/sim/usage", url.Values{"AccountSid": {sub.SID}, "UsageCategory": {"sms"}, "Price": {"1"}}), http.StatusOK)
}
