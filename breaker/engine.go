package breaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

// The action engine: a small job runner over the store's action queue.
//
//   - The queue (store.ActionStore) hands out due actions already claimed:
//     the statement that fetches them records this engine as their owner,
//     with a lease, and never hands out two actions of one subaccount, nor
//     one whose subaccount another action holds. A firing's trip is
//     recorded already claimed by the engine that received it (Submit).
//   - A Worker per kind does one attempt and returns a Result: done, fail,
//     retry (after a backoff), snooze (until a time, no attempt counted) or
//     hold (the guard). The engine records it (CompleteAction), and that
//     ends the claim.
//   - At start the engine rescues what a stopped process left claimed: it
//     goes back to the queue, and an action on an account keeps the account
//     one write lease longer, as its owner may have sent a status write just
//     before it stopped.
//   - An attempt never outlives its claim: its context ends before the
//     lease does.

// Queue is what the engine needs of the store (store.ActionStore has it).
type Queue interface {
	ClaimActions(ctx context.Context, c store.Claim, now time.Time, limit int) ([]store.Action, error)
	CompleteAction(ctx context.Context, id int64, owner string, c store.Completion) (store.Completed, error)
	RescueActions(ctx context.Context, now time.Time, writeLease time.Duration, all bool) ([]store.Action, error)
	ResumeAvailable(ctx context.Context, now time.Time) (int, error)
}

// Worker does the attempts at one kind of action.
type Worker interface {
	Work(ctx context.Context, a store.Action) Result
}

// WorkerFunc is a Worker from a function.
type WorkerFunc func(ctx context.Context, a store.Action) Result

// Work implements Worker.
func (f WorkerFunc) Work(ctx context.Context, a store.Action) Result { return f(ctx, a) }

type resultKind int

const (
	resultDone resultKind = iota
	resultFail
	resultRetry
	resultSnooze
	resultHold
)

// Result is how one attempt at an action ended.
type Result struct {
	kind    resultKind
	outcome store.Outcome
	detail  string
	at      time.Time // retry or snooze: when to try again (zero: the engine's backoff)
	// holdAccount, on a retry or snooze, keeps the account until then.
	holdAccount time.Time
	writeSent   time.Time // the attempt sent a status write at this time
	forgetWrite bool      // an earlier attempt's status write can no longer land
	then        []store.Scheduled
	pages       []store.ActionKind
	progress    *string
	// recorded runs once the result is recorded (ok: it was; paged: a hold
	// created its pages), under lock if set.
	recorded func(ok, paged bool)
	lock     sync.Locker
}

// Done ends the action with an outcome.
func Done(outcome store.Outcome, detail string) Result {
	return Result{kind: resultDone, outcome: outcome, detail: detail}
}

// Fail ends the action as failed: retrying cannot cure err.
func Fail(err error) Result {
	return Result{kind: resultFail, outcome: store.OutcomeFailed, detail: err.Error()}
}

// Retry counts a failed attempt; the engine tries again after a backoff.
func Retry(err error) Result { return Result{kind: resultRetry, detail: err.Error()} }

// RetryAt counts a failed attempt and tries again at t.
func RetryAt(t time.Time, err error) Result {
	return Result{kind: resultRetry, detail: err.Error(), at: t}
}

// SnoozeUntil puts the action back until t without counting an attempt.
func SnoozeUntil(t time.Time, why string) Result {
	return Result{kind: resultSnooze, detail: why, at: t}
}

// Hold parks the action until a person releases it (the guard); pages are
// created with it if nothing else was held.
func Hold(detail string, pages []store.ActionKind) Result {
	return Result{kind: resultHold, detail: detail, pages: pages}
}

// Then creates these actions for the incident when the result is recorded
// (done, retry or snooze).
func (r Result) Then(s ...store.Scheduled) Result { r.then = append(r.then, s...); return r }

// HoldingAccount keeps the account's lease until t (a retry or snooze whose
// status write may still land).
func (r Result) HoldingAccount(t time.Time) Result { r.holdAccount = t; return r }

// WithWriteSent records that the attempt sent a status write at t.
func (r Result) WithWriteSent(t time.Time) Result { r.writeSent = t; return r }

// ForgettingWriteSent forgets an earlier attempt's status write: this
// attempt read the account unchanged after it could have landed, and sent
// nothing that may still land.
func (r Result) ForgettingWriteSent() Result { r.forgetWrite = true; return r }

// Showing gives an unfinished result an outcome to show on the incident
// meanwhile (awaiting_approval).
func (r Result) Showing(o store.Outcome) Result { r.outcome = o; return r }

// WithProgress records what a multi-part action has done so far.
func (r Result) WithProgress(p string) Result { r.progress = &p; return r }

// OnRecorded runs f once the result is recorded.
func (r Result) OnRecorded(f func(ok, paged bool)) Result {
	prev := r.recorded
	r.recorded = func(ok, paged bool) {
		if prev != nil {
			prev(ok, paged)
		}
		f(ok, paged)
	}
	return r
}

// RecordedUnder records the result, and runs its OnRecorded functions,
// while holding l (the guard counts a suspension once: as in flight until
// it is recorded, then from the store).
func (r Result) RecordedUnder(l sync.Locker) Result { r.lock = l; return r }

// Finished reports whether the result ends the action.
func (r Result) Finished() bool { return r.kind == resultDone || r.kind == resultFail }

// Outcome is the action's outcome, for a finished result.
func (r Result) Outcome() store.Outcome { return r.outcome }

// Detail is the result's detail.
func (r Result) Detail() string { return r.detail }

// EngineOptions configure an Engine.
type EngineOptions struct {
	Store  Queue
	Owner  string // this engine's name in claims (unique per process)
	Logger *slog.Logger
	Now    func() time.Time
	// Workers is how many actions run at once.
	Workers int
	// Lease is how long a claim lasts; an attempt's context ends before it.
	Lease time.Duration
	// WriteLease is how long a status write may still land after its answer
	// was lost; a rescued action on an account holds the account that long.
	WriteLease time.Duration
	// RetryMin and RetryMax bound the backoff between failed attempts.
	RetryMin, RetryMax time.Duration
	// Worker returns the worker of a kind (nil: none).
	Worker func(kind store.ActionKind) Worker
	// Finished is called after an action's result is recorded.
	Finished func(a store.Action, r Result)
	// Shared: other processes claim from the same queue (Postgres). The
	// engine then rescues only claims whose lease has passed, at start and
	// every RescueEvery, instead of every claim at start.
	Shared bool
	// RescueEvery is how often a shared engine looks for expired claims
	// (default a tenth of Lease, at least a second).
	RescueEvery time.Duration
}

// Engine runs the actions of the store's queue with its workers.
type Engine struct {
	o    EngineOptions
	wake chan struct{}
	sem  chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	actx context.Context // the running actions' context while Run runs; nil otherwise
}

// NewEngine builds an engine; nothing runs until Run.
func NewEngine(o EngineOptions) *Engine {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Lease <= 0 {
		o.Lease = 5 * time.Minute
	}
	if o.WriteLease <= 0 {
		o.WriteLease = 20 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.RescueEvery <= 0 {
		o.RescueEvery = max(time.Second, o.Lease/10)
	}
	return &Engine{o: o, wake: make(chan struct{}, 1), sem: make(chan struct{}, o.Workers)}
}

// Owner is the engine's name in claims.
func (e *Engine) Owner() string { return e.o.Owner }

// Claim is a claim by this engine, from now: a firing's trip is recorded
// with it. Nil while the engine is not running (the trip then waits in the
// queue).
func (e *Engine) Claim() *store.Claim {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.actx == nil {
		return nil
	}
	return &store.Claim{Owner: e.o.Owner, LeaseUntil: e.o.Now().Add(e.o.Lease)}
}

// Wake makes the engine look for due actions now.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Submit runs an action this engine claimed elsewhere (a firing's trip).
// If the engine has stopped meanwhile, the claim stays for the next start.
func (e *Engine) Submit(a store.Action) {
	e.mu.Lock()
	actx := e.actx
	if actx != nil {
		e.wg.Add(1)
	}
	e.mu.Unlock()
	if actx == nil {
		e.o.Logger.Warn("stopping: a claimed action is left for the next start", "action", a.ID, "kind", a.Kind)
		return
	}
	go func() {
		defer e.wg.Done()
		e.sem <- struct{}{}
		e.run(actx, a, func() { <-e.sem })
	}()
}

// Run runs due actions until ctx ends: at start (after rescuing what a
// stopped process left claimed, and resuming everything whatever its
// backoff said), when woken, and every second. When ctx ends it stops
// claiming and gives the running attempts up to drain to finish; what is
// cut off then stays in the queue for the next start.
func (e *Engine) Run(ctx context.Context, drain time.Duration) {
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	e.start(ctx)
	e.mu.Lock()
	e.actx = actx
	e.mu.Unlock()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var rescueC <-chan time.Time
	if e.o.Shared {
		rescue := time.NewTicker(e.o.RescueEvery)
		defer rescue.Stop()
		rescueC = rescue.C
	}
	for {
		e.claimDue(ctx, actx)
		select {
		case <-rescueC:
			e.rescue(ctx, false)
			continue
		case <-ctx.Done():
			e.mu.Lock()
			e.actx = nil // no Submit starts after this: wg.Wait below sees them all
			e.mu.Unlock()
			done := make(chan struct{})
			go func() { e.wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(drain):
				e.o.Logger.Warn("shutdown: actions still running after the drain timeout; they stay in the queue for the next start", "drain", drain)
				cancel()
				<-done
			}
			return
		case <-e.wake:
		case <-tick.C:
		}
	}
}

// start rescues the claims a stopped process left and resumes the queue.
// Alone on the state (SQLite: the state file's lock), every running action
// belongs to a process that is gone; shared (Postgres), only those whose
// lease has passed, and the others are rescued as their leases pass.
func (e *Engine) start(ctx context.Context) {
	now := e.rescue(ctx, !e.o.Shared)
	if _, err := e.o.Store.ResumeAvailable(ctx, now); err != nil {
		e.o.Logger.Error("cannot resume the queued actions", "err", err)
	}
}

// rescue hands back the claims of stopped owners: all of them, or those
// whose lease has passed. It returns the time it used as now.
func (e *Engine) rescue(ctx context.Context, all bool) time.Time {
	now := e.o.Now()
	rescued, err := e.o.Store.RescueActions(ctx, now, e.o.WriteLease, all)
	if err != nil && ctx.Err() == nil {
		e.o.Logger.Error("cannot rescue the actions a stopped process left", "err", err)
	}
	for _, a := range rescued {
		attrs := []any{"action", a.ID, "kind", a.Kind, "incident", a.IncidentID, "owner", a.Owner}
		if a.AccountSID != "" {
			attrs = append(attrs, "account", a.AccountSID, "account_held_until", now.Add(e.o.WriteLease))
		}
		e.o.Logger.Info("resuming an action a stopped process had claimed", attrs...)
	}
	if len(rescued) > 0 {
		e.Wake()
	}
	return now
}

// RunDueOnce claims and runs every due action to completion (tests and the
// demo use it to step the pipeline deterministically).
func (e *Engine) RunDueOnce(ctx context.Context) {
	for {
		acts, err := e.o.Store.ClaimActions(ctx, store.Claim{Owner: e.o.Owner, LeaseUntil: e.o.Now().Add(e.o.Lease)}, e.o.Now(), e.o.Workers)
		if err != nil || len(acts) == 0 {
			return
		}
		var wg sync.WaitGroup
		for _, a := range acts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.run(ctx, a, func() {})
			}()
		}
		wg.Wait()
	}
}

// claimDue claims as many due actions as there are free workers and starts them.
func (e *Engine) claimDue(ctx, actx context.Context) {
	for {
		free := cap(e.sem) - len(e.sem)
		if free <= 0 || ctx.Err() != nil {
			return
		}
		now := e.o.Now()
		acts, err := e.o.Store.ClaimActions(ctx, store.Claim{Owner: e.o.Owner, LeaseUntil: now.Add(e.o.Lease)}, now, free)
		if err != nil {
			if ctx.Err() == nil {
				e.o.Logger.Error("cannot claim due actions", "err", err)
			}
			return
		}
		for _, a := range acts {
			e.wg.Add(1)
			e.sem <- struct{}{} // free: never blocks long
			go func() {
				defer e.wg.Done()
				e.run(actx, a, func() { <-e.sem })
			}()
		}
		if len(acts) < free {
			return
		}
	}
}

// run makes one attempt at a claimed action and records its result. The
// worker's slot is given back (release) as soon as the attempt is over: the
// slots bound the work at Twilio and elsewhere, not the commits, which the
// store groups.
func (e *Engine) run(ctx context.Context, a store.Action, release func()) {
	// The attempt ends before its claim does, so no other owner can take
	// the action while this one still works on it.
	ctx, cancel := context.WithTimeout(ctx, e.o.Lease*9/10)
	defer cancel()
	var res Result
	if w := e.o.Worker(a.Kind); w != nil {
		res = w.Work(ctx, a)
	} else {
		res = Fail(fmt.Errorf("no worker for action kind %q", a.Kind))
	}
	release()
	e.record(ctx, a, res)
}

// record writes an attempt's result, ending the claim.
func (e *Engine) record(ctx context.Context, a store.Action, res Result) {
	c := store.Completion{Outcome: res.outcome, Detail: res.detail, Progress: a.Progress, WriteSentAt: res.writeSent,
		ClearWriteSent: res.forgetWrite}
	if res.progress != nil {
		c.Progress = *res.progress
	}
	switch res.kind {
	case resultDone:
		c.State, c.Attempted, c.Then = store.ActionDone, true, res.then
	case resultFail:
		c.State, c.Attempted = store.ActionFailed, true
	case resultRetry, resultSnooze:
		c.State, c.Attempted = store.ActionAvailable, res.kind == resultRetry
		c.NextAttemptAt = res.at
		if c.NextAttemptAt.IsZero() {
			c.NextAttemptAt = e.o.Now().Add(e.backoff(a.Attempts))
		}
		c.HoldAccountUntil = res.holdAccount
		c.Then = res.then
	case resultHold:
		c.State, c.Pages = store.ActionHeld, res.pages
	}
	if res.lock != nil {
		res.lock.Lock()
		defer res.lock.Unlock()
	}
	done, err := e.o.Store.CompleteAction(context.WithoutCancel(ctx), a.ID, e.o.Owner, c)
	ok := err == nil
	switch {
	case errors.Is(err, store.ErrNotFound):
		e.o.Logger.Warn("the action's claim was lost before its result was recorded; the result is dropped", "action", a.ID, "kind", a.Kind, "result", c.State)
	case err != nil:
		e.o.Logger.Error("cannot record the action's result; its claim is rescued at the next start", "action", a.ID, "kind", a.Kind, "err", err)
	}
	if res.recorded != nil {
		res.recorded(ok, done.Paged)
	}
	if ok && e.o.Finished != nil {
		e.o.Finished(a, res)
	}
	if ok && (res.Finished() || done.Paged) {
		e.Wake() // what waited for it (notifications, end_calls, pages) is due
	}
}

// backoff is exponential from RetryMin, capped at RetryMax, with equal jitter.
func (e *Engine) backoff(attempts int) time.Duration {
	d := e.o.RetryMin
	for i := 0; i < attempts && d < e.o.RetryMax; i++ {
		d *= 2
	}
	d = min(d, e.o.RetryMax)
	return d/2 + rand.N(d/2+1)
}
