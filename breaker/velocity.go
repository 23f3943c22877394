package breaker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Velocity rules: "trip when usage grows by amount within within".
//
// Twilio's triggers recur only daily, monthly or yearly, so the rate is built
// from steps. Each matched subaccount has one step trigger per velocity
// rule: non-recurring, TriggerValue "+amount/steps", which Twilio resolves
// against the current all-time usage when it is created and fires once.
//
//   - A step's callback is recorded as a step firing (store.RecordStep), with
//     its rearm_step action in the same transaction; the callback is answered
//     200 only after that commit.
//   - The rearm_step worker arms the next step (create "+amount/steps", or
//     adopt one created since the firing), then deletes the rule's other
//     triggers on the account (the spent one), so an account holds one step
//     per velocity rule, far from Twilio's 1,000-trigger cap. The reconciler
//     restores a missing step (a crash between a firing and its re-arm).
//   - Each step is armed at the firing before it, so the time from one firing
//     to the firing steps later covers at least amount of growth. The rule
//     trips when the last steps+1 firings (the last steps steps, each
//     measured from the firing that armed it) happened within within: usage
//     grew by at least amount within within. A burst of amount+amount/steps
//     within within always trips; steady growth slower than amount per within
//     never does.
//   - The incident's period is "velocity:{RFC 3339 time of the first of those
//     firings}"; its TriggerValue is the rule's amount, its CurrentValue the
//     growth seen between the first and the last firing.
//   - A piece of evidence (a step firing, a poll reading) counts toward one
//     incident at most: only what happened after the latest velocity incident
//     of the rule and account (its DateFired) is looked at. So a repeat of a
//     callback, the rearm worker's check and the poller's land on the
//     incident the first of them opened, and after a reactivation the rule
//     trips again only on new growth.

// VelocityPeriodPrefix starts the period of every velocity incident.
const VelocityPeriodPrefix = "velocity:"

// VelocityPeriod is the incident period of a velocity trip whose first
// firing happened at first.
func VelocityPeriod(first time.Time) string {
	return VelocityPeriodPrefix + first.UTC().Format(time.RFC3339)
}

// velocityStart parses a velocity incident's period.
func velocityStart(period string) (time.Time, bool) {
	s, ok := strings.CutPrefix(period, VelocityPeriodPrefix)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, s)
	return t, err == nil
}

// velocityWindow says whether the steps (oldest first) trip v: the last
// v.Steps+1 firings happened within v.Within. It returns the first and last
// of them.
func velocityWindow(steps []store.StepFiring, v *rules.Velocity) (first, last store.StepFiring, ok bool) {
	n := v.Steps + 1
	if len(steps) < n {
		return first, last, false
	}
	w := steps[len(steps)-n:]
	first, last = w[0], w[n-1]
	return first, last, last.FiredAt.Sub(first.FiredAt) <= v.Within
}

// acceptStep records a velocity rule's step firing (and its rearm_step
// action), then checks whether the rule trips.
func (b *Breaker) acceptStep(ctx context.Context, r *rules.Rule, acct twilioapi.Account, cb Callback, received time.Time) (AcceptResult, error) {
	f := store.StepFiring{
		IdempotencyToken: cb.IdempotencyToken,
		Rule:             r.Name,
		AccountSID:       acct.SID,
		AccountName:      acct.FriendlyName,
		UsageTriggerSID:  cb.UsageTriggerSID,
		UsageCategory:    cb.UsageCategory,
		TriggerBy:        cb.TriggerBy,
		TriggerValue:     cb.TriggerValue,
		CurrentValue:     cb.CurrentValue,
		DateFired:        cb.DateFired,
		FiredAt:          firedAt(cb.DateFired, received).UTC(),
		ReceivedAt:       received,
		// A trigger that is not the rule's step as it is now (left from
		// before a change of the rule) does not count; its re-arm still
		// arms a real step at once.
		Stale: cb.Recurring != "" || cb.UsageCategory != r.UsageCategory || cb.TriggerBy != r.TriggerBy,
	}
	res, err := b.store.RecordStep(ctx, f)
	if err != nil {
		return AcceptResult{}, fmt.Errorf("record step: %w", err)
	}
	if !res.Duplicate {
		b.m.ActionsPending.Inc()
		b.engine.Wake()
	}
	if f.Stale {
		b.log.Warn("a velocity rule's trigger that is not its current step fired; it is replaced and not counted",
			"rule", r.Name, "account", acct.SID, "trigger", cb.UsageTriggerSID, "recurring", cb.Recurring,
			"category", cb.UsageCategory, "trigger_by", cb.TriggerBy)
	}
	// Also for a repeat: the first delivery may have been recorded without
	// its trip being checked (an error after the commit).
	ar, opened, err := b.checkVelocity(ctx, r, acct.SID, acct.FriendlyName, store.SourceCallback)
	if err != nil {
		return AcceptResult{}, err
	}
	return AcceptResult{Incident: ar.Incident, Duplicate: res.Duplicate && !opened}, nil
}

// checkVelocity opens the incident of rule r on the account if its step
// firings since its latest velocity incident trip it. opened reports a new
// (or reopened) incident.
func (b *Breaker) checkVelocity(ctx context.Context, r *rules.Rule, acctSID, acctName string, source store.Source) (AcceptResult, bool, error) {
	unlock := b.velocityLocks.lock(acctSID)
	defer unlock()
	after, err := velocityBoundary(ctx, b.store, r.Name, acctSID)
	if err != nil {
		return AcceptResult{}, false, err
	}
	steps, err := b.store.Steps(ctx, r.Name, acctSID, after, r.Velocity.Steps+1)
	if err != nil {
		return AcceptResult{}, false, fmt.Errorf("read steps: %w", err)
	}
	first, last, ok := velocityWindow(steps, r.Velocity)
	if !ok {
		return AcceptResult{}, false, nil
	}
	growth := decimal.Zero
	if a, err1 := decimal.Parse(first.CurrentValue); err1 == nil {
		if z, err2 := decimal.Parse(last.CurrentValue); err2 == nil {
			growth = z.Sub(a)
		}
	}
	period := VelocityPeriod(first.FiredAt)
	res, err := b.record(ctx, nil, store.Firing{
		Source: source,
		// The last step's token: whoever checks first (the callback, its
		// repeat, the rearm worker, the poller) records the same firing.
		IdempotencyToken: last.IdempotencyToken,
		Rule:             r.Name,
		AccountSID:       acctSID,
		AccountName:      orStr(last.AccountName, acctName),
		Period:           period,
		UsageTriggerSID:  last.UsageTriggerSID,
		UsageCategory:    last.UsageCategory,
		TriggerBy:        last.TriggerBy,
		TriggerValue:     r.Velocity.Amount.String(),
		CurrentValue:     growth.String(),
		DateFired:        last.DateFired,
		Action:           r.Action,
		DryRun:           b.dryRun(r),
		ReceivedAt:       b.now(),
		Actions:          b.ActionKinds(r),
		ClaimBy:          b.engine.Claim(),
	})
	if err != nil {
		return AcceptResult{}, false, err
	}
	if !res.Duplicate {
		b.log.Warn("velocity rule tripped", "rule", r.Name, "account", acctSID, "incident", res.Incident.ID,
			"period", period, "steps", r.Velocity.Steps, "first_firing", first.FiredAt, "last_firing", last.FiredAt,
			"growth", growth.String(), "amount", r.Velocity.Amount.String(), "within", r.Velocity.Within)
	}
	return res, !res.Duplicate, nil
}

// incidentLister is the store read velocityBoundary needs.
type incidentLister interface {
	ListIncidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error)
}

// velocityBoundary is the time up to which the evidence of rule on the
// account was counted: the DateFired of its latest velocity incident (zero
// if none).
func velocityBoundary(ctx context.Context, st incidentLister, rule, acctSID string) (time.Time, error) {
	incs, err := st.ListIncidents(ctx, store.IncidentFilter{Rule: rule, AccountSID: acctSID, Limit: 1})
	if err != nil {
		return time.Time{}, fmt.Errorf("read incidents: %w", err)
	}
	if len(incs) == 0 {
		return time.Time{}, nil
	}
	start, ok := velocityStart(incs[0].Period)
	if !ok {
		return time.Time{}, nil // the rule was a threshold rule then
	}
	return firedAt(incs[0].DateFired, start).UTC(), nil
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// verifyVelocity checks a velocity incident's evidence against the rule as
// it is now: for a callback's, that at least steps+1 step firings happened
// within within from the period's start; for a poll's, that the growth it saw
// is at least the amount and happened within within. It returns what the
// incident's details say.
func (b *Breaker) verifyVelocity(ctx context.Context, inc store.Incident, r *rules.Rule) (string, error) {
	v := r.Velocity
	start, ok := velocityStart(inc.Period)
	if !ok {
		return "", skip{fmt.Sprintf("period %q is not a velocity period; rule %q is a velocity rule now", inc.Period, r.Name)}
	}
	end := firedAt(inc.DateFired, start)
	growth, _ := decimal.Parse(inc.CurrentValue)
	if inc.Source == store.SourcePoll && !strings.HasPrefix(inc.IdempotencyToken, "poll:") {
		inc.Source = store.SourceCallback // the poller recorded a trip it found in the step firings
	}
	switch inc.Source {
	case store.SourcePoll:
		if d := end.Sub(start); d > v.Within {
			return "", skip{fmt.Sprintf("the growth was seen over %s, longer than the rule's %s", d, v.Within)}
		}
		if growth.Cmp(v.Amount) < 0 {
			return "", skip{fmt.Sprintf("growth %s is below the rule's amount %s", growth, v.Amount)}
		}
		return fmt.Sprintf("grew by %s within %s (polled; amount %s within %s)", growth, end.Sub(start), v.Amount, v.Within), nil
	default:
		steps, err := b.store.Steps(ctx, r.Name, inc.AccountSID, start.Add(-time.Nanosecond), 1000)
		if err != nil {
			return "", fmt.Errorf("read steps: %w", err)
		}
		n := 0
		var last time.Time
		for _, s := range steps {
			if !s.FiredAt.Before(start) && s.FiredAt.Sub(start) <= v.Within {
				n++
				last = s.FiredAt
			}
		}
		if n < v.Steps+1 {
			return "", skip{fmt.Sprintf("%d step firings within %s from %s; the rule needs %d (%d steps)",
				n, v.Within, start.Format(time.RFC3339), v.Steps+1, v.Steps)}
		}
		return fmt.Sprintf("%d steps of %s within %s (grew by %s; amount %s within %s)",
			n-1, v.Step(), last.Sub(start), growth, v.Amount, v.Within), nil
	}
}

// workRearmStep is the rearm_step worker: after a step firing, make sure the
// account has exactly one live step trigger of the rule, then check whether
// the rule trips (the durable twin of the callback's check).
//
// Exactly once: an unfired step trigger created at or after the firing (by
// an earlier attempt whose result was lost, by the reconciler, or by the
// re-arm of a later firing) is adopted instead of creating another; a create
// whose answer is lost is adopted by twilioapi (it lists after an ambiguous
// answer).
func (b *Breaker) workRearmStep(ctx context.Context, a store.Action) Result {
	step, err := b.store.Step(ctx, a.Step)
	if errors.Is(err, store.ErrNotFound) {
		return Fail(fmt.Errorf("step firing %q: %w", a.Step, err))
	}
	if err != nil {
		return Retry(fmt.Errorf("read step firing: %w", err))
	}
	s := b.settings.Load()
	r := s.Rules.Get(step.Rule)
	if r == nil || !r.IsVelocity() {
		return Done(OutcomeSkipped, fmt.Sprintf("rule %q is no longer a velocity rule; the reconciler deletes its triggers", step.Rule))
	}
	if acct, ok := b.accounts.Cached(step.AccountSID); ok && acct.Status == twilioapi.StatusClosed {
		return Done(OutcomeSkipped, "the account is closed; nothing to arm")
	}
	log := b.log.With("rule", r.Name, "account", step.AccountSID, "step", step.IdempotencyToken)
	armed, detail, err := b.armStep(ctx, s, r, step)
	if err != nil {
		log.Warn("cannot arm the next step, will retry", "attempt", a.Attempts+1, "err", err)
		b.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		if givesUp(err) && ctx.Err() == nil {
			return Fail(err)
		}
		return Retry(err)
	}
	log.Debug("velocity step armed", "trigger", armed.SID, "value", armed.TriggerValue.String(), "detail", detail)
	if _, _, err := b.checkVelocity(ctx, r, step.AccountSID, step.AccountName, store.SourceCallback); err != nil {
		return Retry(fmt.Errorf("armed %s; check the trip: %w", armed.SID, err))
	}
	return Done(store.OutcomeArmed, detail)
}

// armStep makes the next step of rule r the only trigger of r on the step's
// account: it adopts an unfired step created at or after the firing or
// creates one, then deletes the rule's other triggers there.
func (b *Breaker) armStep(ctx context.Context, s *Settings, r *rules.Rule, step store.StepFiring) (twilioapi.Trigger, string, error) {
	unlock := b.locks.lock(step.AccountSID) // not while the reconciler or a trip works on the account
	defer unlock()
	defer b.touchTriggers(step.AccountSID) // before the unlock: a reconcile planned before plans again
	spec := s.Spec(r)
	existing, err := b.api.ListTriggers(ctx, step.AccountSID)
	if err != nil {
		return twilioapi.Trigger{}, "", fmt.Errorf("list triggers: %w", err)
	}
	var (
		mine    []twilioapi.Trigger
		current twilioapi.Trigger
		found   bool
	)
	notBefore := step.FiredAt.Truncate(time.Second)
	for _, t := range existing {
		if t.FriendlyName != spec.FriendlyName {
			continue
		}
		mine = append(mine, t)
		if t.DateFired == "" && liveStep(t, spec) {
			if at, err := time.Parse(time.RFC1123Z, t.DateCreated); err == nil && !at.Before(notBefore) {
				if !found || newer(t, current) {
					current, found = t, true
				}
			}
		}
	}
	how := "adopted"
	if !found {
		if len(existing)-len(mine) >= MaxTriggersPerAccount {
			return twilioapi.Trigger{}, "", fmt.Errorf("the account has %d foreign usage triggers, Twilio's limit is %d", len(existing)-len(mine), MaxTriggersPerAccount)
		}
		if current, err = b.api.CreateTrigger(ctx, step.AccountSID, spec); err != nil {
			return twilioapi.Trigger{}, "", fmt.Errorf("create step trigger: %w", err)
		}
		how = "created"
	}
	var errs []error
	deleted := 0
	for _, t := range mine {
		if t.SID == current.SID {
			continue
		}
		if err := b.api.DeleteTrigger(ctx, step.AccountSID, t.SID); err != nil {
			errs = append(errs, fmt.Errorf("delete spent step %s: %w", t.SID, err))
			continue
		}
		deleted++
	}
	detail := fmt.Sprintf("%s step %s (%s, fires at %s); deleted %d spent", how, current.SID, spec.TriggerValue, current.TriggerValue, deleted)
	if len(errs) > 0 {
		// The next step is armed; a retry deletes what is left (it adopts the step).
		return current, detail, errors.Join(errs...)
	}
	return current, detail, nil
}

// liveStep reports whether trigger t is a step of the velocity spec: same
// category, trigger_by, non-recurring (its value is resolved, so it is not
// compared).
func liveStep(t twilioapi.Trigger, spec twilioapi.TriggerSpec) bool {
	return t.UsageCategory == spec.UsageCategory && orStr(t.TriggerBy, "usage") == orStr(spec.TriggerBy, "usage") &&
		twilioapi.SameRecurring(t.Recurring, spec.Recurring)
}

// newer reports whether a was created after b (ties: the greater SID).
func newer(a, b twilioapi.Trigger) bool {
	ta, ea := time.Parse(time.RFC1123Z, a.DateCreated)
	tb, eb := time.Parse(time.RFC1123Z, b.DateCreated)
	if ea == nil && eb == nil && !ta.Equal(tb) {
		return ta.After(tb)
	}
	return a.SID > b.SID
}

// planVelocity is planAccount for a velocity rule's step: keep the newest
// unfired step (updating its callback in place if needed), delete the other
// triggers of the rule, and create a step when none is live (a crash
// between a firing and its re-arm, a new subaccount, a new rule).
func planVelocity(p *plan, cands []twilioapi.Trigger, spec twilioapi.TriggerSpec) {
	idx := -1
	for i, t := range cands {
		if t.DateFired == "" && liveStep(t, spec) && (idx < 0 || newer(t, cands[idx])) {
			idx = i
		}
	}
	p.settle(spec, cands, idx)
}

// isStepSpec reports whether spec is a velocity step ("+N", non-recurring).
func isStepSpec(spec twilioapi.TriggerSpec) bool {
	return strings.HasPrefix(spec.TriggerValue, "+") && twilioapi.SameRecurring(spec.Recurring, "")
}
