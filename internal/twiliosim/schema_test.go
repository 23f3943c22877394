package twiliosim

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	openapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"
)

// TestOfficialSchema drives every operation the daemon uses through twilio-go
// and checks each request and response against Twilio's own OpenAPI
// description (schematest.Middleware reports violations with t.Errorf).
func TestOfficialSchema(t *testing.T) {
	if p, ok := schematest.SpecPath(); !ok {
		t.Skipf("Twilio's OpenAPI description is not available here (looked for %q; set %s): skipping the schema check", p, schematest.EnvSpecPath)
	}
	e := newEnvWith(t, Options{}, func(h http.Handler) http.Handler { return schematest.Middleware(t, h) })
	rc := newReceiver(t)
	var subs []Account
	for i := range 5 {
		subs = append(subs, e.sim.CreateSubaccount("tenant-"+itoa(i)))
	}
	sub := subs[0]
	api := e.parentAPI()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Accounts: list (several pages, filters), fetch, update.
	lp := &openapi.ListAccountParams{}
	lp.SetPageSize(2)
	accts, err := api.ListAccount(lp)
	must(err)
	if len(accts) != 6 {
		t.Fatalf("%d accounts", len(accts))
	}
	lp = &openapi.ListAccountParams{}
	lp.SetFriendlyName("tenant-1")
	lp.SetStatus("active")
	_, err = api.ListAccount(lp)
	must(err)
	_, err = api.FetchAccount(sub.SID)
	must(err)
	up := &openapi.UpdateAccountParams{}
	up.SetStatus("suspended")
	_, err = api.UpdateAccount(subs[1].SID, up)
	must(err)
	up = &openapi.UpdateAccountParams{}
	up.SetStatus("active")
	up.SetFriendlyName("renamed")
	_, err = api.UpdateAccount(subs[1].SID, up)
	must(err)

	// Triggers: create (recurring, non-recurring, offset), list, fetch, update, delete.
	e.usage(sub.SID, "sms", "3")
	cp := &openapi.CreateUsageTriggerParams{}
	cp.SetPathAccountSid(sub.SID)
	cp.SetCallbackUrl(rc.srv.URL + "/twilio/usage-triggers/sms-spend")
	cp.SetCallbackMethod("POST")
	cp.SetTriggerValue("50")
	cp.SetUsageCategory("totalprice")
	cp.SetTriggerBy("price")
	cp.SetRecurring("daily")
	cp.SetFriendlyName("usagebreaker:prod:sms-spend")
	tr, err := api.CreateUsageTrigger(cp)
	must(err)
	cp2 := &openapi.CreateUsageTriggerParams{}
	cp2.SetPathAccountSid(sub.SID)
	cp2.SetCallbackUrl(rc.srv.URL + "/nr")
	cp2.SetTriggerValue("+2")
	cp2.SetUsageCategory("sms")
	_, err = api.CreateUsageTrigger(cp2) // non-recurring: "recurring": null
	must(err)
	cp3 := &openapi.CreateUsageTriggerParams{}
	cp3.SetPathAccountSid(sub.SID)
	cp3.SetCallbackUrl(rc.srv.URL + "/all")
	cp3.SetTriggerValue("1")
	cp3.SetUsageCategory("calls")
	cp3.SetRecurring("alltime")
	cp3.SetTriggerBy("count")
	_, err = api.CreateUsageTrigger(cp3)
	must(err)
	e.usage(sub.SID, "sms", "60") // fires two of them: date_fired set
	tl := &openapi.ListUsageTriggerParams{}
	tl.SetPathAccountSid(sub.SID)
	tl.SetPageSize(2)
	trs, err := api.ListUsageTrigger(tl)
	must(err)
	if len(trs) != 3 {
		t.Fatalf("%d triggers", len(trs))
	}
	tl = &openapi.ListUsageTriggerParams{}
	tl.SetPathAccountSid(sub.SID)
	tl.SetRecurring("daily")
	tl.SetTriggerBy("price")
	tl.SetUsageCategory("totalprice")
	_, err = api.ListUsageTrigger(tl)
	must(err)
	fp := &openapi.FetchUsageTriggerParams{}
	fp.SetPathAccountSid(sub.SID)
	got, err := api.FetchUsageTrigger(*tr.Sid, fp)
	must(err)
	if got.DateFired == nil {
		t.Fatal("trigger did not fire")
	}
	utp := &openapi.UpdateUsageTriggerParams{}
	utp.SetPathAccountSid(sub.SID)
	utp.SetCallbackUrl(rc.srv.URL + "/moved")
	utp.SetCallbackMethod("GET")
	utp.SetFriendlyName("moved")
	_, err = api.UpdateUsageTrigger(*tr.Sid, utp)
	must(err)
	dp := &openapi.DeleteUsageTriggerParams{}
	dp.SetPathAccountSid(sub.SID)
	must(api.DeleteUsageTrigger(*tr.Sid, dp))

	// Usage records: Today, ThisMonth, Yearly (this year), AllTime, plain.
	today := &openapi.ListUsageRecordTodayParams{}
	today.SetPathAccountSid(sub.SID)
	today.SetCategory("totalprice")
	_, err = api.ListUsageRecordToday(today)
	must(err)
	month := &openapi.ListUsageRecordThisMonthParams{}
	month.SetPathAccountSid(sub.SID)
	month.SetCategory("sms")
	month.SetIncludeSubaccounts(false)
	_, err = api.ListUsageRecordThisMonth(month)
	must(err)
	year := &openapi.ListUsageRecordYearlyParams{}
	year.SetPathAccountSid(sub.SID)
	year.SetCategory("totalprice")
	year.SetStartDate("2026-01-01")
	_, err = api.ListUsageRecordYearly(year)
	must(err)
	all := &openapi.ListUsageRecordAllTimeParams{}
	all.SetPathAccountSid(sub.SID)
	_, err = api.ListUsageRecordAllTime(all) // every category
	must(err)
	plain := &openapi.ListUsageRecordParams{}
	plain.SetPathAccountSid(e.parent.SID)
	plain.SetCategory("sms")
	_, err = api.ListUsageRecord(plain)
	must(err)

	// Messages and calls.
	mp := &openapi.CreateMessageParams{}
	mp.SetTo("+15558675310")
	mp.SetFrom("+15005550006")
	mp.SetBody("tenant suspended")
	_, err = api.CreateMessage(mp)
	must(err)
	mp2 := &openapi.CreateMessageParams{}
	mp2.SetTo("+15558675310")
	mp2.SetMessagingServiceSid("MG00000000000000000000000000000001")
	mp2.SetBody("tenant suspended")
	_, err = api.CreateMessage(mp2)
	must(err)
	c, err := e.sim.StartCall(sub.SID)
	must(err)
	cl := &openapi.ListCallParams{}
	cl.SetPathAccountSid(sub.SID)
	cl.SetStatus("in-progress")
	calls, err := api.ListCall(cl)
	must(err)
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	uc := &openapi.UpdateCallParams{}
	uc.SetPathAccountSid(sub.SID)
	uc.SetStatus("completed")
	_, err = api.UpdateCall(c.SID, uc)
	must(err)
	_, err = api.ListCall(cl)
	must(err)

	// Error answers are Twilio error bodies.
	_, err = e.api(e.parent.SID, "wrong").FetchAccount(sub.SID)
	if err == nil {
		t.Fatal("wrong credentials accepted")
	}
	if err := e.sim.WaitIdle(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestSchemaCheckerCatchesViolations proves the checker is not vacuous.
func TestSchemaCheckerCatchesViolations(t *testing.T) {
	p, ok := schematest.SpecPath()
	if !ok {
		t.Skipf("Twilio's OpenAPI description is not available here (looked for %q; set %s): skipping", p, schematest.EnvSpecPath)
	}
	v, err := schematest.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	get := func(target string) *http.Request { return httptest.NewRequest(http.MethodGet, target, nil) }
	json := http.Header{"Content-Type": {"application/json"}}
	acct := "/2010-04-01/Accounts/" + testParentSID + ".json"
	good := `{"sid":"` + testParentSID + `","status":"active","date_created":"Tue, 21 Apr 2026 09:14:35 +0000"}`
	cases := []struct {
		name       string
		req        *http.Request
		body       string
		status     int
		resp       string
		wantErrors bool
	}{
		{"good fetch", get(acct), "", 200, good, false},
		{"bad status enum", get(acct), "", 200, strings.Replace(good, `"active"`, `"paused"`, 1), true},
		{"bad sid", get(acct), "", 200, strings.Replace(good, testParentSID, "AC123", 1), true},
		{"bad rfc 2822 date", get(acct), "", 200, strings.Replace(good, "Tue, 21 Apr 2026 09:14:35 +0000", "2026-04-21T09:14:35Z", 1), true},
		{"undeclared status", get(acct), "", 201, good, true},
		{"page size over 1000", get("/2010-04-01/Accounts.json?PageSize=5000"), "", 200, `{"accounts":[]}`, true},
		{"unknown path", get("/2010-04-01/Nope.json"), "", 200, `{}`, true},
		{"error body lacks code", get(acct), "", 401, `{"message":"x"}`, true},
		{"error body", get(acct), "", 401, `{"code":20003,"message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401}`, false},
		{"price as string", get("/2010-04-01/Accounts/" + testParentSID + "/Usage/Records/Today.json"), "", 200,
			`{"usage_records":[{"price":"1.5"}]}`, true},
		{"price as number", get("/2010-04-01/Accounts/" + testParentSID + "/Usage/Records/Today.json"), "", 200,
			`{"usage_records":[{"price":1.5,"usage":"1.5","count":"0"}]}`, false},
	}
	for _, c := range cases {
		if c.body != "" {
			c.req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		errs := v.Check(c.req, []byte(c.body), c.status, json, []byte(c.resp))
		if (len(errs) > 0) != c.wantErrors {
			t.Errorf("%s: errors %v, want errors: %v", c.name, errs, c.wantErrors)
		}
	}
	// A trigger create without a required field violates the request schema.
	req := httptest.NewRequest(http.MethodPost, "/2010-04-01/Accounts/"+testParentSID+"/Usage/Triggers.json", nil)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	body := url.Values{"CallbackUrl": {"https://x/"}, "TriggerValue": {"1"}}.Encode()
	if errs := v.Check(req, []byte(body), 400, json, []byte(`{"code":70002,"message":"m","more_info":"u","status":400}`)); len(errs) == 0 {
		t.Error("a create without UsageCategory passed the request schema")
	}
}

// TestSchematestIsTestOnly keeps schematest out of non-test code.
func TestSchematestIsTestOnly(t *testing.T) {
	root := "../.."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			strings.Contains(filepath.ToSlash(path), "internal/twiliosim/schematest/") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), `"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"`) {
			t.Errorf("%s imports schematest outside a test", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
