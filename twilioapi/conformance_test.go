package twilioapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// TestClientAgainstOfficialSchema drives every method the daemon uses through
// the real client against the simulator, with every request the client sends
// and every answer the simulator gives checked against Twilio's official
// OpenAPI description. Skips (saying so) where that file is not present.
func TestClientAgainstOfficialSchema(t *testing.T) {
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1})
	defer sim.Close()
	srv := httptest.NewServer(schematest.Middleware(t, sim))
	defer srv.Close()
	p := sim.Parent()
	c, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: srv.URL, MaxConcurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 60; i++ { // more than one default page
		sim.CreateSubaccount(fmt.Sprintf("tenant-%02d", i))
	}
	subs, err := c.ListSubaccounts(ctx)
	if err != nil || len(subs) != 60 {
		t.Fatalf("ListSubaccounts = %d, %v", len(subs), err)
	}
	sub := subs[0]
	if a, err := c.FetchAccount(ctx, sub.SID); err != nil || a.AuthToken == "" || a.OwnerSID != p.SID {
		t.Fatalf("FetchAccount = %+v, %v", a, err)
	}
	specs := []twilioapi.TriggerSpec{
		{FriendlyName: "usagebreaker:t:daily", CallbackURL: "https://breaker.example.com/twilio/usage-triggers/daily", CallbackMethod: "POST",
			UsageCategory: "totalprice", TriggerBy: "price", Recurring: "daily", TriggerValue: "50"},
		{FriendlyName: "usagebreaker:t:monthly", CallbackURL: "https://breaker.example.com/twilio/usage-triggers/monthly", CallbackMethod: "POST",
			UsageCategory: "sms", TriggerBy: "count", Recurring: "monthly", TriggerValue: "+1000"},
		{FriendlyName: "usagebreaker:t:alltime", CallbackURL: "https://breaker.example.com/twilio/usage-triggers/alltime", CallbackMethod: "POST",
			UsageCategory: "calls", TriggerBy: "usage", Recurring: "alltime", TriggerValue: "120.5"},
	}
	var created []twilioapi.Trigger
	for _, s := range specs {
		tr, err := c.CreateTrigger(ctx, sub.SID, s)
		if err != nil {
			t.Fatalf("CreateTrigger(%s): %v", s.FriendlyName, err)
		}
		created = append(created, tr)
	}
	ts, err := c.ListTriggers(ctx, sub.SID)
	if err != nil || len(ts) != 3 {
		t.Fatalf("ListTriggers = %d, %v", len(ts), err)
	}
	if _, err := c.UpdateTrigger(ctx, sub.SID, created[0].SID, twilioapi.TriggerUpdate{CallbackURL: "https://u:p@breaker.example.com/x", CallbackMethod: "POST"}); err != nil {
		t.Fatalf("UpdateTrigger: %v", err)
	}
	if err := c.DeleteTrigger(ctx, sub.SID, created[2].SID); err != nil {
		t.Fatalf("DeleteTrigger: %v", err)
	}
	if _, err := sim.AddUsage(twiliosim.UsageInput{AccountSID: sub.SID, Category: "sms", Count: decimal.FromInt(3), Usage: decimal.FromInt(3), Price: decimal.MustParse("2192.84855")}); err != nil {
		t.Fatal(err)
	}
	for _, period := range []twilioapi.Period{twilioapi.PeriodDaily, twilioapi.PeriodMonthly, twilioapi.PeriodYearly, twilioapi.PeriodAllTime} {
		recs, err := c.UsageRecords(ctx, sub.SID, period)
		if err != nil {
			t.Fatalf("UsageRecords(%s): %v", period, err)
		}
		byCat := map[string]twilioapi.UsageRecord{}
		for _, r := range recs {
			byCat[r.Category] = r
		}
		if !byCat["totalprice"].Price.Equal(decimal.MustParse("2192.84855")) || byCat["sms"].Count.String() != "3" {
			t.Errorf("UsageRecords(%s) = %+v", period, recs)
		}
	}
	if _, err := c.SendMessage(ctx, twilioapi.Message{To: "+15558675310", From: "+15005550006", Body: "usagebreaker: tenant suspended"}); err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	if _, err := c.SendMessage(ctx, twilioapi.Message{To: "+15558675310", MessagingServiceSID: "MG" + fmt.Sprintf("%032x", 1), Body: "x"}); err != nil {
		t.Fatalf("SendMessage via messaging service: %v", err)
	}
	call, err := sim.StartCall(sub.SID)
	if err != nil {
		t.Fatal(err)
	}
	calls, err := c.ListInProgressCalls(ctx, sub.SID)
	if err != nil || len(calls) != 1 || calls[0].SID != call.SID {
		t.Fatalf("ListInProgressCalls = %+v, %v", calls, err)
	}
	if err := c.EndCall(ctx, sub.SID, call.SID); err != nil {
		t.Fatalf("EndCall: %v", err)
	}
	if a, err := c.SetAccountStatus(ctx, sub.SID, twilioapi.StatusSuspended); err != nil || a.Status != "suspended" {
		t.Fatalf("SetAccountStatus = %+v, %v", a, err)
	}
	if a, err := c.SetAccountStatus(ctx, sub.SID, twilioapi.StatusActive); err != nil || a.Status != "active" {
		t.Fatalf("reactivate = %+v, %v", a, err)
	}
	// Error answers are checked too (Twilio's error body shape).
	_, err = c.FetchAccount(ctx, "AC"+fmt.Sprintf("%032x", 12345))
	var te *twilioapi.Error
	if !errors.As(err, &te) || te.Status != 404 || te.Code != twilioapi.CodeNotFound {
		t.Fatalf("fetch unknown = %v", err)
	}
}
