package twilioapi_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// TestDailyUsageRecords reads seeded daily history through the real client,
// one category and every category (more than one page), with every request
// and answer checked against Twilio's OpenAPI description.
func TestDailyUsageRecords(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1, Now: func() time.Time { return now }})
	defer sim.Close()
	srv := httptest.NewServer(schematest.Middleware(t, sim))
	defer srv.Close()
	p := sim.Parent()
	c, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: srv.URL, MaxConcurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub := sim.CreateSubaccount("tenant-a")
	first := now.AddDate(0, 0, -399)
	for d := first; !d.After(now); d = d.AddDate(0, 0, 1) {
		for _, cat := range []string{"sms", "calls"} {
			if err := sim.AddHistory(twiliosim.HistoryInput{AccountSID: sub.SID, Category: cat, Day: d,
				Count: decimal.FromInt(1), Usage: decimal.FromInt(2), Price: decimal.MustParse("0.5")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	from, to := first.Format(time.DateOnly), now.Format(time.DateOnly)
	before := sim.Requests()["records.read"]
	recs, err := c.DailyUsageRecords(ctx, sub.SID, "totalprice", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 400 || recs[0].StartDate != from || recs[399].StartDate != to || !recs[5].Price.Equal(decimal.FromInt(1)) {
		t.Fatalf("%d records, first %+v", len(recs), recs[0])
	}
	if n := sim.Requests()["records.read"] - before; n != 1 {
		t.Errorf("one category of 400 days took %d calls, want 1", n)
	}
	before = sim.Requests()["records.read"]
	all, err := c.DailyUsageRecords(ctx, sub.SID, "", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1200 { // 400 days x calls, sms, totalprice
		t.Fatalf("%d records for every category", len(all))
	}
	if n := sim.Requests()["records.read"] - before; n != 2 {
		t.Errorf("1200 records took %d calls, want 2 pages of 1000", n)
	}
	if _, err := c.DailyUsageRecords(ctx, sub.SID, "", to, from); err == nil {
		t.Error("a reversed range was accepted")
	}
}
