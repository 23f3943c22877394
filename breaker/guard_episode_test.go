package breaker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/store"
)

// The guard's contract: at most max_suspensions per window, and when it
// holds, every notifier gets ONE page. These tests pin the races that broke
// it under load (the 21-account end-to-end test).

// finishHookStore calls after once a trip action has been finished in the store.
type finishHookStore struct {
	store.Store
	once  sync.Once
	after func()
}

func (s *finishHookStore) FinishAction(ctx context.Context, id int64, state, outcome, detail string) error {
	err := s.Store.FinishAction(ctx, id, state, outcome, detail)
	if outcome == OutcomeSuspended {
		s.once.Do(s.after)
	}
	return err
}

func (s *finishHookStore) FinishActionThen(ctx context.Context, id int64, state, outcome, detail string, then []store.Scheduled) error {
	err := s.Store.FinishActionThen(ctx, id, state, outcome, detail, then)
	if outcome == OutcomeSuspended {
		s.once.Do(s.after)
	}
	return err
}

// A suspension that is recorded but whose slot is not freed yet was counted
// twice (once in the store, once as in flight), so the guard held a
// suspension the limit still allowed: 19 suspended and 2 held instead of 20
// and 1.
func TestGuardCountsARecordedSuspensionOnce(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 2, Window: time.Hour})
	hs := &finishHookStore{Store: f.st}
	f.b = New(Options{API: f.api, Store: hs, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Settings: f.b.Settings()})
	ctx := context.Background()
	probe := make(chan error, 1)
	probeAction := store.Action{ID: 1 << 40, Kind: store.ActionTrip}
	// Right after the first suspension is in the store, another worker asks
	// the guard for the second (the limit is 2: it must be admitted).
	hs.after = func() {
		if f.b.op.guardMu.TryLock() {
			f.b.op.guardMu.Unlock()
			probe <- f.b.guardAdmit(ctx, probeAction)
			return
		}
		// The guard is busy recording: ask once it is done.
		go func() { probe <- f.b.guardAdmit(ctx, probeAction) }()
	}
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.trip(t, "spend-daily", a, "a")
	f.b.RunDueOnce(ctx)
	select {
	case err := <-probe:
		if err != nil {
			t.Fatalf("the second suspension of 2 allowed: %v (the first was counted twice)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the probe never ran")
	}
	f.b.guardDone(probeAction.ID)
	if n := len(f.b.op.guardSlots); n != 0 {
		t.Errorf("%d guard slots left", n)
	}
}

func guardEvents(n *recNotifier) (out []*notify.Event) {
	for _, ev := range n.events() {
		if ev.Kind == notify.KindGuard {
			out = append(out, ev)
		}
	}
	return out
}

// The executor reads a batch of pending actions, then starts them one by
// one as workers free up; an action of the batch that another pass already
// ran meanwhile must not run again from the old copy: no second page, no
// second notification.
func TestAnOldCopyOfAPageOrNotificationIsNotSentAgain(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 1, Window: time.Hour})
	ctx := context.Background()
	a0 := f.api.addAccount("tenant-0", "active")
	a1 := f.api.addAccount("tenant-1", "active")
	f.reconcile(t)
	f.trip(t, "spend-daily", a0, "t0")
	f.trip(t, "spend-daily", a1, "t1")
	f.b.RunDueOnce(ctx) // one suspended, one held with its pages
	old, err := f.st.PendingActions(ctx, f.clock.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]store.Action{}
	for _, act := range old {
		byKind[act.Kind] = act
	}
	if byKind["guard:chat"].ID == 0 || byKind["notify:chat"].ID == 0 {
		t.Fatalf("pending = %+v", old)
	}
	f.settle(t)
	if len(guardEvents(f.chat)) != 1 || len(f.chat.events()) != 2 {
		t.Fatalf("chat got %d events, %d pages", len(f.chat.events()), len(guardEvents(f.chat)))
	}
	// The old copies come up again (a worker freed up late).
	f.b.execute(ctx, byKind["guard:chat"])
	f.b.execute(ctx, byKind["notify:chat"])
	if len(guardEvents(f.chat)) != 1 || len(f.chat.events()) != 2 {
		t.Errorf("an old copy was sent again: chat got %d events, %d pages", len(f.chat.events()), len(guardEvents(f.chat)))
	}

	// The same for a copy older than a failed attempt: it waits for its backoff.
	f.pager.fail = []error{fmt.Errorf("502 from pager")}
	dry := f.api.addAccount("dry-a", "active")
	f.reconcile(t)
	n2 := f.trip(t, "spend-dry", dry, "d") // a dry run: notified
	f.b.RunDueOnce(ctx)                    // the trip
	old, _ = f.st.PendingActions(ctx, f.clock.Now(), 0)
	var page store.Action
	for _, act := range old {
		if act.Kind == "notify:pager" && act.IncidentID == n2.Incident.ID {
			page = act
		}
	}
	if page.ID == 0 {
		t.Fatalf("pending = %+v", old)
	}
	f.b.RunDueOnce(ctx) // fails once, retried after a backoff
	before := f.pager.errs + len(f.pager.events())
	f.b.execute(ctx, page)
	if got := f.pager.errs + len(f.pager.events()); got != before {
		t.Errorf("an old copy ran before its backoff: %d attempts, want %d", got, before)
	}
}

// An old copy of a trip the guard holds must leave it held: retrying it
// made it due again, and it then came back every backoff.
func TestAnOldCopyOfAHeldTripStaysHeld(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 1, Window: time.Hour})
	ctx := context.Background()
	a0 := f.api.addAccount("tenant-0", "active")
	a1 := f.api.addAccount("tenant-1", "active")
	f.reconcile(t)
	f.trip(t, "spend-daily", a0, "t0")
	f.b.RunDueOnce(ctx)
	held := f.trip(t, "spend-daily", a1, "t1")
	oldTrip := f.actions(t, held.Incident.ID)["trip"]
	f.settle(t)
	if got := f.actions(t, held.Incident.ID)["trip"]; got.Hold != store.HoldHeld {
		t.Fatalf("trip = %+v", got)
	}
	f.b.execute(ctx, oldTrip)
	got := f.actions(t, held.Incident.ID)["trip"]
	if got.Hold != store.HoldHeld || got.State != store.StatePending || got.Attempts != 0 {
		t.Errorf("held trip after an old copy ran = %+v", got)
	}
	due, err := f.st.PendingActions(ctx, f.clock.Now().Add(24*time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, act := range due {
		if act.ID == oldTrip.ID {
			t.Errorf("the held trip is due again at %s", act.NextAttemptAt)
		}
	}
	if f.api.count("accounts.update") != 1 || testutil.ToFloat64(f.m.GuardHeld) != 1 {
		t.Errorf("%d suspensions, guard_held %v", f.api.count("accounts.update"), testutil.ToFloat64(f.m.GuardHeld))
	}
	if len(guardEvents(f.chat)) != 1 {
		t.Errorf("%d pages", len(guardEvents(f.chat)))
	}
}
