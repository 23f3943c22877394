package breaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Incident outcomes (store.Incident.Outcome). The first four are also the
// outcome label of usagebreaker_suspensions_total.
const (
	OutcomeSuspended        = store.OutcomeSuspended
	OutcomeAlreadySuspended = store.OutcomeAlreadySuspended
	OutcomeDryRun           = store.OutcomeDryRun
	OutcomeFailed           = store.OutcomeFailed
	OutcomeNotified         = store.OutcomeNotified
	OutcomeSkipped          = store.OutcomeSkipped
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
	// zero if unknown. The incident records it as the firing's receipt.
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
}

// Accept durably records a verified callback for rule r from subaccount acct.
// When it returns nil the firing survives a crash and the callback may be
// answered 200. A new incident's trip is recorded already claimed by this
// process's engine and handed to a worker at once.
func (b *Breaker) Accept(ctx context.Context, r *rules.Rule, acct twilioapi.Account, cb Callback) (AcceptResult, error) {
	now := b.now()
	received := now
	if !cb.Arrived.IsZero() && cb.Arrived.Before(now) && now.Sub(cb.Arrived) < time.Minute {
		received = cb.Arrived
	}
	if r.IsVelocity() {
		return b.acceptStep(ctx, r, acct, cb, received)
	}
	// A new suspension's read of the account starts now and runs while the
	// firing is committed; the worker that runs the claimed trip uses it.
	var pre chan accountRead
	claim := b.engine.Claim()
	if claim != nil && Suspends(r, b.settings.Load().DryRun) && !b.tokens.has(cb.IdempotencyToken) {
		if cached, ok := b.accounts.Cached(acct.SID); !ok || cached.Status == twilioapi.StatusActive {
			pre = make(chan accountRead, 1)
			go func() {
				start, at := time.Now(), b.now()
				a, err := b.readAccount(context.WithoutCancel(ctx), acct.SID)
				pre <- accountRead{acct: a, err: err, started: start, at: at, took: time.Since(start)}
			}()
		}
	}
	res, err := b.record(ctx, pre, store.Firing{
		Source:           store.SourceCallback,
		IdempotencyToken: cb.IdempotencyToken,
		Rule:             r.Name,
		AccountSID:       acct.SID,
		AccountName:      acct.FriendlyName,
		Period:           PeriodKey(r.Recurring, firedAt(cb.DateFired, now)),
		// After a re-arm, a firing in the same period belongs to the
		// re-armed generation: its own incident ("daily:2026-11-24#2"), so
		// it trips again. The store looks the re-arm up as it records.
		ApplyRearm:      true,
		UsageTriggerSID: cb.UsageTriggerSID,
		UsageCategory:   cb.UsageCategory,
		TriggerBy:       cb.TriggerBy,
		Recurring:       cb.Recurring,
		TriggerValue:    cb.TriggerValue,
		CurrentValue:    cb.CurrentValue,
		DateFired:       cb.DateFired,
		Action:          r.Action,
		DryRun:          b.dryRun(r),
		ReceivedAt:      received,
		Actions:         b.ActionKinds(r),
		ClaimBy:         claim,
	})
	if err == nil {
		b.tokens.add(cb.IdempotencyToken)
	}
	return res, err
}

// accountRead is a read of an account started before its trip was claimed.
type accountRead struct {
	acct    twilioapi.Account
	err     error
	started time.Time // when it started (monotonic; wroteStatus's clock)
	at      time.Time // the same by the breaker's clock (the store's times)
	took    time.Duration
}

// handoff is what the process that recorded a firing hands to the worker of
// the trip it claimed: the incident as recorded, the read of the account it
// started while the firing was committed (nil: none), and the account's
// last status write the store knew of when the trip was claimed.
type handoff struct {
	inc       store.Incident
	read      chan accountRead
	lastWrite time.Time
}

// record records a firing (a callback's or a poll's) and starts its work;
// pre, when set, is the read of the account already under way.
func (b *Breaker) record(ctx context.Context, pre chan accountRead, f store.Firing) (AcceptResult, error) {
	res, err := b.store.RecordFiring(ctx, f)
	if err != nil {
		return AcceptResult{}, fmt.Errorf("record firing: %w", err)
	}
	switch {
	case res.NewIncident:
		b.m.Incidents.WithLabelValues(f.Rule, string(f.Source)).Inc()
		b.m.ActionsPending.Add(float64(len(f.Actions)))
		if res.Trip.State == store.ActionRunning && f.ClaimBy != nil && res.Trip.Owner == f.ClaimBy.Owner {
			b.handoffs.Store(res.Trip.ID, &handoff{inc: res.Incident, read: pre, lastWrite: res.LastStatusWrite})
			b.engine.Submit(res.Trip)
		} else {
			b.engine.Wake()
		}
	case res.Reopened:
		// The incident's trip had ended skipped or failed; this new firing put
		// it back in the queue, to be verified again on the new values.
		b.log.Info("incident reopened by a new firing", "incident", res.Incident.ID, "rule", f.Rule,
			"account", f.AccountSID, "source", f.Source, "current_value", f.CurrentValue)
		b.UpdatePendingGauge(ctx)
		b.engine.Wake()
	}
	return AcceptResult{Incident: res.Incident, Duplicate: !res.NewIncident && !res.Reopened}, nil
}

// forgetIfNotLanded makes res forget an earlier attempt's write when err
// says this attempt's write did not land on an account read active.
func forgetIfNotLanded(res Result, err error) Result {
	var nl writeDidNotLand
	if errors.As(err, &nl) {
		return res.ForgettingWriteSent()
	}
	return res
}

// skip is a trip that is not acted on, and why.
type skip struct{ why string }

func (e skip) Error() string { return e.why }

// workTrip is the trip worker: verify the incident against the rule and the
// account, then act (suspend, or only notify, or dry-run) once.
func (b *Breaker) workTrip(ctx context.Context, a store.Action) Result {
	var (
		inc store.Incident
		h   *handoff
		err error
	)
	if v, ok := b.handoffs.LoadAndDelete(a.ID); ok && a.Attempts == 0 {
		h = v.(*handoff)
		inc = h.inc
	} else if inc, err = b.store.Incident(ctx, a.IncidentID); err != nil {
		return Retry(fmt.Errorf("read incident: %w", err))
	}
	// The reconciler and a reactivation never work on the account meanwhile.
	unlock := b.locks.lock(inc.AccountSID)
	defer unlock()
	r := b.Rule(inc.Rule)
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName, "source", inc.Source)
	suspend := Suspends(r, b.settings.Load().DryRun)
	var tt tripTimes
	res, err := b.trip(ctx, a, inc, r, h, &tt)
	var sk skip
	switch {
	case errors.As(err, &sk):
		b.m.Skipped.WithLabelValues(inc.Rule).Inc()
		log.Warn("incident skipped", "why", sk.why)
		return Done(OutcomeSkipped, sk.why)
	case err != nil && givesUp(err) && ctx.Err() == nil:
		if suspend {
			b.m.Suspensions.WithLabelValues(inc.Rule, string(OutcomeFailed)).Inc()
		}
		log.Error("action failed for good", "err", err)
		return forgetIfNotLanded(Fail(err), err)
	case err != nil:
		log.Warn("action failed, will retry", "attempt", a.Attempts+1, "err", err)
		b.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		return forgetIfNotLanded(Retry(err), err)
	case !res.Finished():
		return res // held, or waiting for a write that may still land
	}
	if r.Action == rules.ActionSuspend {
		b.m.Suspensions.WithLabelValues(inc.Rule, string(res.Outcome())).Inc()
	}
	limit := r.Threshold.String()
	if r.IsVelocity() {
		limit = r.Velocity.Amount.String() // current_value is the growth
	}
	attrs := []any{"outcome", res.Outcome(), "detail", res.Detail(), "current_value", inc.CurrentValue, "threshold", limit}
	if tt.receiptToWrite > 0 {
		attrs = append(attrs, "receipt_to_write", tt.receiptToWrite, "twilio_wait", tt.read)
	}
	log.Info("incident handled", attrs...)
	if res.Outcome() == OutcomeSuspended && r.Reactivate != nil {
		due := r.Reactivate.Due(r.Recurring, b.now())
		res = res.Then(store.Scheduled{Kind: store.ActionReactivate, At: due}).OnRecorded(func(ok, _ bool) {
			if ok {
				log.Info("reactivation scheduled", "policy", r.Reactivate.String(), "due", due)
			}
		})
	}
	return res
}

// tripTimes are the times of a trip's first attempt, for its log line.
type tripTimes struct {
	read           time.Duration // the read before the write: Twilio's share
	receiptToWrite time.Duration // from the callback's receipt to the suspend request written
}

// trip verifies incident inc against rule r and the account, then acts.
// A skip is returned as a skip error; other errors are retried or fail.
func (b *Breaker) trip(ctx context.Context, a store.Action, inc store.Incident, r *rules.Rule, h *handoff, tt *tripTimes) (Result, error) {
	// Verify.
	if r == nil {
		return Result{}, skip{fmt.Sprintf("rule %q no longer exists", inc.Rule)}
	}
	dryRun := b.settings.Load().DryRun // the global dry run
	suspend := Suspends(r, dryRun)
	var (
		acct twilioapi.Account
		err  error
	)
	if cached, ok := b.accounts.Cached(inc.AccountSID); ok && !suspend {
		acct = cached
	} else if h != nil && h.read != nil {
		// Read while the firing was committed, before anything of ours
		// could write to the account (the trip was claimed in that commit).
		select {
		case ar := <-h.read:
			acct, err, tt.read = ar.acct, ar.err, ar.took
			if !b.readAfterWrites(inc.AccountSID, ar.started) || !ar.at.After(h.lastWrite.Add(b.writeLease)) {
				// A status write of ours (another rule's trip, which ended
				// between this read and the claim; a reactivation) may
				// postdate the read: this process's, or, as the store
				// knows, any replica's. A write lands within the Twilio
				// timeout, so another replica's clock may differ from ours
				// by up to the rest of the write lease, one timeout
				// (docs/HA.md).
				start := time.Now()
				acct, err = b.readAccount(ctx, inc.AccountSID)
				tt.read = time.Since(start)
			}
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	} else {
		// A suspension is decided on a fresh read (read before write: after a
		// crash or a lost answer the account may already be suspended).
		start := time.Now()
		acct, err = b.readAccount(ctx, inc.AccountSID)
		tt.read = time.Since(start)
	}
	if errors.Is(err, ErrNotSubaccount) {
		return Result{}, skip{"the account is not a subaccount of the parent any more"}
	}
	if err != nil {
		return Result{}, err
	}
	cur, err := decimal.Parse(inc.CurrentValue)
	if err != nil {
		return Result{}, skip{fmt.Sprintf("current value %q is not a number", inc.CurrentValue)}
	}
	t := Trip{Rule: r, Account: acct, Value: cur, DryRun: dryRun}
	if inc.Source == store.SourceCallback {
		t.Category, t.TriggerBy = inc.UsageCategory, inc.TriggerBy
	}
	if _, isVelocity := velocityStart(inc.Period); isVelocity || r.IsVelocity() {
		// A velocity rule trips on the firings' times, not a threshold.
		if t.Evidence, err = b.verifyEvidence(ctx, inc, r); err != nil {
			return Result{}, err
		}
	}
	d := Decide(t) // decide.go: the same decision as the rule tests and the backtest

	// Act.
	evidence := t.Evidence
	if evidence == "" {
		evidence = fmt.Sprintf("value %s >= threshold %s", cur, r.Threshold)
	}
	switch d.Outcome {
	case OutcomeSkipped:
		return Result{}, skip{d.Detail}
	case OutcomeDryRun, OutcomeNotified:
		return Done(d.Outcome, d.Detail), nil
	case OutcomeAlreadySuspended:
		if acct.Status != twilioapi.StatusSuspended {
			return Done(d.Outcome, d.Detail), nil // closed
		}
		if ours, err := b.ownSuspension(ctx, a, inc); err != nil {
			return Result{}, err
		} else if ours {
			return Done(OutcomeSuspended, fmt.Sprintf("%s (suspended by an earlier attempt whose answer was lost)", evidence)), nil
		}
		if a.Rescued && a.WriteSentAt.IsZero() {
			return Done(OutcomeAlreadySuspended, d.Detail+detailClaimLost), nil
		}
		return Done(d.Outcome, d.Detail), nil
	}
	// A person in the loop: the rule's approval holds the suspension.
	if r.Approval != nil {
		if res, wait, err := b.awaitApproval(ctx, inc, r); err != nil || wait {
			return res, err
		}
	}
	// The blast-radius guard: past guard.max_suspensions per window, hold.
	slot, held, err := b.guard.admit(ctx, a)
	if err != nil {
		return Result{}, err
	}
	if held != nil {
		// The account was read active: an earlier attempt's write (after
		// its lease) did not land.
		return b.hold(inc, *held).ForgettingWriteSent(), nil
	}
	if err := ctx.Err(); err != nil {
		slot.free()
		return Result{}, err // stopping: the write is not sent
	}
	res, err := b.writeSuspended(ctx, a, inc, evidence, tt)
	if err != nil {
		slot.free()
		return res, err
	}
	if !res.Finished() {
		slot.free()
		return res, nil
	}
	return slot.recordWith(res), nil
}

// detailClaimLost ends the detail of an incident whose trip was claimed by a
// process that stopped before it recorded whether it sent its write, and
// whose account was then found suspended: the suspension may be that
// process's, but it is not counted as ours (a breaker must never reactivate
// a suspension somebody else made).
const detailClaimLost = " (a process that claimed this trip stopped before recording whether it sent its suspend write; had it, this suspension would be its own, but it is not counted as such)"

// ownSuspension reports whether the suspension found on inc's account is
// the work of an earlier attempt of a: it sent a status write whose answer
// was lost, and no other incident of the account counts a suspension made
// since (of two writes whose fates a crash hid, the first to find the
// account suspended claims it).
func (b *Breaker) ownSuspension(ctx context.Context, a store.Action, inc store.Incident) (bool, error) {
	if a.WriteSentAt.IsZero() {
		return false, nil
	}
	other, err := b.store.SuspendedSince(ctx, inc.AccountSID, inc.ID, a.WriteSentAt)
	if err != nil {
		return false, fmt.Errorf("read the account's suspensions: %w", err)
	}
	return !other, nil
}

// writeSuspended writes Status=suspended. The moment the request is written
// is recorded on the action (MarkWriteSent) while Twilio answers, so a
// process that starts after a crash knows the suspension may be its own;
// until then the claim holds the account. Once Twilio has answered, the
// attempt's result records that moment (Result.WithWriteSent), committed
// right after: a mark still waiting for its commit then is withdrawn. A
// write whose outcome is unknown is not repeated before it can no longer
// land: the retry waits a write lease and keeps the account that long.
func (b *Breaker) writeSuspended(ctx context.Context, a store.Action, inc store.Incident, evidence string, tt *tripTimes) (Result, error) {
	var (
		mu   sync.Mutex
		sent time.Time
	)
	markCtx, answered := context.WithCancel(context.WithoutCancel(ctx))
	defer answered()
	first := inc.Source == store.SourceCallback && a.Attempts == 0
	wctx := twilioapi.OnSent(ctx, func() {
		b.wroteStatus(inc.AccountSID)
		now := b.now()
		mu.Lock()
		isFirst := sent.IsZero()
		sent = now
		mu.Unlock()
		if isFirst && first {
			d := max(now.Sub(inc.UpdatedAt), time.Microsecond)
			tt.receiptToWrite = d
			b.m.SuspendWriteLatency.Observe(d.Seconds())
		}
		go func() {
			err := b.store.MarkWriteSent(markCtx, a.ID, a.Owner, a.Attempts, now, now.Add(b.writeLease))
			if err != nil && !errors.Is(err, store.ErrNotFound) && markCtx.Err() == nil {
				b.log.Warn("cannot record that the suspend write was sent; until its outcome is recorded a restart would not count it as ours",
					"action", a.ID, "err", err)
			}
		}()
	})
	upd, err := b.api.SetAccountStatus(wctx, inc.AccountSID, twilioapi.StatusSuspended)
	mu.Lock()
	sentAt := sent
	mu.Unlock()
	if err != nil {
		if s := statusOf(err); !(s >= 400 && s < 500) && (!sentAt.IsZero() || !twilioapi.NotSent(err)) {
			// Sent (or not known to be unsent: HTTP/2 may report the send
			// late), with no answer that says it was refused (a 5xx, a
			// timeout, a broken connection, a shutdown): the write may
			// still land. No attempt before it can have, and no other
			// action of the account meanwhile.
			if sentAt.IsZero() {
				sentAt = b.now()
			}
			until := b.now().Add(b.writeLease)
			b.log.Warn("the suspend write's outcome is unknown; the account is held until it can no longer land",
				"incident", inc.ID, "account", inc.AccountSID, "until", until, "err", err)
			b.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
			return RetryAt(until, fmt.Errorf("the suspend write failed and may have been applied: %w", err)).
				HoldingAccount(until).WithWriteSent(sentAt), nil
		}
		// Refused, or never sent: nothing of this attempt can land, and the
		// account was just read active, so no earlier write will either.
		return Result{}, writeDidNotLand{err}
	}
	if sentAt.IsZero() {
		sentAt = b.now() // HTTP/2 may report the send after the answer
	}
	b.accounts.Put(upd)
	return Done(OutcomeSuspended, evidence).WithWriteSent(sentAt), nil
}

// wroteStatus notes that this process sent a status write to the account
// (a pre-read started before it is stale).
func (b *Breaker) wroteStatus(sid string) { b.lastWrite.Store(sid, time.Now()) }

// readAfterWrites reports whether a read of the account started at started
// began after every status write this process sent to it.
func (b *Breaker) readAfterWrites(sid string, started time.Time) bool {
	t, ok := b.lastWrite.Load(sid)
	return !ok || started.After(t.(time.Time))
}

// writeDidNotLand is a status write that certainly was not applied; the
// account was read active just before, so no earlier attempt's write will
// land either: the action forgets it.
type writeDidNotLand struct{ err error }

func (e writeDidNotLand) Error() string { return e.err.Error() }
func (e writeDidNotLand) Unwrap() error { return e.err }

// readAccount reads a subaccount from Twilio for an action: always a fresh
// read of its own (never a cached account nor a fetch shared with a callback's
// lookup), so a write is decided on the account's state after every earlier
// write of ours. A SID the parent does not own is ErrNotSubaccount.
func (b *Breaker) readAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	if !ValidAccountSID(sid) || sid == b.api.ParentSID() {
		return twilioapi.Account{}, ErrNotSubaccount
	}
	acct, err := b.api.FetchAccount(ctx, sid)
	switch {
	case err == nil && (acct.SID != sid || acct.OwnerSID != b.api.ParentSID()):
		return twilioapi.Account{}, ErrNotSubaccount
	case err != nil && (twilioapi.IsNotFound(err) || statusOf(err) == http.StatusForbidden):
		return twilioapi.Account{}, fmt.Errorf("%w: %v", ErrNotSubaccount, err)
	case err != nil:
		return twilioapi.Account{}, err
	}
	b.accounts.Put(acct)
	return acct, nil
}

func statusOf(err error) int {
	var e *twilioapi.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return -1
}

// givesUp reports an error that retrying cannot cure: Twilio's answer that
// the request is wrong for good (a 4xx other than 429). A 401 is not one: it
// means the parent's credentials are refused, which an operator fixes, and
// the trip must then still happen. Everything else (5xx, 429, timeouts,
// transport and store errors, answers that could not be decoded) is retried
// with backoff.
func givesUp(err error) bool {
	return twilioapi.IsPermanent(err) && statusOf(err) != http.StatusUnauthorized
}

// verifyEvidence checks that the incident's evidence still trips rule r and
// says what it was: the value over the threshold, or for a velocity rule
// the growth within its time (verifyVelocity). A skip error if it does not.
func (b *Breaker) verifyEvidence(ctx context.Context, inc store.Incident, r *rules.Rule) (string, error) {
	if r.IsVelocity() {
		return b.verifyVelocity(ctx, inc, r)
	}
	if _, ok := velocityStart(inc.Period); ok {
		return "", skip{fmt.Sprintf("rule %q is no longer a velocity rule", r.Name)}
	}
	cur, err := decimal.Parse(inc.CurrentValue)
	if err != nil {
		return "", skip{fmt.Sprintf("current value %q is not a number", inc.CurrentValue)}
	}
	if cur.Cmp(r.Threshold) < 0 {
		return "", skip{fmt.Sprintf("current value %s is below the rule's threshold %s", cur, r.Threshold)}
	}
	return fmt.Sprintf("value %s >= threshold %s", cur, r.Threshold), nil
}
