package breaker

import (
	"testing"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func TestDecide(t *testing.T) {
	suspend := &rules.Rule{Name: "spend", Include: []string{"tenant-*"}, UsageCategory: "totalprice", TriggerBy: "price",
		Recurring: "daily", Threshold: decimal.MustParse("50"), Action: rules.ActionSuspend}
	notify := *suspend
	notify.Action = rules.ActionNotify
	dry := *suspend
	dry.DryRun = true
	acct := twilioapi.Account{SID: "AC" + "00000000000000000000000000000001", FriendlyName: "tenant-a", Status: twilioapi.StatusActive}
	other := acct
	other.FriendlyName = "internal-a"
	suspended := acct
	suspended.Status = twilioapi.StatusSuspended
	closed := acct
	closed.Status = twilioapi.StatusClosed
	v := decimal.MustParse
	cases := []struct {
		name string
		t    Trip
		want store.Outcome
	}{
		{"below", Trip{Rule: suspend, Account: acct, Value: v("49.99")}, OutcomeSkipped},
		{"exactly at the threshold", Trip{Rule: suspend, Account: acct, Value: v("50")}, OutcomeSuspended},
		{"over", Trip{Rule: suspend, Account: acct, Value: v("50.01")}, OutcomeSuspended},
		{"not matched", Trip{Rule: suspend, Account: other, Value: v("99")}, OutcomeSkipped},
		{"other category", Trip{Rule: suspend, Account: acct, Category: "sms", TriggerBy: "count", Value: v("99")}, OutcomeSkipped},
		{"same category", Trip{Rule: suspend, Account: acct, Category: "totalprice", TriggerBy: "price", Value: v("99")}, OutcomeSuspended},
		{"re-armed limit", Trip{Rule: suspend, Account: acct, Value: v("60"), Limit: v("75")}, OutcomeSkipped},
		{"rule dry run", Trip{Rule: &dry, Account: acct, Value: v("50")}, OutcomeDryRun},
		{"global dry run", Trip{Rule: suspend, Account: acct, Value: v("50"), DryRun: true}, OutcomeDryRun},
		{"global dry run, below", Trip{Rule: suspend, Account: acct, Value: v("1"), DryRun: true}, OutcomeSkipped},
		{"notify", Trip{Rule: &notify, Account: acct, Value: v("50")}, OutcomeNotified},
		{"notify on a suspended account", Trip{Rule: &notify, Account: suspended, Value: v("50")}, OutcomeNotified},
		{"already suspended", Trip{Rule: suspend, Account: suspended, Value: v("50")}, OutcomeAlreadySuspended},
		{"closed", Trip{Rule: suspend, Account: closed, Value: v("50")}, OutcomeAlreadySuspended},
		{"no rule", Trip{Account: acct, Value: v("50")}, OutcomeSkipped},
	}
	for _, c := range cases {
		if d := Decide(c.t); d.Outcome != c.want || d.Detail == "" {
			t.Errorf("%s: Decide = %+v, want %s", c.name, d, c.want)
		}
	}
	if d := Decide(Trip{Rule: suspend, Account: acct, Value: v("50"), DryRun: true}); d.Detail != "dry run: would suspend (value 50 >= threshold 50; global dry_run)" {
		t.Errorf("global dry run detail %q", d.Detail)
	}
	if !Suspends(suspend, false) || Suspends(suspend, true) || Suspends(&dry, false) || Suspends(&notify, false) || Suspends(nil, false) {
		t.Error("Suspends")
	}
}

func TestGuardAdmits(t *testing.T) {
	off := GuardSettings{}
	g := GuardSettings{MaxSuspensions: 2}
	for _, c := range []struct {
		g               GuardSettings
		suspended, held int
		want            bool
	}{
		{off, 100, 5, true},
		{g, 0, 0, true},
		{g, 1, 0, true},
		{g, 2, 0, false},
		{g, 0, 1, false}, // while any is held, all are
	} {
		if got := c.g.Admits(c.suspended, c.held); got != c.want {
			t.Errorf("%+v.Admits(%d, %d) = %v", c.g, c.suspended, c.held, got)
		}
	}
}
