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
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// The guard's contract: at most max_suspensions per window, and when it
// holds, every notifier gets ONE page. These tests pin the races that broke
// it under load (the 21-account end-to-end test).

// completeHookStore calls after once a trip action has been recorded
// "suspended" in the store (inside the engine's recording of it).
type completeHookStore struct {
	store.Store
	once  sync.Once
	after func()
}

func (s *completeHookStore) CompleteAction(ctx context.Context, id int64, owner string, c store.Completion) (store.Completed, error) {
	done, err := s.Store.CompleteAction(ctx, id, owner, c)
	if err == nil && c.Outcome == OutcomeSuspended {
		s.once.Do(s.after)
	}
	return done, err
}

// A suspension that is recorded but whose slot is not freed yet was counted
// twice (once in the store, once as in flight), so the guard held a
// suspension the limit still allowed: 19 suspended and 2 held instead of 20
// and 1.
func TestGuardCountsARecordedSuspensionOnce(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 2, Window: time.Hour})
	hs := &completeHookStore{Store: f.st}
	f.b = New(Options{API: f.api, Store: hs, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Settings: f.b.Settings()})
	ctx := context.Background()
	type admitted struct {
		slot guardSlot
		held *held
		err  error
	}
	probe := make(chan admitted, 1)
	probeAction := store.Action{ID: 1 << 40, Kind: store.ActionTrip}
	// Right after the first suspension is in the store, another worker asks
	// the guard for the second (the limit is 2: it must be admitted). The
	// guard's lock is held while the suspension is recorded: the probe
	// waits for it.
	hs.after = func() {
		go func() {
			slot, h, err := f.b.guard.admit(ctx, probeAction)
			probe <- admitted{slot, h, err}
		}()
	}
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.trip(t, "spend-daily", a, "a")
	f.b.RunDueOnce(ctx)
	select {
	case got := <-probe:
		if got.err != nil || got.held != nil {
			t.Fatalf("the second suspension of 2 was not admitted: held %+v, %v (the first was counted twice)", got.held, got.err)
		}
		got.slot.free()
	case <-time.After(30 * time.Second):
		t.Fatal("the probe never ran")
	}
	f.b.guard.mu.Lock()
	n := len(f.b.guard.slots)
	f.b.guard.mu.Unlock()
	if n != 0 {
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

// Two processes (engines of two owners) step the same queue at once: each
// action is claimed by one of them, so no page and no notification is sent
// twice.
func TestTwoEnginesSendEachPageAndNotificationOnce(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 1, Window: time.Hour})
	ctx := context.Background()
	var accts []twilioapi.Account
	for i := 0; i < 6; i++ {
		accts = append(accts, f.api.addAccount(fmt.Sprintf("tenant-%d", i), "active"))
	}
	f.reconcile(t)
	for i, a := range accts {
		f.trip(t, "spend-daily", a, fmt.Sprint("t", i))
	}
	other := New(Options{API: f.api, Store: f.st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Owner: "other-host/2", Settings: f.b.Settings()})
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		for _, b := range []*Breaker{f.b, other} {
			wg.Add(1)
			go func() { defer wg.Done(); b.RunDueOnce(ctx) }()
		}
		wg.Wait()
	}
	// Each engine has its own guard slots, so the store's count is what
	// both see once recorded: at least one and at most two suspensions
	// (one per engine in flight at once), the rest held.
	n := f.api.count("accounts.update")
	held, err := f.st.CountHeld(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 || n > 2 || n+held != len(accts) {
		t.Fatalf("%d suspensions, %d held", n, held)
	}
	for _, nf := range []*recNotifier{f.chat, f.pager} {
		if len(guardEvents(nf)) != 1 || len(nf.events()) != n+1 {
			t.Errorf("%s got %d events, %d pages; want one per finished incident and one page", nf.name, len(nf.events()), len(guardEvents(nf)))
		}
	}
}

// A trip the guard holds is never claimed, however late: it waits for a
// person, with no attempt counted.
func TestAHeldTripIsNeverClaimed(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 1, Window: time.Hour})
	ctx := context.Background()
	a0 := f.api.addAccount("tenant-0", "active")
	a1 := f.api.addAccount("tenant-1", "active")
	f.reconcile(t)
	f.trip(t, "spend-daily", a0, "t0")
	f.b.RunDueOnce(ctx)
	held := f.trip(t, "spend-daily", a1, "t1")
	f.settle(t)
	if got := f.actions(t, held.Incident.ID)["trip"]; got.State != store.ActionHeld || got.Attempts != 0 {
		t.Fatalf("trip = %+v", got)
	}
	f.clock.Advance(24 * time.Hour)
	if acts := f.claimAs(t, "other-host/2"); len(acts) != 0 {
		t.Fatalf("claimed a day later: %+v", acts)
	}
	f.settle(t)
	if got := f.actions(t, held.Incident.ID)["trip"]; got.State != store.ActionHeld || got.Attempts != 0 {
		t.Errorf("held trip a day later = %+v", got)
	}
	if f.api.count("accounts.update") != 1 || testutil.ToFloat64(f.m.GuardHeld) != 1 {
		t.Errorf("%d suspensions, guard_held %v", f.api.count("accounts.update"), testutil.ToFloat64(f.m.GuardHeld))
	}
	if len(guardEvents(f.chat)) != 1 {
		t.Errorf("%d pages", len(guardEvents(f.chat)))
	}
}
