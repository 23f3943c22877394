package breaker

// People in the loop: notifications, ending calls, the guard (guard.go) and
// reactivation with re-arm (reactivate.go). Each is an action of its own kind
// on the incident, run by the same executor as the trip, retried with backoff
// and done once (store: UNIQUE(incident_id, kind)):
//
//	trip                 suspend / notify / dry-run (trip.go)
//	end_calls            after the trip: end the subaccount's in-progress calls
//	notify:{notifier}    after the trip: tell one notifier what happened
//	guard:{notifier}     the one page per notifier when the guard starts holding
//	reactivate           the rule's reactivate policy, due at its time
//
// end_calls and notify:* wait until the trip action is finished (the store
// does not hand them out before), so a notification reports the outcome.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
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

// GuardSettings is the blast-radius guard; MaxSuspensions 0 turns it off.
type GuardSettings struct {
	MaxSuspensions int
	Window         time.Duration
}

// DefaultAdminURL is the CLI's default --admin-url.
const DefaultAdminURL = "http://127.0.0.1:9111"

// MaxNotifyAttempts bounds the attempts at one notification (with the
// backoff capped at RetryMax, 5 minutes by default, about three hours).
const MaxNotifyAttempts = 40

// Outcomes of the operator actions.
const (
	OutcomeSent        = "sent"
	OutcomeEnded       = "ended"
	OutcomeReactivated = "reactivated"
	OutcomeHeld        = "held"
)

// OperatorMetrics are the people-in-the-loop metrics (names from CONTRACT.md).
type OperatorMetrics struct {
	Notifications *prometheus.CounterVec // notifier, outcome: sent | failed
	Reactivations *prometheus.CounterVec // reason: manual | scheduled
	GuardHeld     prometheus.Gauge
	CallsEnded    prometheus.Counter
	Rearms        prometheus.Counter
}

func newOperatorMetrics(reg prometheus.Registerer) *OperatorMetrics {
	m := &OperatorMetrics{
		Notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_notifications_total",
			Help: "Notification attempts by notifier and outcome: sent, or failed (each failed attempt; it is retried unless permanent).",
		}, []string{"notifier", "outcome"}),
		Reactivations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_reactivations_total",
			Help: "Subaccounts reactivated after a suspension, by reason: manual (admin API, CLI) or scheduled (a rule's reactivate policy).",
		}, []string{"reason"}),
		GuardHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_guard_held",
			Help: "Suspensions the blast-radius guard holds until POST /api/v1/guard/release.",
		}),
		CallsEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usagebreaker_calls_ended_total",
			Help: "In-progress calls ended after a suspension (end_calls).",
		}),
		Rearms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usagebreaker_rearms_total",
			Help: "Triggers re-armed on reactivation (replaced by one offset by rearm_allowance).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Notifications, m.Reactivations, m.GuardHeld, m.CallsEnded, m.Rearms)
	}
	for _, r := range []string{store.ViaManual, store.ViaScheduled} {
		m.Reactivations.WithLabelValues(r)
	}
	return m
}

// operatorState is the breaker's in-memory state for these features.
type operatorState struct {
	guardMu    sync.Mutex
	guardSlots map[int64]bool // trip actions admitted by the guard and not finished yet

	locksMu sync.Mutex
	locks   map[string]*acctLock // account SID -> lock, while in use

	reconcileMu sync.Mutex
	reconcile   func() // asks the daemon for a reconcile soon
}

type acctLock struct {
	mu    sync.Mutex
	users int
}

func newOperatorState() *operatorState {
	return &operatorState{guardSlots: map[int64]bool{}, locks: map[string]*acctLock{}}
}

// lockAccount serialises the reconciler and a reactivation on one account.
func (o *operatorState) lockAccount(sid string) (unlock func()) {
	o.locksMu.Lock()
	l := o.locks[sid]
	if l == nil {
		l = &acctLock{}
		o.locks[sid] = l
	}
	l.users++
	o.locksMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		o.locksMu.Lock()
		if l.users--; l.users == 0 {
			delete(o.locks, sid)
		}
		o.locksMu.Unlock()
	}
}

// SetReconcileRequester gives the breaker a way to ask for a reconcile soon
// (after a re-arm could not finish, or when a re-arm's period ended).
func (b *Breaker) SetReconcileRequester(f func()) {
	b.op.reconcileMu.Lock()
	defer b.op.reconcileMu.Unlock()
	b.op.reconcile = f
}

func (b *Breaker) requestReconcile() {
	b.op.reconcileMu.Lock()
	f := b.op.reconcile
	b.op.reconcileMu.Unlock()
	if f != nil {
		f()
	}
}

// ActionKinds are the actions an incident of rule r starts with: the trip,
// end_calls if the rule says so, and one notify:{name} per notifier (the
// rule's notify list, else default_notifiers).
func (b *Breaker) ActionKinds(r *rules.Rule) []string {
	kinds := []string{store.ActionTrip}
	if r.EndCalls && r.Action == rules.ActionSuspend {
		kinds = append(kinds, store.ActionEndCalls)
	}
	for _, name := range b.notifierNames(r) {
		kinds = append(kinds, store.KindNotifyPrefix+name)
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

// IncidentPeriod is the incident period of a firing of rule on account in
// base (its plain period key): base, or "base#N" while a re-arm exception of
// generation N exists for it. The poller must use it too, so that its
// firings land on the same incidents as the callbacks.
func (b *Breaker) IncidentPeriod(ctx context.Context, rule, accountSID, base string) (string, error) {
	return b.incidentPeriod(ctx, rule, accountSID, base)
}

func (b *Breaker) incidentPeriod(ctx context.Context, rule, accountSID, base string) (string, error) {
	ex, err := b.store.RearmFor(ctx, accountSID, rule, base)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return base, nil
	case err != nil:
		return "", fmt.Errorf("read re-arm: %w", err)
	}
	return fmt.Sprintf("%s#%d", base, ex.Generation), nil
}

// executeOperator runs the action kinds of this file; false for a kind it
// does not know.
func (b *Breaker) executeOperator(ctx context.Context, a store.Action) bool {
	if !operatorKind(a.Kind) {
		return false
	}
	a, run := b.current(ctx, a)
	if !run {
		return true
	}
	switch {
	case a.Kind == store.ActionEndCalls:
		b.executeEndCalls(ctx, a)
	case a.Kind == store.ActionReactivate:
		b.executeReactivate(ctx, a)
	case strings.HasPrefix(a.Kind, store.KindNotifyPrefix):
		b.executeNotify(ctx, a, strings.TrimPrefix(a.Kind, store.KindNotifyPrefix), notify.KindIncident)
	case strings.HasPrefix(a.Kind, store.KindGuardPrefix):
		b.executeNotify(ctx, a, strings.TrimPrefix(a.Kind, store.KindGuardPrefix), notify.KindGuard)
	}
	return true
}

func operatorKind(kind string) bool {
	return kind == store.ActionEndCalls || kind == store.ActionReactivate ||
		strings.HasPrefix(kind, store.KindNotifyPrefix) || strings.HasPrefix(kind, store.KindGuardPrefix)
}

// current re-reads action a before it runs and reports whether it should:
// a is the executor's snapshot of the pending actions, which may be older
// than an attempt that ran (and finished, or was retried) after the snapshot
// was read; such a copy must not send a page or a notification again. A
// scheduled reactivation also waits for its time: at start the executor
// hands out every pending action whatever its NextAttemptAt.
func (b *Breaker) current(ctx context.Context, a store.Action) (store.Action, bool) {
	acts, err := b.store.IncidentActions(ctx, []int64{a.IncidentID})
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("read the action: %w", err))
		return a, false
	}
	for _, cur := range acts[a.IncidentID] {
		if cur.ID != a.ID {
			continue
		}
		switch {
		case cur.State != store.StatePending || cur.Attempts != a.Attempts:
			b.log.Debug("action already ran since it was read; not running it again", "action", a.ID, "kind", a.Kind,
				"incident", a.IncidentID, "state", cur.State, "attempts", cur.Attempts)
			return cur, false
		case cur.Kind == store.ActionReactivate && cur.NextAttemptAt.After(b.now()):
			b.log.Debug("scheduled reactivation not due yet", "action", a.ID, "incident", a.IncidentID, "due", cur.NextAttemptAt)
			return cur, false
		}
		return cur, true // with its latest progress
	}
	return a, false // gone
}

// actionFinished updates the gauges after an action ended.
func (b *Breaker) actionFinished(a store.Action) {
	if a.Kind != store.ActionReactivate { // scheduled reactivations are not counted as pending work
		b.m.ActionsPending.Dec()
	}
	if a.Kind == store.ActionTrip {
		b.Wake() // its notifications and end_calls are due now
	}
}

// finishTrip ends a trip action; after a suspension by a rule with a
// reactivate policy it schedules the reactivation in the same transaction.
func (b *Breaker) finishTrip(ctx context.Context, a store.Action, r *rules.Rule, outcome, detail string) {
	if outcome == OutcomeSuspended {
		// The guard counts this suspension by its slot until it is in the
		// store, then by the store: never both (see guardRecord).
		b.guardRecord(a.ID, func() { b.recordTrip(ctx, a, r, outcome, detail) })
		return
	}
	b.recordTrip(ctx, a, r, outcome, detail)
}

func (b *Breaker) recordTrip(ctx context.Context, a store.Action, r *rules.Rule, outcome, detail string) {
	if outcome != OutcomeSuspended || r.Reactivate == nil {
		b.finish(ctx, a, store.StateDone, outcome, detail)
		return
	}
	due := r.Reactivate.Due(r.Recurring, b.now())
	err := b.store.FinishActionThen(ctx, a.ID, store.StateDone, outcome, detail,
		[]store.Scheduled{{Kind: store.ActionReactivate, At: due}})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		b.log.Error("cannot record the action's end; it will run again and find the work done", "action", a.ID, "err", err)
		return
	}
	b.log.Info("reactivation scheduled", "incident", a.IncidentID, "rule", r.Name, "policy", r.Reactivate.String(), "due", due)
	b.actionFinished(a)
}

// ---- notifications ----

func (b *Breaker) executeNotify(ctx context.Context, a store.Action, name, kind string) {
	log := b.log.With("incident", a.IncidentID, "notifier", name, "event", kind)
	n := b.notifier(name)
	if n == nil {
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		log.Error("notification dropped: the notifier is no longer configured")
		b.finish(ctx, a, store.StateFailed, OutcomeFailed, fmt.Sprintf("notifier %q is no longer configured", name))
		return
	}
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("read incident: %w", err))
		return
	}
	ev, err := b.event(ctx, inc, kind)
	if err != nil {
		b.retry(ctx, a, err)
		return
	}
	p := notify.ParseProgress(a.Progress)
	err = n.Send(ctx, ev, p)
	if p.Changed() {
		if perr := b.store.SetActionProgress(context.WithoutCancel(ctx), a.ID, p.String()); perr != nil {
			log.Error("cannot record which recipients were notified; a retry may repeat them", "err", perr)
		}
	}
	switch {
	case err == nil:
		b.m.Notifications.WithLabelValues(name, OutcomeSent).Inc()
		log.Info("notification sent", "type", n.Type(), "attempt", a.Attempts+1)
		b.finish(ctx, a, store.StateDone, OutcomeSent, "")
	case notify.IsPermanent(err) || a.Attempts+1 >= MaxNotifyAttempts:
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		log.Error("notification failed for good", "type", n.Type(), "attempt", a.Attempts+1, "err", err)
		b.finish(ctx, a, store.StateFailed, OutcomeFailed, err.Error())
	default:
		b.m.Notifications.WithLabelValues(name, "failed").Inc()
		log.Warn("notification failed, will retry", "type", n.Type(), "attempt", a.Attempts+1, "err", err)
		b.retry(ctx, a, err)
	}
}

// event describes an incident (or, for a guard page, the guard) for notifiers.
func (b *Breaker) event(ctx context.Context, inc store.Incident, kind string) (*notify.Event, error) {
	s := b.settings.Load()
	ni := &notify.Incident{ID: inc.ID, Rule: inc.Rule, AccountSID: inc.AccountSID, AccountName: inc.AccountName,
		UsageCategory: inc.UsageCategory, TriggerBy: inc.TriggerBy, Recurring: inc.Recurring, Period: inc.Period,
		Value: inc.CurrentValue, Threshold: inc.TriggerValue, Action: inc.Action, DryRun: inc.DryRun,
		Outcome: inc.Outcome, Detail: inc.Detail, CreatedAt: inc.CreatedAt}
	r := s.Rules.Get(inc.Rule)
	if r != nil {
		ni.RuleDescription = r.Description
		ni.EndCalls = r.EndCalls && r.Action == rules.ActionSuspend
		if ni.Recurring == "" {
			ni.Recurring = r.Recurring
		}
	}
	if ni.Outcome == "" && kind == notify.KindGuard {
		ni.Outcome = OutcomeHeld
	}
	ni.Taken = taken(ni)
	if ni.Outcome == OutcomeSuspended {
		ni.Reactivate = ReactivateCommand(inc.AccountSID, s.Operator.AdminURL)
		acts, err := b.store.IncidentActions(ctx, []int64{inc.ID})
		if err != nil {
			return nil, fmt.Errorf("read the incident's actions: %w", err)
		}
		for _, a := range acts[inc.ID] {
			if a.Kind == store.ActionReactivate && a.State == store.StatePending {
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
	switch i.Outcome {
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
	case OutcomeHeld:
		return "HELD by the guard, not suspended"
	}
	return i.Outcome
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

// ---- end_calls ----

func (b *Breaker) executeEndCalls(ctx context.Context, a store.Action) {
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("read incident: %w", err))
		return
	}
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	if inc.Outcome != OutcomeSuspended && inc.Outcome != OutcomeAlreadySuspended {
		b.finish(ctx, a, store.StateDone, OutcomeSkipped, fmt.Sprintf("the account was not suspended (outcome %q): its calls are left alone", inc.Outcome))
		return
	}
	calls, err := b.api.ListInProgressCalls(ctx, inc.AccountSID)
	if err != nil {
		b.endCallsFailed(ctx, a, log, fmt.Errorf("list in-progress calls: %w", err))
		return
	}
	ended := 0
	for _, c := range calls {
		err := b.api.EndCall(ctx, inc.AccountSID, c.SID)
		switch {
		case err == nil:
			ended++
			b.m.CallsEnded.Inc()
		case twilioapi.IsNotFound(err):
			// gone already
		default:
			// The calls ended so far are no longer in progress: a retry
			// lists only the rest.
			b.endCallsFailed(ctx, a, log, fmt.Errorf("end call %s: %w", c.SID, err))
			return
		}
	}
	log.Info("in-progress calls ended", "calls", ended)
	b.finish(ctx, a, store.StateDone, OutcomeEnded, fmt.Sprintf("ended %d in-progress call(s)", ended))
}

func (b *Breaker) endCallsFailed(ctx context.Context, a store.Action, log *slog.Logger, err error) {
	if twilioapi.IsRetryable(err) || ctx.Err() != nil {
		log.Warn("ending calls failed, will retry", "attempt", a.Attempts+1, "err", err)
		b.retry(ctx, a, err)
		return
	}
	log.Error("ending calls failed for good", "err", err)
	b.finish(ctx, a, store.StateFailed, OutcomeFailed, err.Error())
}
