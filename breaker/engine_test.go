package breaker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

// The action engine on its own: a real store, workers made up by each test.

type engineFixture struct {
	st    *store.SQLite
	clock *clock

	mu      sync.Mutex
	workers map[store.ActionKind]Worker
	ran     []store.Action // every attempt, in order
	done    []Result       // every recorded result (Finished)
}

func newEngineFixture(t *testing.T) *engineFixture {
	t.Helper()
	f := &engineFixture{clock: &clock{t: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}, workers: map[store.ActionKind]Worker{}}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetClock(f.clock.Now)
	f.st = st
	return f
}

// work sets the worker of a kind; every attempt is recorded in f.ran.
func (f *engineFixture) work(kind store.ActionKind, w func(ctx context.Context, a store.Action) Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.workers[kind] = WorkerFunc(func(ctx context.Context, a store.Action) Result {
		f.mu.Lock()
		f.ran = append(f.ran, a)
		f.mu.Unlock()
		return w(ctx, a)
	})
}

func (f *engineFixture) attempts() []store.Action {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Action(nil), f.ran...)
}

func (f *engineFixture) engine(owner string, workers int) *Engine {
	return NewEngine(EngineOptions{Store: f.st, Owner: owner, Now: f.clock.Now, Workers: workers,
		WriteLease: 30 * time.Second, RetryMin: time.Second, RetryMax: time.Minute,
		Worker: func(kind store.ActionKind) Worker {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.workers[kind]
		},
		Finished: func(a store.Action, r Result) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.done = append(f.done, r)
		}})
}

// fire records a firing of rule on account acct with the given action kinds.
func (f *engineFixture) fire(t *testing.T, rule, acct string, claim *store.Claim, kinds ...store.ActionKind) store.RecordResult {
	t.Helper()
	res, err := f.st.RecordFiring(context.Background(), store.Firing{Source: store.SourceCallback,
		IdempotencyToken: rule + "/" + acct, Rule: rule, AccountSID: acct, Period: "daily:2026-11-24",
		CurrentValue: "60", Action: "suspend", ReceivedAt: f.clock.Now(), Actions: kinds, ClaimBy: claim})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (f *engineFixture) actions(t *testing.T, incidentID int64) map[store.ActionKind]store.Action {
	t.Helper()
	acts, err := f.st.Actions(context.Background(), incidentID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[store.ActionKind]store.Action{}
	for _, a := range acts {
		out[a.Kind] = a
	}
	return out
}

// Each kind of result leads to its stored state.
func TestEngineRecordsEachResult(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	later := t0.Add(time.Hour)
	cases := []struct {
		name  string
		res   Result
		check func(t *testing.T, a store.Action, all map[store.ActionKind]store.Action)
	}{
		{"done", Done(store.OutcomeSuspended, "value 60").WithWriteSent(t0).Then(store.Scheduled{Kind: store.ActionReactivate, At: later}),
			func(t *testing.T, a store.Action, all map[store.ActionKind]store.Action) {
				if a.State != store.ActionDone || a.Outcome != store.OutcomeSuspended || a.Detail != "value 60" || a.Attempts != 1 ||
					!a.WriteSentAt.Equal(t0) || a.Owner != "" || !a.LeaseUntil.IsZero() {
					t.Fatalf("action = %+v", a)
				}
				if re := all[store.ActionReactivate]; re.State != store.ActionAvailable || !re.NextAttemptAt.Equal(later) {
					t.Fatalf("scheduled = %+v", re)
				}
			}},
		{"fail", Fail(errors.New("error 20008: cannot")),
			func(t *testing.T, a store.Action, _ map[store.ActionKind]store.Action) {
				if a.State != store.ActionFailed || a.Outcome != store.OutcomeFailed || a.Detail != "error 20008: cannot" || a.Attempts != 1 {
					t.Fatalf("action = %+v", a)
				}
			}},
		{"retry", Retry(errors.New("503")).WithProgress("a,b"),
			func(t *testing.T, a store.Action, _ map[store.ActionKind]store.Action) {
				if a.State != store.ActionAvailable || a.Attempts != 1 || a.Detail != "503" || a.Progress != "a,b" ||
					a.NextAttemptAt.Before(t0.Add(500*time.Millisecond)) || a.NextAttemptAt.After(t0.Add(time.Second)) || !a.LeaseUntil.IsZero() {
					t.Fatalf("action = %+v", a)
				}
			}},
		{"retry at, holding the account", RetryAt(t0.Add(30*time.Second), errors.New("may land")).HoldingAccount(t0.Add(30 * time.Second)).WithWriteSent(t0),
			func(t *testing.T, a store.Action, _ map[store.ActionKind]store.Action) {
				if a.State != store.ActionAvailable || a.Attempts != 1 || !a.NextAttemptAt.Equal(t0.Add(30*time.Second)) ||
					!a.LeaseUntil.Equal(t0.Add(30*time.Second)) || !a.WriteSentAt.Equal(t0) || a.Owner != "" {
					t.Fatalf("action = %+v", a)
				}
			}},
		{"snooze", SnoozeUntil(later, "waits"),
			func(t *testing.T, a store.Action, _ map[store.ActionKind]store.Action) {
				if a.State != store.ActionAvailable || a.Attempts != 0 || !a.NextAttemptAt.Equal(later) || a.Detail != "waits" {
					t.Fatalf("action = %+v", a)
				}
			}},
		{"hold", Hold("held by the guard", []store.ActionKind{store.GuardPageKind("chat")}),
			func(t *testing.T, a store.Action, all map[store.ActionKind]store.Action) {
				if a.State != store.ActionHeld || a.Attempts != 0 || a.Detail != "held by the guard" {
					t.Fatalf("action = %+v", a)
				}
				if p := all[store.GuardPageKind("chat")]; p.State != store.ActionAvailable {
					t.Fatalf("page = %+v", p)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newEngineFixture(t)
			var recorded []bool
			f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result {
				return c.res.OnRecorded(func(ok, paged bool) { recorded = append(recorded, ok, paged) })
			})
			f.work(store.GuardPageKind("chat"), func(ctx context.Context, a store.Action) Result {
				return SnoozeUntil(later, "not now")
			})
			e := f.engine("e/1", 4)
			res := f.fire(t, "spend", "AC1", nil, store.ActionTrip)
			e.RunDueOnce(context.Background())
			all := f.actions(t, res.Incident.ID)
			c.check(t, all[store.ActionTrip], all)
			if len(f.attempts()) < 1 || f.attempts()[0].Kind != store.ActionTrip {
				t.Fatalf("attempts %+v", f.attempts())
			}
			if len(recorded) != 2 || !recorded[0] || recorded[1] != (c.name == "hold") {
				t.Fatalf("OnRecorded got %v", recorded)
			}
			inc, err := f.st.Incident(context.Background(), res.Incident.ID)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]store.State{true: store.StateDone, false: store.StatePending}[c.res.Finished()]; c.name != "fail" && inc.State != want {
				t.Fatalf("incident = %+v", inc)
			}
			if c.name == "fail" && inc.State != store.StateFailed {
				t.Fatalf("incident = %+v", inc)
			}
		})
	}
}

// A kind without a worker fails rather than staying in the queue forever.
func TestEngineFailsAKindWithoutAWorker(t *testing.T) {
	f := newEngineFixture(t)
	e := f.engine("e/1", 4)
	res := f.fire(t, "spend", "AC1", nil, store.ActionTrip)
	e.RunDueOnce(context.Background())
	if a := f.actions(t, res.Incident.ID)[store.ActionTrip]; a.State != store.ActionFailed || a.Detail != `no worker for action kind "trip"` {
		t.Fatalf("action = %+v", a)
	}
}

// Retries back off exponentially from RetryMin up to RetryMax, with jitter.
func TestEngineRetriesBackOff(t *testing.T) {
	f := newEngineFixture(t)
	f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result { return Retry(errors.New("503")) })
	e := f.engine("e/1", 4)
	res := f.fire(t, "spend", "AC1", nil, store.ActionTrip)
	for i := 0; i < 10; i++ {
		now := f.clock.Now()
		e.RunDueOnce(context.Background())
		a := f.actions(t, res.Incident.ID)[store.ActionTrip]
		d := min(time.Second<<i, time.Minute)
		if wait := a.NextAttemptAt.Sub(now); a.Attempts != i+1 || wait < d/2 || wait > d {
			t.Fatalf("attempt %d: next in %v, want within [%v, %v]: %+v", i+1, wait, d/2, d, a)
		}
		e.RunDueOnce(context.Background()) // not due yet
		if n := len(f.attempts()); n != i+1 {
			t.Fatalf("%d attempts before the backoff passed, want %d", n, i+1)
		}
		f.clock.Advance(a.NextAttemptAt.Sub(now))
	}
}

// RunDueOnce claims and runs what is due, the trip before what waits for
// it, and leaves what is not due.
func TestEngineRunDueOnceRunsWhatIsDue(t *testing.T) {
	f := newEngineFixture(t)
	var mu sync.Mutex
	var order []string
	log := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result {
		log(fmt.Sprint("trip ", a.AccountSID))
		return Done(store.OutcomeSuspended, "")
	})
	f.work(store.NotifyKind("chat"), func(ctx context.Context, a store.Action) Result {
		log("notify")
		return Done(store.OutcomeSent, "")
	})
	e := f.engine("e/1", 4)
	first := f.fire(t, "spend", "AC1", nil, store.ActionTrip, store.NotifyKind("chat"))
	f.clock.Advance(time.Hour)
	later := f.fire(t, "spend", "AC2", nil, store.ActionTrip) // recorded an hour later: due then
	f.clock.Advance(-time.Hour)
	e.RunDueOnce(context.Background())
	mu.Lock()
	got := fmt.Sprint(order)
	mu.Unlock()
	if got != "[trip AC1 notify]" {
		t.Fatalf("ran %s", got)
	}
	if a := f.actions(t, first.Incident.ID)[store.NotifyKind("chat")]; a.State != store.ActionDone {
		t.Fatalf("notify = %+v", a)
	}
	if a := f.actions(t, later.Incident.ID)[store.ActionTrip]; a.State != store.ActionAvailable || a.Attempts != 0 {
		t.Fatalf("the trip not due yet = %+v", a)
	}
}

// An action of an account is not run while another action of that account
// holds the lease: not by this engine, nor by another.
func TestEngineOneActionPerAccountAtATime(t *testing.T) {
	f := newEngineFixture(t)
	started := make(chan string, 10)
	release := make(chan struct{})
	var mu sync.Mutex
	running, most := map[string]int{}, 0
	f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result {
		mu.Lock()
		running[a.AccountSID]++
		most = max(most, running[a.AccountSID])
		mu.Unlock()
		started <- a.AccountSID
		<-release
		mu.Lock()
		running[a.AccountSID]--
		mu.Unlock()
		return Done(store.OutcomeSuspended, "")
	})
	e := f.engine("e/1", 4)
	one := f.fire(t, "spend", "AC1", nil, store.ActionTrip)
	two := f.fire(t, "sms", "AC1", nil, store.ActionTrip)
	done := make(chan struct{})
	go func() { e.RunDueOnce(context.Background()); close(done) }()
	if sid := <-started; sid != "AC1" {
		t.Fatal(sid)
	}
	if a := f.actions(t, two.Incident.ID)[store.ActionTrip]; a.State != store.ActionAvailable {
		t.Fatalf("the second action of the account = %+v", a)
	}
	if acts, err := f.st.ClaimActions(context.Background(), store.Claim{Owner: "other/2", LeaseUntil: f.clock.Now().Add(time.Minute)}, f.clock.Now(), 10); err != nil || len(acts) != 0 {
		t.Fatalf("another engine claimed %+v, %v", acts, err)
	}
	close(release)
	<-done
	for _, id := range []int64{one.Incident.ID, two.Incident.ID} {
		if a := f.actions(t, id)[store.ActionTrip]; a.State != store.ActionDone {
			t.Fatalf("action = %+v", a)
		}
	}
	if most != 1 {
		t.Fatalf("%d actions of one account ran at once", most)
	}
}

// runEngine runs e until the test ends (or stop is called) and waits until it has started.
func runEngine(t *testing.T, e *Engine, drain time.Duration) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx, drain); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	waitUntil(t, "the engine to start", func() bool { return e.Claim() != nil })
	return stop
}

// Submit runs an action the engine claimed when its firing was recorded,
// once; a claim made while the engine has stopped waits for the next start.
func TestEngineSubmitRunsAClaimedAction(t *testing.T) {
	f := newEngineFixture(t)
	f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result { return Done(store.OutcomeSuspended, "") })
	e := f.engine("e/1", 4)
	if e.Claim() != nil {
		t.Fatal("a claim before the engine runs")
	}
	stop := runEngine(t, e, time.Minute)
	claim := e.Claim()
	if claim.Owner != "e/1" || !claim.LeaseUntil.Equal(f.clock.Now().Add(5*time.Minute)) {
		t.Fatalf("claim = %+v", claim)
	}
	res := f.fire(t, "spend", "AC1", claim, store.ActionTrip)
	if res.Trip.State != store.ActionRunning || res.Trip.Owner != "e/1" {
		t.Fatalf("trip = %+v", res.Trip)
	}
	e.Submit(res.Trip)
	waitUntil(t, "the trip to be done", func() bool { return f.actions(t, res.Incident.ID)[store.ActionTrip].State == store.ActionDone })
	if n := len(f.attempts()); n != 1 {
		t.Fatalf("%d attempts", n)
	}

	stop()
	if e.Claim() != nil {
		t.Fatal("a claim after the engine stopped")
	}
	// A firing claimed just before the stop: Submit leaves it for the next start.
	late := f.fire(t, "sms", "AC2", claim, store.ActionTrip)
	e.Submit(late.Trip)
	if a := f.actions(t, late.Incident.ID)[store.ActionTrip]; a.State != store.ActionRunning || len(f.attempts()) != 1 {
		t.Fatalf("trip after a Submit to a stopped engine = %+v", a)
	}
	next := f.engine("e/2", 4)
	runEngine(t, next, time.Minute)
	a := f.actions(t, late.Incident.ID)[store.ActionTrip]
	if a.State != store.ActionAvailable || !a.Rescued || !a.LeaseUntil.Equal(f.clock.Now().Add(30*time.Second)) {
		t.Fatalf("rescued trip = %+v", a)
	}
	f.clock.Advance(31 * time.Second)
	next.Wake()
	waitUntil(t, "the rescued trip to be done", func() bool { return f.actions(t, late.Incident.ID)[store.ActionTrip].State == store.ActionDone })
}

// At start the engine rescues what a stopped owner left claimed: an action
// that locks an account waits a write lease (its owner may have sent a
// status write), others run at once.
func TestEngineRescuesAtStart(t *testing.T) {
	f := newEngineFixture(t)
	f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result { return Done(store.OutcomeSuspended, "") })
	f.work(store.GuardPageKind("chat"), func(ctx context.Context, a store.Action) Result { return Done(store.OutcomeSent, "") })
	res := f.fire(t, "spend", "AC1", nil, store.ActionTrip, store.GuardPageKind("chat"))
	claimed, err := f.st.ClaimActions(context.Background(), store.Claim{Owner: deadOwner, LeaseUntil: f.clock.Now().Add(time.Minute)}, f.clock.Now(), 10)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claimed %+v, %v", claimed, err)
	}
	e := f.engine("e/1", 4)
	runEngine(t, e, time.Minute)
	waitUntil(t, "the page to be sent", func() bool {
		return f.actions(t, res.Incident.ID)[store.GuardPageKind("chat")].State == store.ActionDone
	})
	trip := f.actions(t, res.Incident.ID)[store.ActionTrip]
	hold := f.clock.Now().Add(30 * time.Second)
	if trip.State != store.ActionAvailable || trip.Owner != "" || !trip.Rescued || !trip.NextAttemptAt.Equal(hold) || !trip.LeaseUntil.Equal(hold) {
		t.Fatalf("rescued trip = %+v", trip)
	}
	e.RunDueOnce(context.Background())
	for _, a := range f.attempts() {
		if a.Kind == store.ActionTrip {
			t.Fatal("the trip ran within the write lease")
		}
	}
	f.clock.Advance(30 * time.Second)
	e.Wake()
	waitUntil(t, "the trip to be done", func() bool { return f.actions(t, res.Incident.ID)[store.ActionTrip].State == store.ActionDone })
}

// When Run's context ends the running attempts get the drain to finish; an
// attempt cut off past it stays in the queue.
func TestEngineShutdown(t *testing.T) {
	t.Run("finished within the drain", func(t *testing.T) {
		f := newEngineFixture(t)
		started, release := make(chan struct{}), make(chan struct{})
		f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result {
			close(started)
			<-release
			return Done(store.OutcomeSuspended, "")
		})
		e := f.engine("e/1", 4)
		stop := runEngine(t, e, time.Minute)
		res := f.fire(t, "spend", "AC1", e.Claim(), store.ActionTrip)
		e.Submit(res.Trip)
		<-started
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		waitUntil(t, "the engine to stop claiming", func() bool { return e.Claim() == nil })
		close(release)
		<-stopped
		if a := f.actions(t, res.Incident.ID)[store.ActionTrip]; a.State != store.ActionDone {
			t.Fatalf("trip = %+v", a)
		}
	})
	t.Run("cut off past the drain", func(t *testing.T) {
		f := newEngineFixture(t)
		started := make(chan struct{})
		f.work(store.ActionTrip, func(ctx context.Context, a store.Action) Result {
			close(started)
			<-ctx.Done() // a call that only the cancellation ends
			return Retry(ctx.Err())
		})
		e := f.engine("e/1", 4)
		stop := runEngine(t, e, 10*time.Millisecond)
		res := f.fire(t, "spend", "AC1", e.Claim(), store.ActionTrip)
		e.Submit(res.Trip)
		<-started
		stop()
		a := f.actions(t, res.Incident.ID)[store.ActionTrip]
		if a.State != store.ActionAvailable || a.Attempts != 1 || a.Owner != "" {
			t.Fatalf("cut-off trip = %+v", a)
		}
		n, err := f.st.CountPendingActions(context.Background())
		if err != nil || n != 1 {
			t.Fatalf("pending = %d, %v", n, err)
		}
	})
}
