package replay

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// fakeSource serves daily records from a map: category -> day -> count.
type fakeSource struct {
	acct  twilioapi.Account
	days  map[string]map[string]int64
	calls []string // "category start end" per call
}

func (f *fakeSource) ListSubaccounts(context.Context) ([]twilioapi.Account, error) {
	return []twilioapi.Account{f.acct}, nil
}

func (f *fakeSource) DailyUsageRecords(_ context.Context, sid, category, start, end string) ([]twilioapi.UsageRecord, error) {
	f.calls = append(f.calls, strings.TrimSpace(category+" "+start+" "+end))
	var out []twilioapi.UsageRecord
	for cat, byDay := range f.days {
		if category != "" && cat != category {
			continue
		}
		for d, n := range byDay {
			if d >= start && d <= end {
				out = append(out, twilioapi.UsageRecord{AccountSID: sid, Category: cat, StartDate: d, EndDate: d, Count: decimal.FromInt(n)})
			}
		}
	}
	return out, nil
}

// TestBacktestPeriods: monthly and yearly rules count their whole period
// (read from its start), alltime rules from --from; each trips once per period.
func TestBacktestPeriods(t *testing.T) {
	rule := func(name, recurring string, threshold int64) *rules.Rule {
		return &rules.Rule{Name: name, Include: []string{"*"}, UsageCategory: "sms", TriggerBy: "count", Recurring: recurring,
			Threshold: decimal.FromInt(threshold), Action: rules.ActionNotify}
	}
	set := rules.NewSet([]*rules.Rule{rule("d", "daily", 10), rule("m", "monthly", 30), rule("y", "yearly", 115), rule("a", "alltime", 25),
		rule("y-before", "yearly", 100)}) // reached on March 30th, before --from: no trip in the range
	src := &fakeSource{acct: twilioapi.Account{SID: "AC" + strings.Repeat("a", 32), FriendlyName: "t"}, days: map[string]map[string]int64{
		"sms": {"2026-01-15": 80, "2026-03-30": 20, "2026-03-31": 10, "2026-04-01": 12, "2026-04-02": 9, "2026-04-03": 20, "2026-05-01": 30},
	}}
	from, to := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 31, 0, 0, 0, 0, time.UTC)
	res, err := Backtest(context.Background(), src, BacktestOptions{Rules: set, From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tr := range res.Trips {
		got = append(got, fmt.Sprintf("%s %s %s", tr.Day, tr.Rule, tr.Value))
	}
	want := []string{
		"2026-04-01 d 12",
		"2026-04-01 y 122", // 80 in January, 30 in March: the year's total, read from January 1st
		"2026-04-03 d 20",
		"2026-04-03 m 41", // April's days only
		"2026-04-03 a 41", // from --from
		"2026-05-01 d 30",
		"2026-05-01 m 30", // a new month
	}
	if !slices.Equal(got, want) {
		t.Errorf("trips:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// One category: one call, from the year's start (the yearly rule).
	if !slices.Equal(src.calls, []string{"sms 2026-01-01 2026-05-31"}) {
		t.Errorf("calls %v", src.calls)
	}
}

// TestOneListing: leaving Category out pays only for many categories over few days.
func TestOneListing(t *testing.T) {
	for _, c := range []struct {
		cats, days int
		want       bool
	}{{1, 1, false}, {2, 1, true}, {2, 90, false}, {3, 365, false}, {200, 90, true}} {
		if got := oneListing(c.cats, c.days); got != c.want {
			t.Errorf("oneListing(%d categories, %d days) = %v", c.cats, c.days, got)
		}
	}
}
