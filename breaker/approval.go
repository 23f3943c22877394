package breaker

import (
	"context"
	"fmt"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
)

// Approval: a rule with `approval` holds its suspension for a person. The
// trip is verified as usual; then, until a person decides or the window
// ends, it snoozes until the window's end, the incident shows
// awaiting_approval, and every notifier of the rule is told once (an
// approval:{notifier} action) what will happen, when, and the commands.
// A decision (store.Decide) makes the trip due at once: a veto ends it
// vetoed, an approval lets it act. The window is counted from the
// incident's creation, in the store, so it survives restarts: a window
// that ended while the daemon was down acts at start. The guard still
// applies when the suspension finally runs.

// approvalRecheck is how long a trip waiting for an approval with no
// window snoozes before it looks again (a decision wakes it at once).
const approvalRecheck = 24 * time.Hour

// awaitApproval decides whether the trip of inc, verified as a suspension,
// must wait for a person (wait true, with the snooze, or a veto's end), or
// may act now (an approval, or the window ended).
func (b *Breaker) awaitApproval(ctx context.Context, inc store.Incident, r *rules.Rule) (res Result, wait bool, err error) {
	decisions, err := b.store.Approvals(ctx, []int64{inc.ID})
	if err != nil {
		return Result{}, true, fmt.Errorf("read the incident's approval: %w", err)
	}
	if d, ok := decisions[inc.ID]; ok {
		if d.Decision == store.DecisionVeto {
			return Done(store.OutcomeVetoed, fmt.Sprintf("vetoed by %s at %s: %s", d.Actor, d.CreatedAt.UTC().Format(time.RFC3339), d.Reason)).
				ForgettingWriteSent(), true, nil
		}
		return Result{}, false, nil // approved
	}
	ap := r.Approval
	now := b.now()
	var deadline time.Time
	if ap.Window > 0 {
		deadline = inc.CreatedAt.Add(ap.Window)
		if !now.Before(deadline) {
			return Result{}, false, nil // nobody vetoed (veto) or answered (approve) in time
		}
	}
	adminURL := b.settings.Load().Operator.AdminURL
	approve, veto := DecisionCommand("approve", inc.ID, adminURL), DecisionCommand("veto", inc.ID, adminURL)
	var what string
	switch {
	case ap.Mode == rules.ApprovalVeto:
		what = fmt.Sprintf("suspends at %s unless vetoed (veto: %s; approve now: %s)", deadline.UTC().Format("2006-01-02 15:04:05 UTC"), veto, approve)
	case deadline.IsZero():
		what = fmt.Sprintf("suspends only once approved (approve: %s; veto: %s)", approve, veto)
	default:
		what = fmt.Sprintf("suspends once approved, or at %s if nobody answers (approve: %s; veto: %s)", deadline.UTC().Format("2006-01-02 15:04:05 UTC"), approve, veto)
	}
	until := deadline
	if until.IsZero() {
		until = now.Add(approvalRecheck)
	}
	var notices []store.Scheduled
	for _, name := range b.notifierNames(r) {
		notices = append(notices, store.Scheduled{Kind: store.ApprovalNoticeKind(name), At: now})
	}
	return SnoozeUntil(until, "awaiting approval: "+what).Showing(store.OutcomeAwaitingApproval).Then(notices...), true, nil
}

// Decide records a person's approval or veto of incident id and wakes the
// engine, which acts on it at once. It is refused (store.ErrExists) when
// the incident was decided before.
func (b *Breaker) Decide(ctx context.Context, id int64, d store.Decision, actor, reason string) (store.Approval, error) {
	inc, err := b.store.Incident(ctx, id)
	if err != nil {
		return store.Approval{}, err
	}
	if inc.State != store.StatePending || inc.Outcome != store.OutcomeAwaitingApproval {
		return store.Approval{}, &RefusedError{Reason: fmt.Sprintf("incident %d is not awaiting approval (state %s, outcome %s)", id, inc.State, orNone(string(inc.Outcome)))}
	}
	a, err := b.store.Decide(ctx, store.Approval{IncidentID: id, Decision: d, Actor: actor, Reason: reason, CreatedAt: b.now()})
	if err != nil {
		return a, err
	}
	b.log.Warn(map[store.Decision]string{store.DecisionApprove: "incident approved", store.DecisionVeto: "incident vetoed"}[d], "incident", id, "rule", inc.Rule, "account", inc.AccountSID, "by", actor, "reason", reason)
	b.engine.Wake()
	return a, nil
}

// DecisionCommand is the CLI command that approves or vetoes an incident.
func DecisionCommand(verb string, id int64, adminURL string) string {
	cmd := fmt.Sprintf(`usagebreaker %s %d --reason "..."`, verb, id)
	if adminURL != "" && adminURL != DefaultAdminURL {
		cmd += " --admin-url " + adminURL
	}
	return cmd
}
