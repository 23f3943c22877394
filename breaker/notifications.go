package breaker

// Notifications: one notify:{notifier} action per notifier on every incident
// (after the trip, so it reports the outcome), and one guard:{notifier} page
// per notifier when the guard starts holding suspensions.

import (
	"context"
	"fmt"
	"strings"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
)

// OperatorSettings are the people-in-the-loop parts of the settings.
type OperatorSettings struct {
	Notifiers        []notify.Notifier // in config order
	DefaultNotifiers []string          // for rules without notify
	Guard            GuardSettings
	// AdminURL is where the admin API is, for the commands messages show
	// ("" or the default: the commands carry no --admin-url).
	AdminURL string
}

// DefaultAdminURL is the CLI's default --admin-url.
const DefaultAdminURL = "http://127.0.0.1:9111"

// MaxNotifyAttempts bounds the attempts at one notification (with the
// backoff capped at RetryMax, 5 minutes by default, about three hours).
const MaxNotifyAttempts = 40

// Outcomes of the operator actions.
const (
	OutcomeSent        = store.OutcomeSent
	OutcomeEnded       = store.OutcomeEnded
	OutcomeReactivated = store.OutcomeReactivated
	OutcomeHeld        = "held" // a notification's word for a trip the guard holds
)

// ActionKinds are the actions an incident of rule r starts with: the trip,
// end_calls if the rule says so, and one notify:{name} per notifier (the
// rule's notify list, else default_notifiers).
func (b *Breaker) ActionKinds(r *rules.Rule) []store.ActionKind {
	kinds := []store.ActionKind{store.ActionTrip}
	if r.EndCalls && r.Action == rules.ActionSuspend {
		kinds = append(kinds, store.ActionEndCalls)
	}
	for _, name := range b.notifierNames(r) {
		kinds = append(kinds, store.NotifyKind(name))
	}
	return kinds
}

func (b *Breaker) notifierNames(r *rules.Rule) []string {
	op := b.settings.Load().Operator
	if r.NotifySet {
		return r.Notify
	}
	return op.DefaultNotifiers
}

func (b *Breaker) notifier(name string) notify.Notifier {
	for _, n := range b.settings.Load().Operator.Notifiers {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

// What a notification is about.
const (
	notifyIncident = notify.KindIncident
	notifyGuard    = notify.KindGuard
)

// workNotify is the worker of notify:{name} (kind notifyIncident) and
// guard:{name} (notifyGuard) actions: send once; a notifier that reaches
// several recipients records which it reached (progress), so a retry sends
// only to the rest.
func (b *Breaker) workNotify(ctx context.Context, a store.Action, kind string) Result {
	name, _ := a.Kind.Notifier()
	log := b.log.With("incident", a.IncidentID, "notifier", name, "event", kind)
	n := b.notifier(name)
	if n == nil {
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		log.Error("notification dropped: the notifier is no longer configured")
		return Fail(fmt.Errorf("notifier %q is no longer configured", name))
	}
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		return Retry(fmt.Errorf("read incident: %w", err))
	}
	ev, err := b.event(ctx, inc, kind)
	if err != nil {
		return Retry(err)
	}
	p := notify.ParseProgress(a.Progress)
	err = n.Send(ctx, ev, p)
	var res Result
	switch {
	case err == nil:
		b.m.Notifications.WithLabelValues(name, string(store.OutcomeSent)).Inc()
		log.Info("notification sent", "type", n.Type(), "attempt", a.Attempts+1)
		res = Done(store.OutcomeSent, "")
	case notify.IsPermanent(err) || a.Attempts+1 >= MaxNotifyAttempts:
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		log.Error("notification failed for good", "type", n.Type(), "attempt", a.Attempts+1, "err", err)
		res = Fail(err)
	default:
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		b.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		log.Warn("notification failed, will retry", "type", n.Type(), "attempt", a.Attempts+1, "err", err)
		res = Retry(err)
	}
	if p.Changed() {
		res = res.WithProgress(p.String())
	}
	return res
}

// event describes an incident (or, for a guard page, the guard) for notifiers.
func (b *Breaker) event(ctx context.Context, inc store.Incident, kind string) (*notify.Event, error) {
	s := b.settings.Load()
	ni := &notify.Incident{ID: inc.ID, Rule: inc.Rule, AccountSID: inc.AccountSID, AccountName: inc.AccountName,
		UsageCategory: inc.UsageCategory, TriggerBy: inc.TriggerBy, Recurring: inc.Recurring, Period: inc.Period,
		Value: inc.CurrentValue, Threshold: inc.TriggerValue, Action: inc.Action, DryRun: inc.DryRun,
		Outcome: string(inc.Outcome), Detail: inc.Detail, CreatedAt: inc.CreatedAt}
	r := s.Rules.Get(inc.Rule)
	if r != nil {
		ni.RuleDescription = r.Description
		ni.EndCalls = r.EndCalls && r.Action == rules.ActionSuspend
		if ni.Recurring == "" {
			ni.Recurring = r.Recurring
		}
		if _, ok := velocityStart(inc.Period); ok && ni.Recurring == "" && r.Velocity != nil {
			// A velocity incident: Value is the growth, Threshold the amount.
			ni.Recurring = "growth within " + r.Velocity.Within.String()
		}
	}
	if ni.Outcome == "" && kind == notify.KindGuard {
		ni.Outcome = OutcomeHeld
	}
	ni.Taken = taken(ni)
	if ni.Outcome == string(OutcomeSuspended) {
		ni.Reactivate = ReactivateCommand(inc.AccountSID, s.Operator.AdminURL)
		acts, err := b.store.IncidentActions(ctx, []int64{inc.ID})
		if err != nil {
			return nil, fmt.Errorf("read the incident's actions: %w", err)
		}
		for _, a := range acts[inc.ID] {
			if a.Kind == store.ActionReactivate && !a.State.Finished() {
				policy := "scheduled"
				if r != nil && r.Reactivate != nil {
					policy = "reactivate: " + r.Reactivate.String()
				}
				ni.AutoReactivate = fmt.Sprintf("%s (%s)", a.NextAttemptAt.UTC().Format("2006-01-02 15:04:05 UTC"), policy)
			}
		}
	}
	ev := &notify.Event{Kind: kind, ID: fmt.Sprintf("%s-%s-%d", s.Instance, kind, inc.ID), Instance: s.Instance,
		At: inc.CreatedAt.UTC(), Incident: ni}
	if kind == notify.KindGuard {
		g := s.Operator.Guard
		held, err := b.store.CountHeld(ctx)
		if err != nil {
			return nil, fmt.Errorf("count held: %w", err)
		}
		n, err := b.store.CountSuspensions(ctx, b.now().Add(-g.Window))
		if err != nil {
			return nil, fmt.Errorf("count suspensions: %w", err)
		}
		ev.Guard = &notify.Guard{MaxSuspensions: g.MaxSuspensions, Window: g.Window, Suspended: n, Held: held,
			Release: ReleaseCommand(s.Operator.AdminURL)}
	}
	ev.Headline = notify.Headline(ev)
	return ev, nil
}

// taken words the action taken on an incident, or why none was.
func taken(i *notify.Incident) string {
	switch store.Outcome(i.Outcome) {
	case OutcomeSuspended:
		if i.EndCalls {
			return "suspended the subaccount and ends its in-progress calls"
		}
		return "suspended the subaccount"
	case OutcomeAlreadySuspended:
		return "none: " + i.Detail
	case OutcomeDryRun:
		return "none (dry run): " + strings.TrimPrefix(i.Detail, "dry run: ")
	case OutcomeNotified:
		return "none: the rule only notifies"
	case OutcomeSkipped:
		return "none: " + i.Detail
	case OutcomeFailed:
		return "suspension FAILED: " + i.Detail
	case store.OutcomeAwaitingApproval:
		return "none yet, " + strings.TrimPrefix(i.Detail, "awaiting approval: ")
	case store.OutcomeVetoed:
		return "none: " + i.Detail
	case OutcomeHeld:
		return "HELD by the guard, not suspended"
	}
	return string(i.Outcome)
}

// ReactivateCommand is the CLI command that reactivates an account.
func ReactivateCommand(sid, adminURL string) string {
	cmd := fmt.Sprintf(`usagebreaker reactivate %s --reason "..."`, sid)
	if adminURL != "" && adminURL != DefaultAdminURL {
		cmd += " --admin-url " + adminURL
	}
	return cmd
}

// ReleaseCommand says how to release held suspensions.
func ReleaseCommand(adminURL string) string {
	if adminURL == "" {
		adminURL = DefaultAdminURL
	}
	return fmt.Sprintf(`curl -X POST -H "Authorization: Bearer $USAGEBREAKER_ADMIN_TOKEN" %s/api/v1/guard/release`, adminURL)
}
