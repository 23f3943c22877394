package breaker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/mail"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Incident outcomes (store.Incident.Outcome). The first four are also the
// outcome label of usagebreaker_suspensions_total.
const (
	OutcomeSuspended        = "suspended"
	OutcomeAlreadySuspended = "already_suspended"
	OutcomeDryRun           = "dry_run"
	OutcomeFailed           = "failed"
	OutcomeNotified         = "notified"
	OutcomeSkipped          = "skipped"
)

// Callback is a verified Usage Trigger callback's parameters.
type Callback struct {
	AccountSID       string
	UsageTriggerSID  string
	DateFired        string
	Recurring        string
	UsageCategory    string
	TriggerBy        string
	TriggerValue     string
	CurrentValue     string
	UsageRecordURI   string
	IdempotencyToken string
	// Arrived is when the callback reached the daemon (the handler's start);
	// zero if unknown. It measures the time to the suspend write.
	Arrived time.Time
}

// PeriodKey names the interval of a rule's recurring that t (GMT) falls in:
// "daily:2026-11-24", "monthly:2026-11", "yearly:2026" or "alltime". One
// incident exists per (rule, subaccount, period key).
func PeriodKey(recurring string, t time.Time) string {
	t = t.UTC()
	switch recurring {
	case "daily":
		return "daily:" + t.Format("2006-01-02")
	case "monthly":
		return "monthly:" + t.Format("2006-01")
	case "yearly":
		return "yearly:" + t.Format("2006")
	default:
		return "alltime"
	}
}

// firedAt is when Twilio says the trigger fired (RFC 2822), else fallback.
func firedAt(dateFired string, fallback time.Time) time.Time {
	if t, err := mail.ParseDate(dateFired); err == nil {
		return t
	}
	return fallback
}

// AcceptResult says what Accept recorded.
type AcceptResult struct {
	Incident store.Incident
	// Duplicate: nothing new (a repeat of the token, or another firing of an
	// incident that already exists).
	Duplicate bool

	rec store.RecordResult // what the store said
}

// Accept durably records a verified callback for rule r from subaccount acct
// and wakes the executor. When it returns nil the firing survives a crash and
// the callback may be answered 200; the action runs afterwards.
//
// A suspension whose rule and account allow it runs on the fast path
// (fast.go): its read starts now, and it is written as soon as the commit
// returns, by this process.
func (b *Breaker) Accept(ctx context.Context, r *rules.Rule, acct twilioapi.Account, cb Callback) (res AcceptResult, err error) {
	now := b.now()
	var claim *store.Claim
	if ft := b.claimFast(r, acct.SID, cb.IdempotencyToken, cb.Arrived); ft != nil {
		claim = b.claim(now)
		defer func() { ft.committed(b, res.rec, err) }()
	}
	// After a re-arm, a firing in the same period belongs to the re-armed
	// generation: its own incident ("daily:2026-11-24#2"), so it trips again.
	period, err := b.incidentPeriod(ctx, r.Name, acct.SID, PeriodKey(r.Recurring, firedAt(cb.DateFired, now)))
	if err != nil {
		return AcceptResult{}, err
	}
	f := store.Firing{
		Source:           store.SourceCallback,
		IdempotencyToken: cb.IdempotencyToken,
		Rule:             r.Name,
		AccountSID:       acct.SID,
		AccountName:      acct.FriendlyName,
		Period:           period,
		UsageTriggerSID:  cb.UsageTriggerSID,
		UsageCategory:    cb.UsageCategory,
		TriggerBy:        cb.TriggerBy,
		Recurring:        cb.Recurring,
		TriggerValue:     cb.TriggerValue,
		CurrentValue:     cb.CurrentValue,
		DateFired:        cb.DateFired,
		Action:           r.Action,
		DryRun:           r.DryRun,
		ReceivedAt:       now,
		Actions:          b.ActionKinds(r),
		Claim:            claim,
	}
	res, err = b.record(ctx, f)
	if err == nil {
		b.tokens.add(cb.IdempotencyToken) // a replay takes no fast path (and costs no read)
	}
	return res, err
}

func (b *Breaker) record(ctx context.Context, f store.Firing) (AcceptResult, error) {
	res, err := b.store.RecordFiring(ctx, f)
	if err != nil {
		return AcceptResult{}, fmt.Errorf("record firing: %w", err)
	}
	switch {
	case res.NewIncident:
		b.m.Incidents.WithLabelValues(f.Rule, f.Source).Inc()
		b.m.ActionsPending.Add(float64(len(f.Actions)))
		if f.Claim == nil {
			// A claimed trip is run by the fast path, and the incident's
			// other actions wait for its outcome (which wakes the executor).
			b.Wake()
		}
	case res.Reopened:
		// The incident's trip had ended skipped or failed; this new firing put
		// it back to pending, to be verified again on the new values.
		b.log.Info("incident reopened by a new firing", "incident", res.Incident.ID, "rule", f.Rule,
			"account", f.AccountSID, "source", f.Source, "current_value", f.CurrentValue)
		b.UpdatePendingGauge(ctx)
		b.Wake()
	}
	return AcceptResult{Incident: res.Incident, Duplicate: !res.NewIncident && !res.Reopened, rec: res}, nil
}

// RunExecutor runs due actions until ctx ends: at start (resuming whatever a
// previous process left pending), when woken, and every second for retries.
// When ctx ends it stops taking actions and gives those in flight up to drain
// to finish; what is still unfinished then stays pending for the next start.
func (b *Breaker) RunExecutor(ctx context.Context, drain time.Duration) {
	actx, cancelActions := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelActions()
	var wg sync.WaitGroup
	sem := make(chan struct{}, b.workers)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	b.loadLeases(ctx)
	b.UpdatePendingGauge(ctx)
	// At start every pending action is resumed, whatever its backoff said
	// (the restart may be the fix it waited for); the write leases still hold.
	b.runPending(ctx, actx, sem, &wg, b.now().AddDate(50, 0, 0), 0)
	// Only then may new callbacks take the fast path: that pass took every
	// pending action, claimed ones too, and later passes take due ones only.
	st := &execState{actx: actx, sem: sem, wg: &wg}
	b.exec.Store(st)
	for {
		b.runDue(ctx, actx, sem, &wg)
		select {
		case <-ctx.Done():
			st.mu.Lock()
			st.closed = true // no fast path starts after this: wg.Wait below sees them all
			st.mu.Unlock()
			b.exec.CompareAndSwap(st, nil)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(drain):
				b.log.Warn("shutdown: actions still running after the drain timeout; they stay pending for the next start", "drain", drain)
				cancelActions()
				<-done
			}
			return
		case <-b.wake:
		case <-tick.C:
			b.UpdatePendingGauge(ctx) // the store is the truth; the gauge never drifts
		}
	}
}

func (b *Breaker) runDue(ctx, actx context.Context, sem chan struct{}, wg *sync.WaitGroup) {
	b.runPending(ctx, actx, sem, wg, b.now(), 256)
}

// runPending starts the pending actions due at upTo (at most limit; 0: all).
func (b *Breaker) runPending(ctx, actx context.Context, sem chan struct{}, wg *sync.WaitGroup, upTo time.Time, limit int) {
	acts, err := b.store.PendingActions(ctx, upTo, limit)
	if err != nil {
		if ctx.Err() == nil {
			b.log.Error("cannot read pending actions", "err", err)
		}
		return
	}
	for _, a := range acts {
		if _, busy := b.inflight.LoadOrStore(a.ID, struct{}{}); busy {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			b.inflight.Delete(a.ID)
			return
		}
		wg.Add(1)
		go func(a store.Action) {
			defer func() {
				<-sem
				b.inflight.Delete(a.ID)
				wg.Done()
			}()
			b.execute(actx, a)
		}(a)
	}
}

// RunDueOnce runs every due action to completion (tests and the demo use it
// to step the pipeline deterministically).
func (b *Breaker) RunDueOnce(ctx context.Context) {
	var wg sync.WaitGroup
	b.runDue(ctx, ctx, make(chan struct{}, b.workers), &wg)
	wg.Wait()
}

func (b *Breaker) execute(ctx context.Context, a store.Action) {
	switch a.Kind {
	case store.ActionTrip:
		// The executor works from a batch read earlier: an action another
		// pass has run since must not run again from this old copy.
		cur, run := b.current(ctx, a)
		if !run {
			return
		}
		b.executeTrip(ctx, cur)
	default:
		if !b.executeOperator(ctx, a) { // notify:*, guard:*, end_calls, reactivate
			b.finish(ctx, a, store.StateFailed, OutcomeFailed, fmt.Sprintf("unknown action kind %q", a.Kind))
		}
	}
}

// errSkip carries why an incident is not acted on.
type errSkip struct{ why string }

func (e errSkip) Error() string { return e.why }

func (b *Breaker) executeTrip(ctx context.Context, a store.Action) {
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("read incident: %w", err))
		return
	}
	// One action per subaccount at a time: two incidents of one account (two
	// rules crossed at once) must not both read "active" and both write.
	unlock := b.acctMu.lock(inc.AccountSID)
	defer unlock()
	b.runTrip(ctx, a, inc, nil)
}

// runTrip verifies and acts on trip action a of incident inc and records
// the outcome; the caller holds the account's lock. fast is set on the fast
// path (fast.go).
func (b *Breaker) runTrip(ctx context.Context, a store.Action, inc store.Incident, fast *fastRun) {
	defer b.guardDone(a.ID) // after the outcome is recorded
	r := b.Rule(inc.Rule)
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName, "source", inc.Source)
	var took atomic.Int64 // ns from the callback to the suspend write, when one was sent
	outcome, detail, err := b.trip(ctx, a, inc, r, fast, &took)
	var (
		skip errSkip
		held errHeld
		wait errWait
	)
	switch {
	case errors.As(err, &held):
		b.hold(ctx, a, inc, held)
	case errors.As(err, &skip):
		b.m.Skipped.WithLabelValues(inc.Rule).Inc()
		log.Warn("incident skipped", "why", skip.why)
		b.finish(ctx, a, store.StateDone, OutcomeSkipped, skip.why)
	case errors.As(err, &wait):
		log.Info("action deferred", "why", wait.why, "until", wait.until)
		if err := b.store.NoteAction(context.WithoutCancel(ctx), a.ID, wait.until, keepMark(a, wait.why)); err != nil {
			b.log.Error("cannot record a deferred action", "action", a.ID, "err", err)
		}
	case err != nil && givesUp(err) && ctx.Err() == nil:
		if r != nil && r.Action == rules.ActionSuspend && !r.DryRun {
			b.m.Suspensions.WithLabelValues(inc.Rule, OutcomeFailed).Inc()
		}
		log.Error("action failed for good", "err", err)
		b.finish(ctx, a, store.StateFailed, OutcomeFailed, err.Error())
	case err != nil:
		log.Warn("action failed, will retry", "attempt", a.Attempts+1, "err", err)
		b.retry(ctx, a, err)
	default:
		if r.Action == rules.ActionSuspend {
			b.m.Suspensions.WithLabelValues(inc.Rule, outcome).Inc()
		}
		attrs := []any{"outcome", outcome, "detail", detail, "current_value", inc.CurrentValue, "threshold", r.Threshold.String()}
		if ns := took.Load(); ns > 0 {
			attrs = append(attrs, "receipt_to_write", time.Duration(ns))
			if fast != nil {
				attrs = append(attrs, "twilio_wait", fast.twilioWait)
			}
		}
		log.Info("incident handled", attrs...)
		b.finishTrip(ctx, a, r, outcome, detail) // schedules the rule's reactivation after a suspension
	}
}

// trip verifies the incident against the current rule and account, then acts.
// On the fast path the account was read already (fast) and the write-intent
// mark was committed with the firing. took receives the time from the
// callback's receipt to the suspend request's first write.
func (b *Breaker) trip(ctx context.Context, a store.Action, inc store.Incident, r *rules.Rule, fast *fastRun, took *atomic.Int64) (outcome, detail string, err error) {
	// Verify.
	if r == nil {
		return "", "", errSkip{fmt.Sprintf("rule %q no longer exists", inc.Rule)}
	}
	suspend := r.Action == rules.ActionSuspend && !r.DryRun
	if suspend {
		// A write sent before a restart may still land: read only after it may have.
		if until, held := b.leases.until(inc.AccountSID, b.now()); held {
			return "", "", errWait{until, "waiting for a suspend write that may still land (sent before a restart, or its answer lost)"}
		}
	}
	var acct twilioapi.Account
	cached, ok := b.accounts.Cached(inc.AccountSID)
	switch {
	case fast != nil:
		acct, err = fast.acct, fast.err // fresh: read under the account's lock
	case ok && !suspend:
		acct = cached
	default:
		// A suspension is decided on a fresh read (read before write: after a
		// crash or a lost answer the account may already be suspended).
		acct, err = b.readAccount(ctx, inc.AccountSID)
	}
	if errors.Is(err, ErrNotSubaccount) {
		return "", "", errSkip{"the account is not a subaccount of the parent any more"}
	}
	if err != nil {
		return "", "", err
	}
	if !r.Matches(acct.SID, acct.FriendlyName) {
		return "", "", errSkip{fmt.Sprintf("rule %q no longer matches account %q", r.Name, acct.FriendlyName)}
	}
	if inc.Source == store.SourceCallback && (inc.UsageCategory != r.UsageCategory || inc.TriggerBy != r.TriggerBy) {
		return "", "", errSkip{fmt.Sprintf("the trigger that fired watches %s by %s, the rule now watches %s by %s",
			inc.UsageCategory, inc.TriggerBy, r.UsageCategory, r.TriggerBy)}
	}
	cur, err := decimal.Parse(inc.CurrentValue)
	if err != nil {
		return "", "", errSkip{fmt.Sprintf("current value %q is not a number", inc.CurrentValue)}
	}
	if cur.Cmp(r.Threshold) < 0 {
		return "", "", errSkip{fmt.Sprintf("current value %s is below the rule's threshold %s", cur, r.Threshold)}
	}

	// Act.
	switch {
	case r.DryRun:
		return OutcomeDryRun, fmt.Sprintf("dry run: would %s (value %s >= threshold %s)", r.Action, cur, r.Threshold), nil
	case r.Action == rules.ActionNotify:
		return OutcomeNotified, fmt.Sprintf("value %s >= threshold %s; rule only notifies", cur, r.Threshold), nil
	}
	switch acct.Status {
	case twilioapi.StatusSuspended:
		if by, ok := b.wroteBy.Load(acct.SID); wroteBefore(a) && (!ok || by == a.ID) && !b.claimedByAnother(ctx, inc) {
			// Our earlier write landed (no other action of ours wrote since).
			return OutcomeSuspended, fmt.Sprintf("value %s >= threshold %s (suspended by an earlier attempt whose answer was lost)", cur, r.Threshold), nil
		}
		if claimLeft(a) { // a fast path cut off before its outcome (fast.go)
			return OutcomeAlreadySuspended, "the account was already suspended" + detailClaimLost, nil
		}
		return OutcomeAlreadySuspended, "the account was already suspended", nil
	case twilioapi.StatusClosed:
		return OutcomeAlreadySuspended, "the account is closed", nil
	}
	// The blast-radius guard: past guard.max_suspensions per window, hold.
	if err := b.guardAdmit(ctx, a); err != nil {
		return "", "", err
	}
	if err := ctx.Err(); err != nil {
		return "", "", err // stopping: the write is not sent
	}
	// Record the intent first: should the process die before the answer is
	// recorded, the next one waits for the write to land before reading again.
	// On the fast path the firing's claim holds the next process off, and the
	// mark is recorded once the request is on its way (markOnSend), unless so
	// much of the claim's lease has passed (a slow read) that it is renewed
	// first.
	noteFirst := fast == nil || b.now().Add(b.lease*3/4).After(a.NextAttemptAt)
	if noteFirst {
		if err := b.store.NoteAction(ctx, a.ID, b.now().Add(b.lease), detailWriteSent); err != nil {
			return "", "", fmt.Errorf("record the suspend write: %w", err)
		}
	}
	// Each later attempt the client makes (after a 429) renews the mark.
	onSend, noted := b.markOnSend(ctx, a, noteFirst)
	defer noted() // before the outcome is recorded
	a.Detail = detailWriteSent
	var since func() time.Duration // the first attempt of a callback's trip is timed
	if inc.Source == store.SourceCallback && a.Attempts == 0 {
		since = func() time.Duration { return b.now().Sub(inc.UpdatedAt) } // the latest firing's receipt
		if fast != nil && !fast.arrived.IsZero() {
			since = func() time.Duration { return time.Since(fast.arrived) }
		}
	}
	wctx := b.writeTrace(ctx, since, took, onSend)
	upd, err := b.api.SetAccountStatus(wctx, acct.SID, twilioapi.StatusSuspended)
	if err != nil {
		if unknownOutcome(err) {
			if statusOf(err) == 0 {
				// No answer: the write may still land. No other action of this
				// process writes to the account before it can have.
				b.leases.set(acct.SID, b.now().Add(b.lease))
			}
			err = writeUnknown{err}
		}
		return "", "", err
	}
	b.accounts.Put(upd)
	b.wroteBy.Store(acct.SID, a.ID)
	return OutcomeSuspended, fmt.Sprintf("value %s >= threshold %s", cur, r.Threshold), nil
}

// writeUnknown is a status write that failed without saying whether Twilio
// applied it. Its message marks the action (see wroteBefore).
type writeUnknown struct{ err error }

func (e writeUnknown) Error() string { return prefixWriteUnknown + e.err.Error() }
func (e writeUnknown) Unwrap() error { return e.err }

func (b *Breaker) finish(ctx context.Context, a store.Action, state, outcome, detail string) {
	if err := b.store.FinishAction(ctx, a.ID, state, outcome, detail); err != nil && !errors.Is(err, store.ErrNotFound) {
		b.log.Error("cannot record the action's end; it will run again and find the work done", "action", a.ID, "err", err)
		return
	}
	b.actionFinished(a)
}

func (b *Breaker) retry(ctx context.Context, a store.Action, cause error) {
	b.m.ActionAttemptErrors.WithLabelValues(a.Kind).Inc()
	wait := b.backoff(a.Attempts)
	var wu writeUnknown
	if errors.As(cause, &wu) && statusOf(wu.err) == 0 {
		// No answer at all: the write may still be on its way to Twilio.
		wait = max(wait, b.lease)
	}
	next := b.now().Add(wait)
	if err := b.store.RetryAction(context.WithoutCancel(ctx), a.ID, next, keepMark(a, cause.Error())); err != nil {
		b.log.Error("cannot record a failed attempt", "action", a.ID, "err", err)
	}
}

// backoff is exponential from RetryMin, capped at RetryMax, with equal jitter.
func (b *Breaker) backoff(attempts int) time.Duration {
	d := b.retryMin
	for i := 0; i < attempts && d < b.retryMax; i++ {
		d *= 2
	}
	d = min(d, b.retryMax)
	return d/2 + rand.N(d/2+1)
}
