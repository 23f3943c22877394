package replay

import (
	"context"
	"fmt"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// SeedBacktestHistory seeds the history TestBacktest and the command's test
// replay: three tenants and an internal account, October 2026.
func seedBacktestHistory(t *testing.T, sim *twiliosim.Sim) {
	t.Helper()
	accts := map[string]twiliosim.Account{}
	for _, n := range []string{"tenant-a", "tenant-b", "tenant-c", "internal-qa"} {
		accts[n] = sim.CreateSubaccount(n)
	}
	for _, h := range []struct{ acct, cat, day, count, usage, price string }{
		{"tenant-a", "totalprice", "2026-10-01", "", "", "80"},    // before --from: not listed
		{"tenant-a", "totalprice", "2026-10-03", "", "", "50"},    // exactly at the threshold
		{"tenant-a", "totalprice", "2026-10-04", "", "", "49.99"}, // just under: the warning only
		{"tenant-b", "sms", "2026-10-01", "60", "60", ""},         // counts toward October's total
		{"tenant-b", "sms", "2026-10-10", "40", "40", ""},         // October reaches 100 here
		{"tenant-b", "sms", "2026-10-15", "500", "500", ""},       // October already tripped
		{"tenant-a", "totalprice", "2026-10-20", "", "", "70"},    // three at once: the guard
		{"tenant-b", "totalprice", "2026-10-20", "", "", "70"},    // (max 2 a window) holds
		{"tenant-c", "totalprice", "2026-10-20", "", "", "70"},    // the third
		{"tenant-b", "calls", "2026-10-25", "10", "700", ""},      // a dry run rule
		{"internal-qa", "totalprice", "2026-10-05", "", "", "1000"},
		{"tenant-c", "totalprice", "2026-11-01", "", "", "999"}, // after --to
	} {
		in := twiliosim.HistoryInput{AccountSID: accts[h.acct].SID, Category: h.cat}
		in.Day, _ = time.Parse(time.DateOnly, h.day)
		for _, f := range []struct {
			s   string
			dst *decimal.Decimal
		}{{h.count, &in.Count}, {h.usage, &in.Usage}, {h.price, &in.Price}} {
			if f.s != "" {
				*f.dst = decimal.MustParse(f.s)
			}
		}
		if err := sim.AddHistory(in); err != nil {
			t.Fatal(err)
		}
	}
}

// backtestWant is every trip, in order.
var backtestWant = []string{
	"2026-10-03 spend-daily tenant-a 50 50 suspended",
	"2026-10-03 spend-warn tenant-a 50 20 notified",
	"2026-10-04 spend-warn tenant-a 49.99 20 notified",
	"2026-10-10 sms-monthly tenant-b 100 100 suspended",
	"2026-10-20 spend-daily tenant-a 70 50 suspended",
	"2026-10-20 spend-warn tenant-a 70 20 notified",
	"2026-10-20 spend-daily tenant-b 70 50 suspended",
	"2026-10-20 spend-warn tenant-b 70 20 notified",
	"2026-10-20 spend-daily tenant-c 70 50 held",
	"2026-10-20 spend-warn tenant-c 70 20 notified",
	"2026-10-25 calls-watch tenant-b 700 600 dry_run",
}

func TestBacktest(t *testing.T) {
	now := time.Date(2026, 11, 5, 12, 0, 0, 0, time.UTC)
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1, Now: func() time.Time { return now }})
	defer sim.Close()
	srv := httptest.NewServer(schematest.Middleware(t, sim))
	defer srv.Close()
	seedBacktestHistory(t, sim)
	p := sim.Parent()
	api, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: srv.URL, MaxConcurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	set, _, err := rules.Load([]string{"testdata/backtest/rules.yaml"}, "")
	if err != nil {
		t.Fatal(err)
	}
	before := sim.Requests()
	var progress []string
	o := BacktestOptions{Rules: set, From: time.Date(2026, 10, 2, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 10, 31, 0, 0, 0, 0, time.UTC),
		Guard: breaker.GuardSettings{MaxSuspensions: 2, Window: time.Hour}, Concurrency: 2,
		Progress: func(done, total, calls int) { progress = append(progress, fmt.Sprintf("%d/%d", done, total)) }}
	res, err := Backtest(context.Background(), api, o)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tr := range res.Trips {
		got = append(got, fmt.Sprintf("%s %s %s %s %s %s", tr.Day, tr.Rule, tr.AccountName, tr.Value, tr.Threshold, tr.Outcome))
	}
	if !slices.Equal(got, backtestWant) {
		t.Errorf("trips:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(backtestWant, "\n"))
	}
	// One listing per subaccount and category its rules watch (a: totalprice
	// and sms; b: and calls; c: as a); nothing else, and no write.
	if res.Calls != 7 || res.Matched != 3 || res.Subaccounts != 4 {
		t.Errorf("calls %d, matched %d of %d", res.Calls, res.Matched, res.Subaccounts)
	}
	after := sim.Requests()
	diff := map[string]int{}
	for op, n := range after {
		if n != before[op] {
			diff[op] = n - before[op]
		}
	}
	if !maps.Equal(diff, map[string]int{"accounts.list": 1, "records.read": 7}) {
		t.Errorf("requests made: %v", diff)
	}
	if !slices.Equal(progress, []string{"1/3", "2/3", "3/3"}) {
		t.Errorf("progress %v", progress)
	}

	// The global dry run turns every action into dry_run; no guard applies.
	o.DryRun, o.Progress = true, nil
	res, err = Backtest(context.Background(), api, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range res.Trips {
		if tr.Outcome != string(breaker.OutcomeDryRun) {
			t.Errorf("global dry run: %+v", tr)
		}
	}
	if len(res.Trips) != len(backtestWant) {
		t.Errorf("global dry run: %d trips", len(res.Trips))
	}
}

// TestBacktestGuardWindow: a guard window longer than a day spans whole
// days back from the trip's day.
func TestBacktestGuardWindow(t *testing.T) {
	r := &rules.Rule{Name: "spend", Include: []string{"*"}, UsageCategory: "totalprice", TriggerBy: "price",
		Recurring: "daily", Threshold: decimal.MustParse("1"), Action: rules.ActionSuspend}
	set := rules.NewSet([]*rules.Rule{r})
	subs := []twilioapi.Account{{SID: "AC" + strings.Repeat("1", 32), FriendlyName: "a"}, {SID: "AC" + strings.Repeat("2", 32), FriendlyName: "b"}}
	day := func(d int) time.Time { return time.Date(2026, 10, d, 0, 0, 0, 0, time.UTC) }
	one := decimal.MustParse("1")
	cands := []candidate{{day(1), 0, 0, one}, {day(2), 1, 0, one}, {day(3), 0, 0, one}, {day(5), 1, 0, one}}
	var got []string
	for _, tr := range decideAll(cands, subs, BacktestOptions{Rules: set, Guard: breaker.GuardSettings{MaxSuspensions: 1, Window: 48 * time.Hour}}) {
		got = append(got, tr.Day+" "+tr.Outcome)
	}
	// Day 2 is within 48h of day 1's suspension: held. Day 3: day 2's hold
	// is in the window: held. Day 5: the window (days 4 and 5) is empty.
	want := []string{"2026-10-01 suspended", "2026-10-02 held", "2026-10-03 held", "2026-10-05 suspended"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
