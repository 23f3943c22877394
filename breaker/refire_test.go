package breaker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// A later firing of the same (rule, account, period) with a new token must
// not be swallowed by an incident whose trip was skipped (or failed): the
// store reopens that incident, and the executor verifies it afresh on the new
// firing's values. Repeats of a token already seen still change nothing.
//
// These tests check what the store does and run the executor with
// RunDueOnce, which reads pending actions from the store, so they do not
// depend on Accept waking the executor for a reopened incident.

// withRules swaps in rule text as a reload would.
func (f *fixture) withRules(t *testing.T, text string) {
	t.Helper()
	s := f.b.Settings()
	s.Rules = loadRules(t, text)
	f.b.SetSettings(s)
}

// refire is the later firing of the scenario: the trigger the reconcile
// registered after the change fires later that day with a new token.
func refire(acct twilioapi.Account, token, value string) Callback {
	cb := callbackFor(acct, token, "totalprice", "price", value)
	cb.UsageTriggerSID = "UT" + strings.Repeat("2", 32)
	cb.TriggerValue = "100"
	cb.DateFired = "Tue, 24 Nov 2026 15:00:00 +0000"
	return cb
}

// checkReopened checks that the store put the incident back to work on the
// new firing's values.
func (f *fixture) checkReopened(t *testing.T, id int64, cb Callback, firings int) {
	t.Helper()
	inc := f.incident(t, id)
	if inc.State != store.StatePending || inc.Outcome != "" || inc.CurrentValue != cb.CurrentValue ||
		inc.TriggerValue != cb.TriggerValue || inc.UsageTriggerSID != cb.UsageTriggerSID ||
		inc.UsageCategory != cb.UsageCategory || inc.TriggerBy != cb.TriggerBy || inc.DateFired != cb.DateFired ||
		inc.Firings != firings || !strings.HasPrefix(inc.Detail, "reopened by a new firing") {
		t.Fatalf("incident after the new firing = %+v", inc)
	}
	acts, err := f.st.IncidentActions(context.Background(), []int64{id})
	if err != nil {
		t.Fatal(err)
	}
	var trip store.Action
	for _, a := range acts[id] {
		if a.Kind == store.ActionTrip {
			trip = a
		}
	}
	if trip.State != store.ActionAvailable || trip.Outcome != "" || trip.NextAttemptAt.After(f.clock.Now()) {
		t.Fatalf("trip action after the new firing = %+v", trip)
	}
}

func (f *fixture) checkSuspended(t *testing.T, id int64, acct twilioapi.Account) {
	t.Helper()
	inc := f.incident(t, id)
	if inc.State != store.StateDone || inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v, want suspended", inc)
	}
	if got, _ := f.api.FetchAccount(context.Background(), acct.SID); got.Status != twilioapi.StatusSuspended {
		t.Fatalf("account status = %s", got.Status)
	}
	if got := f.api.count("accounts.update"); got != 1 {
		t.Fatalf("suspend writes = %d, want 1", got)
	}
}

func TestRefireAfterSkipSuspends(t *testing.T) {
	raised := strings.Replace(baseRules, `threshold: "50"`, `threshold: "100"`, 1)
	cases := []struct {
		name     string
		first    func(a twilioapi.Account) Callback
		rulesNow string // the rule set the trip of the first firing runs under
		wantWhy  string
		rulesFix string // "" : rulesNow stays
	}{
		{
			// The $50 trigger fires; a reload raises the threshold to 100
			// before the action runs; the reconcile replaces the trigger and
			// the $100 trigger fires later that day.
			name:     "threshold raised",
			first:    func(a twilioapi.Account) Callback { return callbackFor(a, "tok-50", "totalprice", "price", "50.12") },
			rulesNow: raised,
			wantWhy:  "current value 50.12 is below the rule's threshold 100",
		},
		{
			// The trigger that fired watched another category (the rule
			// was changed); the replacement trigger fires later.
			name:     "category changed",
			first:    func(a twilioapi.Account) Callback { return callbackFor(a, "tok-sms", "sms", "price", "120") },
			rulesNow: raised,
			wantWhy:  "the trigger that fired watches sms by price, the rule now watches totalprice by price",
		},
		{
			// The rule stopped matching the account when the trip ran, and
			// matches it again when the next trigger fires.
			name:     "rule no longer matched",
			first:    func(a twilioapi.Account) Callback { return callbackFor(a, "tok-50", "totalprice", "price", "150") },
			rulesNow: strings.Replace(raised, `exclude: ["internal-*"]`, `exclude: ["tenant-a"]`, 1),
			wantWhy:  `rule "spend-daily" no longer matches account "tenant-a"`,
			rulesFix: raised,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, baseRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)

			first := f.accept(t, "spend-daily", a, c.first(a))
			id := first.Incident.ID
			f.withRules(t, c.rulesNow)
			f.b.RunDueOnce(ctx)
			if inc := f.incident(t, id); inc.State != store.StateDone || inc.Outcome != OutcomeSkipped || inc.Detail != c.wantWhy {
				t.Fatalf("first trip = %s / %q, want skipped / %q", inc.Outcome, inc.Detail, c.wantWhy)
			}
			if c.rulesFix != "" {
				f.withRules(t, c.rulesFix)
			}
			f.reconcile(t)

			f.clock.Advance(5 * time.Hour)
			cb := refire(a, "tok-100", "100.40")
			res := f.accept(t, "spend-daily", a, cb)
			if res.Incident.ID != id {
				t.Fatalf("the new firing opened incident %d, want it on %d", res.Incident.ID, id)
			}
			f.checkReopened(t, id, cb, 2)

			// A repeat of the new token (Twilio retrying the callback) and
			// of the first one change nothing.
			before := f.incident(t, id)
			for _, tok := range []string{"tok-100", c.first(a).IdempotencyToken} {
				again := cb
				again.IdempotencyToken = tok
				if r := f.accept(t, "spend-daily", a, again); !r.Duplicate || r.Incident != before {
					t.Fatalf("repeat of %s = %+v", tok, r)
				}
			}
			if after := f.incident(t, id); after != before {
				t.Fatalf("a repeat changed the incident:\n%+v\n%+v", before, after)
			}

			f.b.RunDueOnce(ctx)
			f.checkSuspended(t, id, a)
			if inc := f.incident(t, id); inc.Firings != 2 || !strings.Contains(inc.Detail, "value 100.4 >= threshold 100") {
				t.Errorf("incident = %+v", inc)
			}
		})
	}
}

// A suspension that failed for good (a 4xx) is tried again by the next
// firing of the period.
func TestRefireAfterFailureRetries(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 400, Code: 20008, Message: "cannot suspend"})
	id := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60")).Incident.ID
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, id); inc.State != store.StateFailed || inc.Outcome != OutcomeFailed {
		t.Fatalf("first trip = %+v", inc)
	}

	f.clock.Advance(time.Hour)
	cb := callbackFor(a, "tok-2", "totalprice", "price", "75")
	f.accept(t, "spend-daily", a, cb)
	f.checkReopened(t, id, cb, 2)
	f.b.RunDueOnce(ctx)
	inc := f.incident(t, id)
	if inc.State != store.StateDone || inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v, want suspended", inc)
	}
	if got := f.api.count("accounts.update"); got != 2 {
		t.Fatalf("suspend writes = %d, want 2 (the 400, then the suspension)", got)
	}
}

// With end_calls, the calls left alone because the first trip was skipped
// are ended once the reopened trip suspends the account.
func TestRefireAfterSkipEndsCalls(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	api := &callsAPI{fakeAPI: f.api, calls: map[string][]string{}}
	f.b = New(Options{API: api, Store: f.st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Settings: f.b.Settings()})
	a := f.api.addAccount("tenant-a", "active")
	api.calls[a.SID] = []string{"CA1"}
	f.reconcile(t)

	id := f.trip(t, "spend-daily", a, "tok-50").Incident.ID // 50.12
	f.withRules(t, strings.Replace(operatorRules, `threshold: "50"
    action: suspend
    end_calls: true`, `threshold: "100"
    action: suspend
    end_calls: true`, 1))
	f.settle(t)
	if got := f.actions(t, id)[store.ActionEndCalls]; got.State != store.ActionDone || got.Outcome != OutcomeSkipped {
		t.Fatalf("end_calls after the skipped trip = %+v", got)
	}
	if inc := f.incident(t, id); inc.Outcome != OutcomeSkipped {
		t.Fatalf("first trip = %+v", inc)
	}

	f.clock.Advance(5 * time.Hour)
	cb := refire(a, "tok-100", "100.40")
	f.accept(t, "spend-daily", a, cb)
	f.checkReopened(t, id, cb, 2)
	if got := f.actions(t, id)[store.ActionEndCalls]; got.State != store.ActionAvailable {
		t.Fatalf("end_calls after the new firing = %+v", got)
	}
	f.settle(t)
	f.checkSuspended(t, id, a)
	if got := f.actions(t, id)[store.ActionEndCalls]; got.State != store.ActionDone || got.Outcome != OutcomeEnded {
		t.Errorf("end_calls = %+v", got)
	}
	if strings.Join(api.ended, ",") != "CA1" {
		t.Errorf("ended calls %v", api.ended)
	}
}
