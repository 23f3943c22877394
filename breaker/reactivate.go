package breaker

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"sort"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Reactivation and re-arm.
//
// A recurring trigger fires at most once per period. After a suspension the
// trigger that fired is spent until the period ends, so an account
// reactivated mid-period would be unguarded. Reactivation therefore re-arms:
// each owned trigger of the account that fired this period is replaced by one
// with TriggerValue "+{rearm_allowance}" (Twilio: that much above the current
// usage). The exception is remembered (store.Rearm, per account, rule and
// period) so that the reconciler keeps the re-armed trigger while the period
// lasts and restores the rule's own threshold when it rolls over. Firings in
// the period after a re-arm belong to its generation: incident period
// "daily:2026-11-24#2", a new incident, so further spend trips again, while
// repeats of the first firing still dedupe on their token.

// RefusedError is a reactivation the breaker will not do, with why.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return e.Reason }

// ReactivateRequest asks for a reactivation.
type ReactivateRequest struct {
	AccountSID string
	Reason     string
	Actor      string // who asks: the admin API caller, or the rule's policy
	Via        string // store.ViaManual | store.ViaScheduled
	// IncidentID, when set, is the suspension to undo: refused if a newer
	// incident exists (a scheduled reactivation is for its own incident).
	IncidentID int64
}

// RearmedTrigger is one trigger replaced on reactivation.
type RearmedTrigger struct {
	Rule         string `json:"rule"`
	Period       string `json:"period"`
	Generation   int    `json:"generation"`
	TriggerSID   string `json:"trigger_sid"`
	TriggerValue string `json:"trigger_value"` // the absolute value Twilio computed from "+allowance"
	Allowance    string `json:"allowance"`
	Replaced     string `json:"replaced"` // the spent trigger's SID
}

// ReactivateResult is what a reactivation did.
type ReactivateResult struct {
	Incident     store.Incident
	Account      twilioapi.Account
	WasActive    bool // someone had already set it active at Twilio
	Rearmed      []RearmedTrigger
	Problems     []string // re-arm steps that failed; the next reconcile finishes them
	Reactivation store.Reactivation
}

// Reactivate reactivates a subaccount the breaker suspended: the newest
// incident of the account must have suspended it and not been reactivated
// yet. It sets Status=active, re-arms every owned trigger that fired this
// period and records who did it and why. A *RefusedError says why not.
func (b *Breaker) Reactivate(ctx context.Context, req ReactivateRequest) (ReactivateResult, error) {
	var res ReactivateResult
	if !ValidAccountSID(req.AccountSID) {
		return res, &RefusedError{fmt.Sprintf("%q is not an account SID (AC followed by 32 hex digits)", req.AccountSID)}
	}
	if strings.TrimSpace(req.Reason) == "" {
		return res, &RefusedError{"a reason is required"}
	}
	unlock := b.op.lockAccount(req.AccountSID)
	defer unlock()
	// And not while a suspend action of this account runs (lock order: the
	// reconciler's account lock, then the actions' one).
	unlockActions := b.acctMu.lock(req.AccountSID)
	defer unlockActions()

	incs, err := b.store.ListIncidents(ctx, store.IncidentFilter{AccountSID: req.AccountSID, Limit: 1})
	if err != nil {
		return res, err
	}
	if len(incs) == 0 {
		return res, &RefusedError{"usagebreaker has no incident for this account: it did not suspend it"}
	}
	inc := incs[0]
	res.Incident = inc
	switch {
	case req.IncidentID != 0 && inc.ID != req.IncidentID:
		return res, &RefusedError{fmt.Sprintf("a newer incident (%d, rule %s, outcome %s) exists; a person must look at it",
			inc.ID, inc.Rule, orNone(inc.Outcome))}
	case inc.State == store.StatePending:
		return res, &RefusedError{fmt.Sprintf("the newest incident (%d, rule %s) is still being handled: %s", inc.ID, inc.Rule, orNone(inc.Detail))}
	case inc.Outcome != OutcomeSuspended:
		return res, &RefusedError{fmt.Sprintf("usagebreaker did not suspend it: the newest incident (%d, rule %s) ended %s%s",
			inc.ID, inc.Rule, inc.Outcome, detailSuffix(inc.Detail))}
	}
	prev, err := b.store.Reactivations(ctx, []int64{inc.ID})
	if err != nil {
		return res, err
	}
	if p, ok := prev[inc.ID]; ok {
		return res, &RefusedError{fmt.Sprintf("already reactivated at %s by %s (%s); there is no newer suspension",
			p.CreatedAt.UTC().Format(time.RFC3339), p.Actor, p.Reason)}
	}

	acct, err := b.api.FetchAccount(ctx, req.AccountSID)
	if err != nil {
		return res, fmt.Errorf("read the account: %w", err)
	}
	switch acct.Status {
	case twilioapi.StatusClosed:
		return res, &RefusedError{"the account is closed; Twilio cannot reopen it"}
	case twilioapi.StatusActive:
		res.WasActive = true
	default:
		acct, err = b.api.SetAccountStatus(ctx, req.AccountSID, twilioapi.StatusActive)
		if err != nil {
			return res, fmt.Errorf("set the account active: %w", err)
		}
	}
	b.accounts.Put(acct)
	res.Account = acct

	res.Rearmed, res.Problems = b.rearm(ctx, acct)
	if len(res.Problems) > 0 {
		b.requestReconcile()
	}
	detail := describeRearm(res)
	rec, err := b.store.RecordReactivation(context.WithoutCancel(ctx), store.Reactivation{IncidentID: inc.ID,
		AccountSID: acct.SID, AccountName: acct.FriendlyName, Via: req.Via, Actor: req.Actor,
		Reason: strings.TrimSpace(req.Reason), Rearmed: len(res.Rearmed), Detail: detail, CreatedAt: b.now()})
	if err != nil && !errors.Is(err, store.ErrExists) {
		// The account is active and re-armed; only the record is missing.
		b.log.Error("reactivated, but the audit record could not be written", "account", acct.SID, "err", err)
		return res, fmt.Errorf("reactivated, but recording it failed: %w", err)
	}
	res.Reactivation = rec
	b.m.Reactivations.WithLabelValues(req.Via).Inc()
	b.log.Warn("subaccount reactivated", "account", acct.SID, "account_name", acct.FriendlyName, "incident", inc.ID,
		"via", req.Via, "by", req.Actor, "reason", req.Reason, "rearmed", len(res.Rearmed), "was_active", res.WasActive,
		"problems", strings.Join(res.Problems, "; "))
	return res, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func detailSuffix(d string) string {
	if d == "" {
		return ""
	}
	return " (" + d + ")"
}

func describeRearm(res ReactivateResult) string {
	var parts []string
	for _, r := range res.Rearmed {
		parts = append(parts, fmt.Sprintf("re-armed %s at %s (+%s, generation %d)", r.Rule, r.TriggerValue, r.Allowance, r.Generation))
	}
	parts = append(parts, res.Problems...)
	if len(parts) == 0 {
		return "no trigger had fired this period; nothing to re-arm"
	}
	return strings.Join(parts, "; ")
}

// rearm replaces every owned trigger of acct that fired in its rule's
// current period. Failures are returned as problems: an exception whose
// trigger could not be created is finished by the next reconcile.
func (b *Breaker) rearm(ctx context.Context, acct twilioapi.Account) ([]RearmedTrigger, []string) {
	s := b.settings.Load()
	prefix := rules.OwnedPrefix(s.Instance)
	ts, err := b.api.ListTriggers(ctx, acct.SID)
	if err != nil {
		return nil, []string{fmt.Sprintf("list triggers: %v (the next reconcile re-arms)", err)}
	}
	now := b.now()
	spent := map[string][]twilioapi.Trigger{} // rule -> owned triggers of it; re-armed if one fired this period
	fired := map[string]bool{}
	for _, t := range ts {
		name, ok := strings.CutPrefix(t.FriendlyName, prefix)
		if !ok {
			continue
		}
		spent[name] = append(spent[name], t)
		r := s.Rules.Get(name)
		if r == nil || t.DateFired == "" {
			continue
		}
		at, err := mail.ParseDate(t.DateFired)
		if err == nil && PeriodKey(r.Recurring, at) == PeriodKey(r.Recurring, now) {
			fired[name] = true
		}
	}
	names := make([]string, 0, len(fired))
	for n := range fired {
		names = append(names, n)
	}
	sort.Strings(names)
	var (
		out      []RearmedTrigger
		problems []string
	)
	for _, name := range names {
		r := s.Rules.Get(name)
		if !r.Matches(acct.SID, acct.FriendlyName) {
			continue // no longer wanted: the reconciler deletes it
		}
		rt, err := b.rearmRule(ctx, acct, r, s, now, spent[name])
		if err != nil {
			problems = append(problems, fmt.Sprintf("re-arm %s: %v", name, err))
			continue
		}
		out = append(out, rt)
	}
	return out, problems
}

// rearmRule records the exception, creates the "+allowance" trigger and
// deletes the spent ones.
func (b *Breaker) rearmRule(ctx context.Context, acct twilioapi.Account, r *rules.Rule, s *Settings, now time.Time, old []twilioapi.Trigger) (RearmedTrigger, error) {
	period := PeriodKey(r.Recurring, now)
	allowance := r.Allowance().String()
	// The exception first: a firing of the new trigger that arrives before
	// CompleteRearm already belongs to the new generation.
	ex, err := b.store.BeginRearm(ctx, acct.SID, r.Name, period, allowance, rules.PeriodEnd(r.Recurring, now))
	if err != nil {
		return RearmedTrigger{}, err
	}
	t, err := b.createRearmed(ctx, acct, r, s, ex)
	if err != nil {
		return RearmedTrigger{}, fmt.Errorf("%w (the next reconcile retries)", err)
	}
	rt := RearmedTrigger{Rule: r.Name, Period: period, Generation: ex.Generation, TriggerSID: t.SID,
		TriggerValue: t.TriggerValue.String(), Allowance: allowance}
	var errs []string
	for _, o := range old {
		if o.SID == t.SID {
			continue
		}
		if err := b.api.DeleteTrigger(ctx, acct.SID, o.SID); err != nil {
			errs = append(errs, fmt.Sprintf("delete spent trigger %s: %v (the next reconcile deletes it)", o.SID, err))
			continue
		}
		if rt.Replaced == "" {
			rt.Replaced = o.SID
		}
	}
	b.log.Info("trigger re-armed", "account", acct.SID, "rule", r.Name, "period", period, "generation", ex.Generation,
		"trigger", t.SID, "value", rt.TriggerValue, "allowance", allowance, "replaced", rt.Replaced)
	if len(errs) > 0 {
		return rt, errors.New(strings.Join(errs, "; "))
	}
	return rt, nil
}

// createRearmed creates the "+allowance" trigger of an exception and records it.
func (b *Breaker) createRearmed(ctx context.Context, acct twilioapi.Account, r *rules.Rule, s *Settings, ex store.Rearm) (twilioapi.Trigger, error) {
	spec := s.Spec(r) // with the callback credentials, if any
	spec.TriggerValue = "+" + ex.Allowance
	t, err := b.api.CreateTrigger(ctx, acct.SID, spec)
	if err != nil {
		return twilioapi.Trigger{}, fmt.Errorf("create trigger: %w", err)
	}
	b.m.Rearms.Inc()
	if err := b.store.CompleteRearm(context.WithoutCancel(ctx), acct.SID, r.Name, ex.Period, ex.Generation, t.SID, t.TriggerValue.String()); err != nil {
		return t, fmt.Errorf("record the re-armed trigger: %w", err)
	}
	return t, nil
}

// applyRearms makes the desired triggers of acct honour its open re-arm
// exceptions: while a rule's re-armed period lasts, the trigger the re-arm
// created is what is wanted, not the rule's threshold. A re-arm that a crash
// or a Twilio error interrupted is finished here.
func (b *Breaker) applyRearms(ctx context.Context, acct twilioapi.Account, desired []twilioapi.TriggerSpec) ([]twilioapi.TriggerSpec, error) {
	now := b.now()
	open, err := b.store.OpenRearms(ctx, acct.SID, now)
	if err != nil || len(open) == 0 {
		return desired, err
	}
	s := b.settings.Load()
	out := append([]twilioapi.TriggerSpec(nil), desired...)
	for _, ex := range open {
		r := s.Rules.Get(ex.Rule)
		if r == nil || PeriodKey(r.Recurring, now) != ex.Period {
			continue // the rule is gone or now counts another period: its own spec applies
		}
		for i := range out {
			if out[i].FriendlyName != r.TriggerFriendlyName(s.Instance) {
				continue
			}
			value := ex.TriggerValue
			if ex.TriggerSID == "" {
				t, err := b.createRearmed(ctx, acct, r, s, ex)
				if err != nil {
					return nil, fmt.Errorf("finish the re-arm of %s: %w", r.Name, err)
				}
				b.log.Info("interrupted re-arm finished", "account", acct.SID, "rule", r.Name, "trigger", t.SID, "value", t.TriggerValue.String())
				value = t.TriggerValue.String()
			}
			out[i].TriggerValue = value
		}
	}
	return out, nil
}

// markRearmsRestored marks the exceptions of ended periods as restored: this
// reconcile puts the rules' own thresholds back.
func (b *Breaker) markRearmsRestored(ctx context.Context) {
	if n, err := b.store.MarkRearmsRestored(ctx, b.now()); err != nil {
		b.log.Warn("cannot mark ended re-arms", "err", err)
	} else if n > 0 {
		b.log.Info("re-armed periods ended; restoring the rules' thresholds", "rearms", n)
	}
}

// executeReactivate runs a rule's scheduled reactivation.
func (b *Breaker) executeReactivate(ctx context.Context, a store.Action) {
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("read incident: %w", err))
		return
	}
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	r := b.Rule(inc.Rule)
	if r == nil || r.Reactivate == nil {
		why := fmt.Sprintf("rule %q no longer has a reactivate policy; the account stays suspended until a person reactivates it", inc.Rule)
		log.Warn("scheduled reactivation skipped", "why", why)
		b.finish(ctx, a, store.StateDone, OutcomeSkipped, why)
		return
	}
	policy := r.Reactivate.String()
	res, err := b.Reactivate(ctx, ReactivateRequest{AccountSID: inc.AccountSID, IncidentID: inc.ID, Via: store.ViaScheduled,
		Actor: "rule " + r.Name, Reason: "scheduled: reactivate " + policy})
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		log.Warn("scheduled reactivation skipped", "why", refused.Reason)
		b.finish(ctx, a, store.StateDone, OutcomeSkipped, refused.Reason)
	case err != nil && (twilioapi.IsRetryable(err) || !twilioapi.IsPermanent(err)):
		log.Warn("scheduled reactivation failed, will retry", "attempt", a.Attempts+1, "err", err)
		b.retry(ctx, a, err)
	case err != nil:
		log.Error("scheduled reactivation failed for good", "err", err)
		b.finish(ctx, a, store.StateFailed, OutcomeFailed, err.Error())
	default:
		b.finish(ctx, a, store.StateDone, OutcomeReactivated, describeRearm(res))
	}
}

// RunOperator does the periodic work of these features until ctx ends:
// when a re-armed period has ended it asks for a reconcile (which restores
// the rule's threshold), and it keeps the guard gauge current.
func (b *Breaker) RunOperator(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 15 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	b.refreshOperatorGauges(ctx)
	for {
		if n, err := b.store.CountExpiredRearms(ctx, b.now()); err == nil && n > 0 {
			b.requestReconcile()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
