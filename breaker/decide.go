package breaker

import (
	"fmt"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// The decision: what one rule does about one subaccount's watched value. It
// is pure (no I/O, no clock, no state), so the live path (trip.go verifies
// and acts on a callback's or a poll's incident; poll.go decides whether a
// value opens one), the rule unit tests and the backtest (package replay)
// all decide with the same code:
//
//	rule matches the account?      no  -> skipped
//	same category and trigger_by?  no  -> skipped (a callback's trigger)
//	value >= limit?                no  -> skipped
//	dry run (rule or global)?      yes -> dry_run
//	action notify?                 yes -> notified
//	account suspended or closed?   yes -> already_suspended
//	otherwise                          -> suspended, once the guard admits it
//	                                      (GuardSettings.Admits; else held)
//
// What stays with the live path is what needs the world: reading the
// account, the write leases, the guard's counts, the write itself.

// Trip is what Decide decides on.
type Trip struct {
	Rule    *rules.Rule
	Account twilioapi.Account // SID, FriendlyName and Status are read
	// Category and TriggerBy are what the firing trigger watched; "" when
	// the value was read for the rule (poll, rule tests, backtest).
	Category, TriggerBy string
	Value               decimal.Decimal
	// Limit is the value at which the rule trips; zero: the rule's threshold
	// (a re-armed trigger trips higher).
	Limit decimal.Decimal
	// DryRun is the global dry run (config dry_run: true, run --dry-run).
	DryRun bool
	// Evidence, when set, is why a rule without a threshold trips (a
	// velocity rule's firings, verified by the caller): the threshold is not
	// compared, and the details say this instead.
	Evidence string
}

// Decision is what a rule does about a Trip.
type Decision struct {
	// Outcome is OutcomeSkipped (the rule does not trip), OutcomeDryRun,
	// OutcomeNotified, OutcomeAlreadySuspended or OutcomeSuspended (suspend
	// now, if the guard admits it; OutcomeHeld otherwise).
	Outcome store.Outcome
	Detail  string // why, in words (the incident's detail)
}

// Tripped reports whether the value trips the rule (whatever it then does).
func (d Decision) Tripped() bool { return d.Outcome != OutcomeSkipped }

// Decide decides what rule t.Rule does about t (see the table above).
func Decide(t Trip) Decision {
	r := t.Rule
	skip := func(format string, args ...any) Decision {
		return Decision{Outcome: OutcomeSkipped, Detail: fmt.Sprintf(format, args...)}
	}
	if r == nil {
		return skip("no such rule")
	}
	if !r.Matches(t.Account.SID, t.Account.FriendlyName) {
		return skip("rule %q no longer matches account %q", r.Name, t.Account.FriendlyName)
	}
	if t.Category != "" && (t.Category != r.UsageCategory || t.TriggerBy != r.TriggerBy) {
		return skip("the trigger that fired watches %s by %s, the rule now watches %s by %s",
			t.Category, t.TriggerBy, r.UsageCategory, r.TriggerBy)
	}
	if r.IsVelocity() && t.Evidence == "" {
		// Its firings' times, not a value, trip a velocity rule: the rule
		// tests and the backtest cannot replay it (velocity.go verifies it).
		return skip("rule %q is a velocity rule: it trips on its step firings' times, not on a value", r.Name)
	}
	limit := t.Limit
	if limit.IsZero() {
		limit = r.Threshold
	}
	why := t.Evidence
	if why == "" {
		if t.Value.Cmp(limit) < 0 {
			return skip("current value %s is below the rule's threshold %s", t.Value, limit)
		}
		why = fmt.Sprintf("value %s >= threshold %s", t.Value, limit)
	}
	switch {
	case r.DryRun || t.DryRun:
		global := ""
		if !r.DryRun {
			global = "; global dry_run"
		}
		return Decision{OutcomeDryRun, fmt.Sprintf("dry run: would %s (%s%s)", r.Action, why, global)}
	case r.Action == rules.ActionNotify:
		return Decision{OutcomeNotified, fmt.Sprintf("%s; rule only notifies", why)}
	}
	switch t.Account.Status {
	case twilioapi.StatusSuspended:
		return Decision{OutcomeAlreadySuspended, "the account was already suspended"}
	case twilioapi.StatusClosed:
		return Decision{OutcomeAlreadySuspended, "the account is closed"}
	}
	return Decision{OutcomeSuspended, why}
}

// Suspends reports whether rule r writes a suspension when it trips: a
// suspend rule, not a dry run, with the global dry run (dryRun) off.
func Suspends(r *rules.Rule, dryRun bool) bool {
	return r != nil && r.Action == rules.ActionSuspend && !r.DryRun && !dryRun
}

// Admits reports whether the guard lets one more suspension through when
// suspended suspensions are in its window (counting admitted ones still in
// flight) and held are held: at most MaxSuspensions per window, and none
// while any is held (a person decides). MaxSuspensions 0: no guard.
func (g GuardSettings) Admits(suspended, held int) bool {
	return g.MaxSuspensions <= 0 || held == 0 && suspended < g.MaxSuspensions
}

// dryRun reports whether rule r acts as a dry run now (its own dry_run or
// the global one).
func (b *Breaker) dryRun(r *rules.Rule) bool { return r.DryRun || b.settings.Load().DryRun }
