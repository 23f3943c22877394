package twiliosim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	openapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

type recordsPage struct {
	UsageRecords []struct {
		AccountSid string          `json:"account_sid"`
		Category   string          `json:"category"`
		Count      string          `json:"count"`
		Usage      string          `json:"usage"`
		Price      json.RawMessage `json:"price"`
		StartDate  string          `json:"start_date"`
		EndDate    string          `json:"end_date"`
		UsageUnit  string          `json:"usage_unit"`
		AsOf       string          `json:"as_of"`
	} `json:"usage_records"`
	Next *string `json:"next_page_uri"`
}

func (e *env) records(acct, kind string, q url.Values) recordsPage {
	e.t.Helper()
	path := "/2010-04-01/Accounts/" + acct + "/Usage/Records.json"
	if kind != "" {
		path = "/2010-04-01/Accounts/" + acct + "/Usage/Records/" + kind + ".json"
	}
	a := e.asParent(http.MethodGet, path, q)
	wantStatus(e.t, a, http.StatusOK)
	var p recordsPage
	if err := json.Unmarshal(a.body, &p); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func TestUsageRecords(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	other := e.sim.CreateSubaccount("other")
	add := func(acct, cat, count, usage, price string) {
		t.Helper()
		if _, err := e.sim.AddUsage(UsageInput{AccountSID: acct, Category: cat, Count: dec(count), Usage: dec(usage), Price: dec(price)}); err != nil {
			t.Fatal(err)
		}
	}
	add(sub.SID, "sms", "1", "1", "0.1")
	add(sub.SID, "sms", "1", "1", "0.2") // exact decimals: 0.3, not 0.30000000000000004
	add(sub.SID, "calls", "2", "7.5", "2.00001")
	add(other.SID, "sms", "10", "10", "1")
	e.sim.Advance(41 * 24 * time.Hour) // 2026-06-01
	add(sub.SID, "sms", "1", "1", "5")

	one := func(kind string, q url.Values) (count, usage, price, start, end string) {
		t.Helper()
		p := e.records(sub.SID, kind, q)
		if len(p.UsageRecords) != 1 {
			t.Fatalf("%s %v: %d records", kind, q, len(p.UsageRecords))
		}
		r := p.UsageRecords[0]
		return r.Count, r.Usage, string(r.Price), r.StartDate, r.EndDate
	}
	check := func(kind string, q url.Values, want ...string) {
		t.Helper()
		c, u, p, s, en := one(kind, q)
		got := []string{c, u, p, s, en}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s %v: got %v, want %v", kind, q, got, want)
				return
			}
		}
	}
	sms := url.Values{"Category": {"sms"}}
	tp := url.Values{"Category": {"totalprice"}}
	check("Today", sms, "1", "1", "5", "2026-06-01", "2026-06-01")
	check("ThisMonth", sms, "1", "1", "5", "2026-06-01", "2026-06-01")
	check("LastMonth", sms, "0", "0", "0", "2026-05-01", "2026-05-31")
	check("AllTime", sms, "3", "3", "5.3", "2026-04-21", "2026-06-01")
	check("", sms, "3", "3", "5.3")
	check("", url.Values{"Category": {"sms"}, "StartDate": {"2026-04-01"}, "EndDate": {"2026-04-30"}}, "2", "2", "0.3", "2026-04-01", "2026-04-30")
	check("Yearly", url.Values{"Category": {"totalprice"}, "StartDate": {"2026-01-01"}}, "0", "7.30001", "7.30001", "2026-01-01", "2026-06-01")
	check("Today", tp, "0", "5", "5")
	check("Today", url.Values{"Category": {"pfax-pages"}}, "0", "0", "0")

	// Without a category: one record per category with usage, plus totalprice.
	p := e.records(sub.SID, "AllTime", nil)
	var cats []string
	for _, r := range p.UsageRecords {
		cats = append(cats, r.Category)
	}
	if len(cats) != 3 || cats[0] != "calls" || cats[1] != "sms" || cats[2] != "totalprice" {
		t.Fatalf("categories %v", cats)
	}
	// Daily: one record per day; paged by Page.
	daily := e.records(sub.SID, "Daily", url.Values{"Category": {"sms"}, "StartDate": {"2026-04-20"}, "EndDate": {"2026-04-22"}})
	if len(daily.UsageRecords) != 3 || daily.UsageRecords[1].Count != "2" || daily.UsageRecords[0].Count != "0" {
		t.Fatalf("daily %+v", daily.UsageRecords)
	}
	paged := e.records(sub.SID, "Daily", url.Values{"Category": {"sms"}, "StartDate": {"2026-04-01"}, "EndDate": {"2026-04-30"}, "PageSize": {"20"}})
	if len(paged.UsageRecords) != 20 || paged.Next == nil {
		t.Fatalf("daily paging: %d records, next %v", len(paged.UsageRecords), paged.Next)
	}
	a := e.asParent(http.MethodGet, *paged.Next, nil)
	if n := len(a.json(t)["usage_records"].([]any)); n != 10 {
		t.Fatalf("second daily page has %d records", n)
	}
	monthly := e.records(sub.SID, "Monthly", sms)
	if len(monthly.UsageRecords) != 3 || monthly.UsageRecords[0].Usage != "2" || monthly.UsageRecords[2].Usage != "1" {
		t.Fatalf("monthly %+v", monthly.UsageRecords)
	}
	// The parent's records include subaccounts unless IncludeSubaccounts=false.
	pp := e.records(e.parent.SID, "AllTime", sms)
	if pp.UsageRecords[0].Count != "13" || pp.UsageRecords[0].AccountSid != e.parent.SID {
		t.Fatalf("parent aggregate %+v", pp.UsageRecords[0])
	}
	if own := e.records(e.parent.SID, "AllTime", url.Values{"Category": {"sms"}, "IncludeSubaccounts": {"false"}}); own.UsageRecords[0].Count != "0" {
		t.Fatalf("parent own %+v", own.UsageRecords[0])
	}
	// For a subaccount IncludeSubaccounts changes nothing.
	check("AllTime", url.Values{"Category": {"sms"}, "IncludeSubaccounts": {"true"}}, "3")
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records/Today.json", url.Values{"StartDate": {"yesterday"}}), 400, 70002)
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records/Hourly.json", nil), 404, 20404)

	// twilio-go reads them (price arrives as a JSON number).
	tp2 := &openapi.ListUsageRecordTodayParams{}
	tp2.SetPathAccountSid(sub.SID)
	tp2.SetCategory("totalprice")
	recs, err := e.parentAPI().ListUsageRecordToday(tp2)
	if err != nil || len(recs) != 1 || *recs[0].Usage != "5" || *recs[0].Price != 5 {
		t.Fatalf("twilio-go today: %v %v", recs, err)
	}
	// And the daemon's exact decimal reads the number exactly.
	var d decimal.Decimal
	if err := json.Unmarshal([]byte(one3(t, e, sub.SID)), &d); err != nil || d.String() != "7.30001" {
		t.Fatalf("decimal from price: %v %v", d, err)
	}
}

func one3(t *testing.T, e *env, acct string) string {
	p := e.records(acct, "AllTime", url.Values{"Category": {"totalprice"}})
	return string(p.UsageRecords[0].Price)
}

func TestMessagesAndCalls(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("tenant")
	api := e.parentAPI()

	mp := &openapi.CreateMessageParams{}
	mp.SetTo("+15558675310")
	mp.SetFrom("+15005550006")
	mp.SetBody("usagebreaker: suspended tenant")
	m, err := api.CreateMessage(mp)
	if err != nil {
		t.Fatal(err)
	}
	if !sidRE["SM"].MatchString(*m.Sid) || *m.Status != "queued" || *m.AccountSid != e.parent.SID || *m.To != "+15558675310" ||
		*m.Body != "usagebreaker: suspended tenant" || *m.Direction != "outbound-api" {
		t.Fatalf("message %s", dump(m))
	}
	ms := &openapi.CreateMessageParams{}
	ms.SetTo("+15558675311")
	ms.SetMessagingServiceSid("MG00000000000000000000000000000001")
	ms.SetBody("hi")
	if _, err := api.CreateMessage(ms); err != nil {
		t.Fatal(err)
	}
	msgPath := "/2010-04-01/Accounts/" + e.parent.SID + "/Messages.json"
	wantError(t, e.asParent(http.MethodPost, msgPath, url.Values{"From": {"+1"}, "Body": {"x"}}), 400, 21604)
	wantError(t, e.asParent(http.MethodPost, msgPath, url.Values{"To": {"+1"}, "Body": {"x"}}), 400, 21603)
	wantError(t, e.asParent(http.MethodPost, msgPath, url.Values{"To": {"+1"}, "From": {"+2"}}), 400, 21602)
	st := e.sim.State()
	if len(st.Messages) != 2 || st.Messages[1].MessagingServiceSID != "MG00000000000000000000000000000001" || st.Messages[0].Body != "usagebreaker: suspended tenant" {
		t.Fatalf("messages in state: %+v", st.Messages)
	}

	c1, err := e.sim.StartCall(sub.SID)
	if err != nil {
		t.Fatal(err)
	}
	a := e.control(http.MethodPost, "/sim/calls", url.Values{"AccountSid": {sub.SID}, "To": {"+15550001111"}})
	wantStatus(t, a, http.StatusCreated)
	c2 := a.json(t)["sid"].(string)
	lp := &openapi.ListCallParams{}
	lp.SetPathAccountSid(sub.SID)
	lp.SetStatus("in-progress")
	calls, err := api.ListCall(lp)
	if err != nil || len(calls) != 2 || *calls[0].Sid != c1.SID || *calls[1].Sid != c2 || *calls[1].To != "+15550001111" {
		t.Fatalf("calls %v %v", len(calls), err)
	}
	e.sim.Advance(90 * time.Second)
	up := &openapi.UpdateCallParams{}
	up.SetPathAccountSid(sub.SID)
	up.SetStatus("completed")
	done, err := api.UpdateCall(c1.SID, up)
	if err != nil || *done.Status != "completed" || *done.Duration != "90" || done.EndTime == nil {
		t.Fatalf("update call: %s %v", dump(done), err)
	}
	if calls, _ = api.ListCall(lp); len(calls) != 1 || *calls[0].Sid != c2 {
		t.Fatalf("in-progress after ending one: %d", len(calls))
	}
	// Ending a completed call again is harmless; other accounts' calls are not found.
	if again, err := api.UpdateCall(c1.SID, up); err != nil || *again.Status != "completed" {
		t.Fatalf("again: %v", err)
	}
	wantError(t, e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+e.parent.SID+"/Calls/"+c2+".json", url.Values{"Status": {"completed"}}), 404, 20404)
	// Closing the account ends its calls.
	wantStatus(t, e.asParent(http.MethodPost, "/2010-04-01/Accounts/"+sub.SID+".json", url.Values{"Status": {"closed"}}), 200)
	if calls, _ = api.ListCall(lp); len(calls) != 0 {
		t.Fatalf("calls in progress on a closed account: %d", len(calls))
	}
	if n := e.sim.Requests()[OpCallsUpdate]; n != 3 {
		t.Fatalf("calls.update counted %d", n)
	}
}
