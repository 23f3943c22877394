package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// testOwner is the owner of the claims the tests take with take.
const testOwner = "test-owner"

// takeLease is the lease of those claims.
var takeLease = t0.Add(100 * time.Hour)

// actionByID reads one action.
func actionByID(t testing.TB, s *SQLite, id int64) Action {
	t.Helper()
	rows, err := s.r.Query(`SELECT `+actionCols+` FROM actions WHERE id = ?`, id)
	if err != nil {
		t.Fatal(err)
	}
	acts, err := scanActions(rows)
	if err != nil || len(acts) != 1 {
		t.Fatalf("action %d: %+v, %v", id, acts, err)
	}
	return acts[0]
}

// take claims available action id for owner, leased until takeLease,
// whatever its due time, account or trip (test set-up: ClaimActions picks
// its own actions). It returns the action as stored.
func take(t testing.TB, s *SQLite, id int64, owner string) Action {
	t.Helper()
	r, err := s.w.Exec(`UPDATE actions SET state = 'running', owner = ?, lease_until = ? WHERE id = ? AND state = 'available'`,
		owner, takeLease.UnixNano(), id)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := r.RowsAffected(); n != 1 {
		t.Fatalf("take action %d: not available", id)
	}
	return actionByID(t, s, id)
}

// complete takes action id and completes it with c.
func complete(t testing.TB, s *SQLite, id int64, c Completion) Completed {
	t.Helper()
	take(t, s, id, testOwner)
	done, err := s.CompleteAction(context.Background(), id, testOwner, c)
	if err != nil {
		t.Fatal(err)
	}
	return done
}

func claim(t testing.TB, s *SQLite, owner string, lease, now time.Time, limit int) []Action {
	t.Helper()
	acts, err := s.ClaimActions(context.Background(), Claim{Owner: owner, LeaseUntil: lease}, now, limit)
	if err != nil {
		t.Fatal(err)
	}
	return acts
}

type ka struct {
	incident int64
	kind     ActionKind
}

func kas(acts []Action) []ka {
	out := []ka{}
	for _, a := range acts {
		out = append(out, ka{a.IncidentID, a.Kind})
	}
	return out
}

func pending(t testing.TB, s *SQLite) int {
	t.Helper()
	n, err := s.CountPendingActions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Claimed actions come back as stored: running, the owner's, leased; trips
// first, then the others, each by NextAttemptAt then ID. They are not
// claimed again.
func TestClaimActionsOrder(t *testing.T) {
	s, _ := openTest(t)
	// Incidents A at t0+3m, B at t0+1m, C at t0+2m, D at t0+1m (after B),
	// each with a trip and "extra" (a kind that neither waits nor locks).
	var ids []int64
	for i, off := range []int{3, 1, 2, 1} {
		f := firing(fmt.Sprint("tok", i), "r", fmt.Sprint("AC", i), "p", t0.Add(time.Duration(off)*time.Minute))
		f.Actions = []ActionKind{ActionTrip, "extra"}
		ids = append(ids, record(t, s, f).Incident.ID)
	}
	a, b, c, d := ids[0], ids[1], ids[2], ids[3]
	now, lease := t0.Add(time.Hour), t0.Add(2*time.Hour)
	acts := claim(t, s, "w1", lease, now, 0)
	want := []ka{{b, ActionTrip}, {d, ActionTrip}, {c, ActionTrip}, {a, ActionTrip}, {b, "extra"}, {d, "extra"}, {c, "extra"}, {a, "extra"}}
	if got := kas(acts); !reflect.DeepEqual(got, want) {
		t.Fatalf("claimed\n got %v\nwant %v", got, want)
	}
	for _, got := range acts {
		if got.State != ActionRunning || got.Owner != "w1" || !got.LeaseUntil.Equal(lease) || !got.UpdatedAt.Equal(now) {
			t.Errorf("claimed action %+v", got)
		}
		if stored := actionByID(t, s, got.ID); stored != got {
			t.Errorf("returned %+v, stored %+v", got, stored)
		}
	}
	if got := claim(t, s, "w2", lease, now, 0); len(got) != 0 {
		t.Errorf("claimed twice: %+v", got)
	}
	if n := pending(t, s); n != 8 {
		t.Errorf("CountPendingActions = %d, want 8 (running actions count)", n)
	}

	// A retry moves an action back in the queue; a finished one is gone.
	if _, err := s.CompleteAction(context.Background(), acts[0].ID, "w1",
		Completion{State: ActionAvailable, NextAttemptAt: t0.Add(30 * time.Minute), Attempted: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompleteAction(context.Background(), acts[6].ID, "w1", Completion{State: ActionDone, Outcome: OutcomeSent}); err != nil {
		t.Fatal(err)
	}
	if got := claim(t, s, "w2", lease, t0.Add(30*time.Minute-1), 0); len(got) != 0 {
		t.Errorf("claimed before due: %+v", got)
	}
	if got := kas(claim(t, s, "w2", lease, t0.Add(30*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{b, ActionTrip}}) {
		t.Errorf("claimed when due: %v", got)
	}
}

// Only due actions, at most limit of them (0 or less: 100).
func TestClaimActionsLimitAndDue(t *testing.T) {
	s, _ := openTest(t)
	var ids []int64
	for i, off := range []int{3, 1, 2, 1} {
		f := firing(fmt.Sprint("tok", i), "r", fmt.Sprint("AC", i), "p", t0.Add(time.Duration(off)*time.Minute))
		f.Actions = []ActionKind{ActionTrip, "extra"}
		ids = append(ids, record(t, s, f).Incident.ID)
	}
	a, b, c, d := ids[0], ids[1], ids[2], ids[3]
	lease := t0.Add(2 * time.Hour)
	for _, step := range []struct {
		now   time.Time
		limit int
		want  []ka
	}{
		{t0, 0, []ka{}},
		{t0.Add(time.Minute - 1), 0, []ka{}},
		{t0.Add(time.Minute), 0, []ka{{b, ActionTrip}, {d, ActionTrip}, {b, "extra"}, {d, "extra"}}}, // due time inclusive
		{t0.Add(time.Hour), 1, []ka{{c, ActionTrip}}},
		{t0.Add(time.Hour), -1, []ka{{a, ActionTrip}, {c, "extra"}, {a, "extra"}}},
		{t0.Add(time.Hour), 0, []ka{}},
	} {
		if got := kas(claim(t, s, "w", lease, step.now, step.limit)); !reflect.DeepEqual(got, step.want) {
			t.Errorf("claim at %v, limit %d\n got %v\nwant %v", step.now, step.limit, got, step.want)
		}
	}
	if _, err := s.ClaimActions(context.Background(), Claim{LeaseUntil: lease}, t0, 0); err == nil {
		t.Error("a claim without owner was accepted")
	}
}

// One action per account at a time: never two in one claim, never one whose
// account another action holds a lease on (running, or retried with
// HoldAccountUntil), until that lease passes.
func TestClaimActionsOneActionPerAccount(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	fx := firing("x", "r", "AC1", "p1", t0)
	fx.Actions = []ActionKind{ActionTrip, ActionEndCalls}
	x := record(t, s, fx).Incident.ID
	fy := firing("y", "r", "AC1", "p2", t0.Add(time.Second))
	fy.Actions = []ActionKind{ActionTrip}
	y := record(t, s, fy).Incident.ID
	fz := firing("z", "r", "AC2", "p1", t0)
	fz.Actions = []ActionKind{ActionTrip}
	z := record(t, s, fz).Incident.ID
	xTrip, yTrip := actionOf(t, s, x, ActionTrip), actionOf(t, s, y, ActionTrip)

	now := t0.Add(time.Second)
	if got := kas(claim(t, s, "w1", t0.Add(time.Minute), now, 0)); !reflect.DeepEqual(got, []ka{{x, ActionTrip}, {z, ActionTrip}}) {
		t.Fatalf("first claim: %v, want one trip per account", got)
	}
	if got := claim(t, s, "w2", t0.Add(time.Hour), now, 0); len(got) != 0 {
		t.Fatalf("claimed while the account is leased by a running action: %v", kas(got))
	}

	// A retry that may still see its write land keeps the account.
	if _, err := s.CompleteAction(ctx, xTrip.ID, "w1", Completion{State: ActionAvailable, NextAttemptAt: t0.Add(2 * time.Minute),
		HoldAccountUntil: t0.Add(5 * time.Minute), Attempted: true, Detail: "timeout"}); err != nil {
		t.Fatal(err)
	}
	if a := actionByID(t, s, xTrip.ID); a.State != ActionAvailable || a.Owner != "" || !a.LeaseUntil.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("retried trip %+v", a)
	}
	if got := claim(t, s, "w2", t0.Add(time.Hour), t0.Add(time.Minute), 0); len(got) != 0 {
		t.Fatalf("claimed while the account is leased by an available action: %v", kas(got))
	}
	// The action that holds the lease is not kept out by it.
	if got := kas(claim(t, s, "w2", t0.Add(3*time.Minute), t0.Add(2*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{x, ActionTrip}}) {
		t.Fatalf("claim of the lease holder: %v", got)
	}
	if _, err := s.CompleteAction(ctx, xTrip.ID, "w2", Completion{State: ActionDone, Outcome: OutcomeSuspended}); err != nil {
		t.Fatal(err)
	}
	// The account is free: the other trip goes first, end_calls waits its turn.
	if got := kas(claim(t, s, "w2", t0.Add(3*time.Minute), t0.Add(2*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{y, ActionTrip}}) {
		t.Fatalf("claim after the trip: %v", got)
	}
	if got := claim(t, s, "w3", t0.Add(time.Hour), t0.Add(3*time.Minute-1), 0); len(got) != 0 {
		t.Fatalf("claimed while the other trip runs: %v", kas(got))
	}
	// A lease that has passed holds nothing (its owner is presumed gone).
	if got := kas(claim(t, s, "w3", t0.Add(time.Hour), t0.Add(3*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{x, ActionEndCalls}}) {
		t.Fatalf("claim after the lease passed: %v", got)
	}
	if a := actionByID(t, s, yTrip.ID); a.State != ActionRunning || a.Owner != "w2" {
		t.Errorf("the expired claim changed: %+v", a)
	}
}

// end_calls and notify:* wait while the trip is available, running or held,
// and are claimed once it is done or failed. Guard pages do not wait.
func TestClaimActionsWaitForTheTrip(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("tok", "r", "AC1", "p", t0)
	f.Actions = []ActionKind{ActionTrip, ActionEndCalls, NotifyKind("ops"), NotifyKind("sms"), GuardPageKind("ops")}
	record(t, s, f)
	if n := pending(t, s); n != 5 {
		t.Errorf("CountPendingActions = %d, want 5", n)
	}
	lease := t0.Add(time.Hour)
	acts := claim(t, s, "w", lease, t0, 0)
	if got := kinds(acts); !reflect.DeepEqual(got, []ActionKind{ActionTrip, GuardPageKind("ops")}) {
		t.Fatalf("while the trip is available: %v", got)
	}
	trip := acts[0]
	if got := claim(t, s, "w", lease, t0, 0); len(got) != 0 {
		t.Fatalf("while the trip is running: %v", kinds(got))
	}
	if _, err := s.CompleteAction(ctx, trip.ID, "w", Completion{State: ActionHeld, Detail: "held"}); err != nil {
		t.Fatal(err)
	}
	if got := claim(t, s, "w", lease, t0.Add(time.Hour), 0); len(got) != 0 {
		t.Fatalf("while the trip is held: %v", kinds(got))
	}
	if _, err := s.ReleaseHeld(ctx, t0, "released"); err != nil {
		t.Fatal(err)
	}
	if got := kinds(claim(t, s, "w", lease, t0, 0)); !reflect.DeepEqual(got, []ActionKind{ActionTrip}) {
		t.Fatalf("after the release: %v", got)
	}
	if _, err := s.CompleteAction(ctx, trip.ID, "w", Completion{State: ActionDone, Outcome: OutcomeSuspended}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(claim(t, s, "w", lease, t0, 0)); !reflect.DeepEqual(got, []ActionKind{ActionEndCalls, NotifyKind("ops"), NotifyKind("sms")}) {
		t.Fatalf("after the trip: %v", got)
	}

	// A failed trip is finished too.
	g := firing("tok2", "r", "AC2", "p", t0)
	id2 := record(t, s, g).Incident.ID
	complete(t, s, actionOf(t, s, id2, ActionTrip).ID, Completion{State: ActionFailed, Outcome: OutcomeFailed, Detail: "20008"})
	if got := kas(claim(t, s, "w", lease, t0, 0)); !reflect.DeepEqual(got, []ka{{id2, NotifyKind("ops")}}) {
		t.Fatalf("after a failed trip: %v", got)
	}
}

// Two owners race to claim the same actions, completing what they get:
// exactly one winner each time, every action claimed once, never two
// actions of one account running at once.
func TestClaimActionsTwoOwnersRace(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	const accounts, periods = 30, 2
	for i := range accounts {
		for p := range periods {
			record(t, s, firing(fmt.Sprintf("tok%d-%d", i, p), "r", fmt.Sprint("AC", i), fmt.Sprint("p", p), t0))
		}
	}
	total := countRows(t, s, "actions")
	var (
		mu      sync.Mutex
		claimed = map[int64]string{}
		busy    = map[string]string{} // account -> owner running an action of it
		wg      sync.WaitGroup
		start   = make(chan struct{})
	)
	errc := make(chan error, 4*total)
	for _, owner := range []string{"A", "B"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				acts, err := s.ClaimActions(ctx, Claim{Owner: owner, LeaseUntil: t0.Add(time.Hour)}, t0, 3)
				if err != nil {
					errc <- err
					return
				}
				if len(acts) == 0 {
					n, err := s.CountPendingActions(ctx)
					if err != nil {
						errc <- err
						return
					}
					if n == 0 {
						return
					}
					runtime.Gosched() // the other owner runs what is left
					continue
				}
				seen := map[string]bool{}
				mu.Lock()
				for _, a := range acts {
					if prev, ok := claimed[a.ID]; ok {
						errc <- fmt.Errorf("action %d claimed by %s and %s", a.ID, prev, owner)
					}
					claimed[a.ID] = owner
					if a.AccountSID == "" {
						continue
					}
					if seen[a.AccountSID] {
						errc <- fmt.Errorf("%s claimed two actions of %s at once", owner, a.AccountSID)
					}
					seen[a.AccountSID] = true
					if other, ok := busy[a.AccountSID]; ok {
						errc <- fmt.Errorf("%s claimed an action of %s while %s runs one", owner, a.AccountSID, other)
					}
					busy[a.AccountSID] = owner
				}
				mu.Unlock()
				for _, a := range acts {
					if a.AccountSID != "" { // before the commit frees it: no false alarm
						mu.Lock()
						delete(busy, a.AccountSID)
						mu.Unlock()
					}
					if _, err := s.CompleteAction(ctx, a.ID, owner, Completion{State: ActionDone, Outcome: OutcomeSent}); err != nil {
						errc <- err
					}
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if len(claimed) != total {
		t.Errorf("%d actions claimed, want %d", len(claimed), total)
	}
	if n := countRows(t, s, "actions WHERE state <> 'done'"); n != 0 {
		t.Errorf("%d actions not done", n)
	}
}

// ClaimBy creates the trip running for the recording process, unless another
// action of the account holds a lease at the firing's time.
func TestRecordFiringClaimBy(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("IT1", "r", "AC1", "p1", t0)
	f.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(time.Minute)}
	res := record(t, s, f)
	if !res.NewIncident || res.Trip.State != ActionRunning || res.Trip.Owner != "recv" ||
		!res.Trip.LeaseUntil.Equal(t0.Add(time.Minute)) || res.Trip.AccountSID != "AC1" || res.Trip.Kind != ActionTrip {
		t.Fatalf("claimed trip %+v", res.Trip)
	}
	if stored := actionOf(t, s, res.Incident.ID, ActionTrip); stored != res.Trip {
		t.Fatalf("returned trip\n %+v\nstored\n %+v", res.Trip, stored)
	}
	if n := actionOf(t, s, res.Incident.ID, NotifyKind("ops")); n.State != ActionAvailable || n.Owner != "" || !n.LeaseUntil.IsZero() {
		t.Fatalf("only the trip is claimed: %+v", n)
	}
	if got := claim(t, s, "w", t0.Add(time.Hour), t0, 0); len(got) != 0 {
		t.Fatalf("another owner claimed %v", kas(got))
	}

	// A repeat (same token) or another firing of the incident creates no trip.
	if r := record(t, s, f); r.Trip.ID != 0 || !r.DuplicateToken {
		t.Fatalf("repeat: %+v", r)
	}
	g := firing("IT2", "r", "AC1", "p1", t0.Add(time.Second))
	g.ClaimBy = f.ClaimBy
	if r := record(t, s, g); r.Trip.ID != 0 || r.NewIncident {
		t.Fatalf("second firing of the incident: %+v", r)
	}
	if got := actionOf(t, s, res.Incident.ID, ActionTrip); got != res.Trip {
		t.Fatalf("a later firing changed the trip: %+v", got)
	}

	// Another incident of the account while the trip runs: available.
	h := firing("IT3", "r", "AC1", "p2", t0.Add(time.Second))
	h.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(time.Minute + time.Second)}
	r2 := record(t, s, h)
	if r2.Trip.ID == 0 || r2.Trip.State != ActionAvailable || r2.Trip.Owner != "" || !r2.Trip.LeaseUntil.IsZero() {
		t.Fatalf("trip of a leased account %+v", r2.Trip)
	}
	if stored := actionOf(t, s, r2.Incident.ID, ActionTrip); stored != r2.Trip {
		t.Fatalf("returned trip\n %+v\nstored\n %+v", r2.Trip, stored)
	}

	// Likewise while a retry holds the account after a write.
	if _, err := s.CompleteAction(ctx, res.Trip.ID, "recv", Completion{State: ActionAvailable, NextAttemptAt: t0.Add(2 * time.Minute),
		HoldAccountUntil: t0.Add(5 * time.Minute), WriteSentAt: t0, Attempted: true}); err != nil {
		t.Fatal(err)
	}
	i := firing("IT4", "r", "AC1", "p3", t0.Add(3*time.Minute))
	i.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(4 * time.Minute)}
	if r := record(t, s, i); r.Trip.State != ActionAvailable {
		t.Fatalf("trip while a retry holds the account: %+v", r.Trip)
	}
	// Once that lease has passed (at the firing's time), claimed again.
	j := firing("IT5", "r", "AC1", "p4", t0.Add(5*time.Minute))
	j.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(6 * time.Minute)}
	if r := record(t, s, j); r.Trip.State != ActionRunning || r.Trip.Owner != "recv" {
		t.Fatalf("trip after the lease passed: %+v", r.Trip)
	}
	// Another account is not concerned.
	k := firing("IT6", "r", "AC2", "p1", t0.Add(time.Second))
	k.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(time.Minute)}
	if r := record(t, s, k); r.Trip.State != ActionRunning {
		t.Fatalf("trip of another account: %+v", r.Trip)
	}
}

func TestMarkWriteSent(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("IT1", "r", "AC1", "p", t0)
	f.ClaimBy = &Claim{Owner: "recv", LeaseUntil: t0.Add(time.Minute)}
	res := record(t, s, f)
	id := res.Trip.ID
	if err := s.MarkWriteSent(ctx, id, "recv", 0, t0.Add(10*time.Second), t0.Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := res.Trip
	want.WriteSentAt, want.LeaseUntil, want.UpdatedAt = t0.Add(10*time.Second), t0.Add(5*time.Minute), t0.Add(10*time.Second)
	if got := actionByID(t, s, id); got != want {
		t.Fatalf("after the mark\n got %+v\nwant %+v", got, want)
	}
	// A later mark moves WriteSentAt; the lease is never shortened.
	if err := s.MarkWriteSent(ctx, id, "recv", 0, t0.Add(20*time.Second), t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	want.WriteSentAt, want.UpdatedAt = t0.Add(20*time.Second), t0.Add(20*time.Second)
	if got := actionByID(t, s, id); got != want {
		t.Fatalf("after the second mark\n got %+v\nwant %+v", got, want)
	}
	notify := actionOf(t, s, res.Incident.ID, NotifyKind("ops"))
	for name, err := range map[string]error{
		"other owner":    s.MarkWriteSent(ctx, id, "other", 0, t0.Add(time.Minute), t0.Add(time.Hour)),
		"not running":    s.MarkWriteSent(ctx, notify.ID, "recv", 0, t0.Add(time.Minute), t0.Add(time.Hour)),
		"unknown action": s.MarkWriteSent(ctx, 9999, "recv", 0, t0.Add(time.Minute), t0.Add(time.Hour)),
		"later attempt":  s.MarkWriteSent(ctx, id, "recv", 1, t0.Add(time.Minute), t0.Add(time.Hour)),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
	if got := actionByID(t, s, id); got != want {
		t.Fatalf("refused marks changed the action: %+v", got)
	}
	// Completions without a WriteSentAt keep it; a finished action takes no mark.
	if _, err := s.CompleteAction(ctx, id, "recv", Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Minute),
		HoldAccountUntil: t0.Add(5 * time.Minute), Attempted: true}); err != nil {
		t.Fatal(err)
	}
	complete(t, s, id, Completion{State: ActionDone, Outcome: OutcomeAlreadySuspended, Attempted: true})
	if got := actionByID(t, s, id); !got.WriteSentAt.Equal(t0.Add(20*time.Second)) || got.State != ActionDone || !got.LeaseUntil.IsZero() {
		t.Fatalf("after the completions: %+v", got)
	}
	if err := s.MarkWriteSent(ctx, id, testOwner, 0, t0.Add(time.Hour), t0.Add(2*time.Hour)); !errors.Is(err, ErrNotFound) {
		t.Errorf("mark of a finished action: %v", err)
	}
}

// Finishing: the trip's state, outcome and detail are the incident's;
// nothing can happen to a finished action, nor to one the caller does not
// hold.
func TestCompleteActionFinishes(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	clock := t0.Add(time.Hour)
	s.SetClock(func() time.Time { return clock })

	res := record(t, s, firing("tok", "r", "AC", "p", t0))
	id := res.Incident.ID
	trip := actionOf(t, s, id, ActionTrip)
	notify := actionOf(t, s, id, NotifyKind("ops"))

	// Retry: attempts, detail, next attempt; the incident shows the detail.
	complete(t, s, trip.ID, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(2 * time.Hour), Detail: "twilio: 503", Attempted: true})
	want := trip
	want.Attempts, want.Detail, want.NextAttemptAt, want.UpdatedAt = 1, "twilio: 503", t0.Add(2*time.Hour), clock
	if got := actionOf(t, s, id, ActionTrip); got != want {
		t.Errorf("after retry\n got %+v\nwant %+v", got, want)
	}
	inc := incident(t, s, id)
	if inc.State != StatePending || inc.Detail != "twilio: 503" || inc.Outcome != "" || !inc.UpdatedAt.Equal(clock) {
		t.Errorf("incident after retry: %+v", inc)
	}

	// A non-trip action leaves the incident alone.
	clock = clock.Add(time.Minute)
	complete(t, s, notify.ID, Completion{State: ActionAvailable, NextAttemptAt: t0, Detail: "smtp down", Attempted: true})
	complete(t, s, notify.ID, Completion{State: ActionFailed, Outcome: OutcomeFailed, Detail: "gave up", Attempted: true})
	if got := incident(t, s, id); got != inc {
		t.Errorf("incident changed by notify action:\n got %+v\nwant %+v", got, inc)
	}
	if got := actionOf(t, s, id, NotifyKind("ops")); got.State != ActionFailed || got.Attempts != 2 ||
		got.Outcome != OutcomeFailed || got.Detail != "gave up" || got.Owner != "" {
		t.Errorf("notify action: %+v", got)
	}

	// Finish the trip: the incident follows.
	clock = clock.Add(time.Minute)
	complete(t, s, trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended, Detail: "ok", Attempted: true})
	want.State, want.Outcome, want.Detail, want.Attempts, want.NextAttemptAt, want.UpdatedAt = ActionDone, OutcomeSuspended, "ok", 2, clock, clock
	if got := actionOf(t, s, id, ActionTrip); got != want {
		t.Errorf("after finish\n got %+v\nwant %+v", got, want)
	}
	wantInc := inc
	wantInc.State, wantInc.Outcome, wantInc.Detail, wantInc.UpdatedAt = StateDone, OutcomeSuspended, "ok", clock
	if got := incident(t, s, id); got != wantInc {
		t.Errorf("incident after finish\n got %+v\nwant %+v", got, wantInc)
	}

	// Nothing more can happen to a finished action, nor to one that is not
	// the caller's or not running.
	clock = clock.Add(time.Minute)
	res2 := record(t, s, firing("tok2", "r", "AC", "p2", t0))
	trip2 := actionOf(t, s, res2.Incident.ID, ActionTrip)
	notify2 := actionOf(t, s, res2.Incident.ID, NotifyKind("ops"))
	trip2 = take(t, s, trip2.ID, "someone")
	for name, err := range map[string]error{
		"finish again": func() error {
			_, err := s.CompleteAction(ctx, trip.ID, testOwner, Completion{State: ActionFailed})
			return err
		}(),
		"retry finished": func() error {
			_, err := s.CompleteAction(ctx, trip.ID, testOwner, Completion{State: ActionAvailable, NextAttemptAt: t0})
			return err
		}(),
		"finish unknown": func() error {
			_, err := s.CompleteAction(ctx, 9999, testOwner, Completion{State: ActionDone})
			return err
		}(),
		"finish notified": func() error {
			_, err := s.CompleteAction(ctx, notify.ID, testOwner, Completion{State: ActionDone})
			return err
		}(),
		"wrong owner": func() error {
			_, err := s.CompleteAction(ctx, trip2.ID, testOwner, Completion{State: ActionDone})
			return err
		}(),
		"no owner": func() error { _, err := s.CompleteAction(ctx, trip2.ID, "", Completion{State: ActionDone}); return err }(),
		"not claimed": func() error {
			_, err := s.CompleteAction(ctx, notify2.ID, "", Completion{State: ActionDone})
			return err
		}(),
		"hold not claimed": func() error {
			_, err := s.CompleteAction(ctx, notify2.ID, testOwner, Completion{State: ActionHeld, Pages: []ActionKind{"guard:x"}})
			return err
		}(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
	if got := actionOf(t, s, id, ActionTrip); got != want {
		t.Errorf("finished action changed\n got %+v\nwant %+v", got, want)
	}
	if got := incident(t, s, id); got != wantInc {
		t.Errorf("finished incident changed\n got %+v\nwant %+v", got, wantInc)
	}
	if got := actionOf(t, s, res2.Incident.ID, ActionTrip); got != trip2 {
		t.Errorf("another owner's action changed: %+v", got)
	}
	if got := actionsOf(t, s, res2.Incident.ID); len(got) != 2 || got[1] != notify2 {
		t.Errorf("refused completions changed the incident's actions: %+v", got)
	}

	// Bad arguments are errors, not ErrNotFound, and change nothing.
	for name, c := range map[string]Completion{
		"state running":  {State: ActionRunning},
		"state bogus":    {State: "bogus"},
		"no state":       {},
		"zero next time": {State: ActionAvailable},
	} {
		if _, err := s.CompleteAction(ctx, trip2.ID, "someone", c); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want a validation error", name, err)
		}
	}
	if got := actionOf(t, s, res2.Incident.ID, ActionTrip); got != trip2 {
		t.Errorf("action changed by invalid calls: %+v", got)
	}

	// A failed trip.
	if _, err := s.CompleteAction(ctx, trip2.ID, "someone", Completion{State: ActionFailed, Outcome: OutcomeFailed, Detail: "account not found"}); err != nil {
		t.Fatal(err)
	}
	if got := incident(t, s, res2.Incident.ID); got.State != StateFailed || got.Outcome != OutcomeFailed || got.Detail != "account not found" {
		t.Errorf("failed incident: %+v", got)
	}
}

// A retry counts the attempt and may keep the account; a snooze does not
// count; WriteSentAt stays until another write is sent.
func TestCompleteActionRetryAndSnooze(t *testing.T) {
	s, _ := openTest(t)
	clock := t0.Add(time.Minute)
	s.SetClock(func() time.Time { return clock })
	res := record(t, s, firing("tok", "r", "AC", "p", t0))
	id := res.Trip.ID

	complete(t, s, id, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(2 * time.Minute), Detail: "write timed out",
		Attempted: true, WriteSentAt: t0.Add(30 * time.Second), HoldAccountUntil: t0.Add(10 * time.Minute), Progress: "half"})
	a := actionByID(t, s, id)
	if a.State != ActionAvailable || a.Attempts != 1 || !a.NextAttemptAt.Equal(t0.Add(2*time.Minute)) || a.Owner != "" ||
		!a.LeaseUntil.Equal(t0.Add(10*time.Minute)) || !a.WriteSentAt.Equal(t0.Add(30*time.Second)) ||
		a.Detail != "write timed out" || a.Progress != "half" || !a.UpdatedAt.Equal(clock) {
		t.Fatalf("after a retry: %+v", a)
	}
	if inc := incident(t, s, res.Incident.ID); inc.State != StatePending || inc.Detail != "write timed out" {
		t.Errorf("incident after a retry: %+v", inc)
	}

	clock = clock.Add(time.Minute)
	complete(t, s, id, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(3 * time.Minute), Detail: "waiting for the guard's window"})
	a = actionByID(t, s, id)
	if a.Attempts != 1 || !a.NextAttemptAt.Equal(t0.Add(3*time.Minute)) || !a.LeaseUntil.IsZero() ||
		!a.WriteSentAt.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("after a snooze: %+v", a)
	}
	if inc := incident(t, s, res.Incident.ID); inc.Detail != "waiting for the guard's window" || !inc.UpdatedAt.Equal(clock) {
		t.Errorf("incident after a snooze: %+v", inc)
	}
	complete(t, s, id, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(4 * time.Minute), Attempted: true, WriteSentAt: t0.Add(3 * time.Minute)})
	if a = actionByID(t, s, id); a.Attempts != 2 || !a.WriteSentAt.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("after a second write: %+v", a)
	}
}

// Then, with a done completion, schedules actions; account-locking kinds
// lock the incident's account.
func TestCompleteActionThen(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	res := record(t, s, firing("tok", "r", "AC1", "p", t0))
	id := res.Incident.ID
	due := t0.Add(24 * time.Hour)
	complete(t, s, res.Trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended, Detail: "value 100 >= 50",
		Then: []Scheduled{{Kind: ActionReactivate, At: due}, {Kind: NotifyKind("late"), At: due.Add(time.Hour)}, {Kind: NotifyKind("ops"), At: due}}})
	if inc := incident(t, s, id); inc.State != StateDone || inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v", inc)
	}
	re := actionOf(t, s, id, ActionReactivate)
	if re.State != ActionAvailable || !re.NextAttemptAt.Equal(due) || re.AccountSID != "AC1" {
		t.Fatalf("reactivate action = %+v", re)
	}
	if late := actionOf(t, s, id, NotifyKind("late")); late.AccountSID != "" || !late.NextAttemptAt.Equal(due.Add(time.Hour)) {
		t.Errorf("scheduled notification = %+v", late)
	}
	if ops := actionOf(t, s, id, NotifyKind("ops")); !ops.NextAttemptAt.Equal(t0) {
		t.Errorf("an existing kind was rescheduled: %+v", ops)
	}
	// Scheduled reactivations wait for their time and are not counted as pending work.
	if n := pending(t, s); n != 2 {
		t.Errorf("CountPendingActions = %d, want 2 (the notifications)", n)
	}
	if got := kinds(claim(t, s, "w", due, due.Add(-time.Second), 0)); !reflect.DeepEqual(got, []ActionKind{NotifyKind("ops")}) {
		t.Errorf("before due: %v", got)
	}
	if got := kinds(claim(t, s, "w", due.Add(time.Hour), due, 0)); !reflect.DeepEqual(got, []ActionKind{ActionReactivate}) {
		t.Errorf("at due: %v", got)
	}
	// Finishing again is refused and schedules nothing.
	if _, err := s.CompleteAction(ctx, res.Trip.ID, testOwner, Completion{State: ActionDone, Then: []Scheduled{{Kind: "other", At: due}}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("second finish: %v", err)
	}
	// An empty kind fails the completion as a whole.
	if _, err := s.CompleteAction(ctx, re.ID, "w", Completion{State: ActionDone, Then: []Scheduled{{Kind: "x", At: due}, {Kind: "", At: due}}}); err == nil {
		t.Error("an empty kind was accepted")
	}
	if a := actionOf(t, s, id, ActionReactivate); a.State != ActionRunning || a.Owner != "w" {
		t.Errorf("a failed completion finished the action: %+v", a)
	}
	// Then is for done completions only.
	if _, err := s.CompleteAction(ctx, re.ID, "w", Completion{State: ActionFailed, Then: []Scheduled{{Kind: "y", At: due}}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(actionsOf(t, s, id)); !reflect.DeepEqual(got, []ActionKind{ActionTrip, NotifyKind("ops"), ActionReactivate, NotifyKind("late")}) {
		t.Errorf("actions: %v", got)
	}
}

// RescueActions hands back the claims of stopped owners: those whose lease
// has passed, or every one. Account-locking actions keep the account for
// the write lease; the others are due at once.
func TestRescueActions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	a := firing("a", "r", "AC1", "p", t0)
	a.ClaimBy = &Claim{Owner: "dead", LeaseUntil: t0.Add(time.Minute)}
	ra := record(t, s, a)
	rb := record(t, s, firing("b", "r", "AC2", "p", t0))
	complete(t, s, rb.Trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended})
	c := firing("c", "r", "AC3", "p", t0)
	c.ClaimBy = &Claim{Owner: "alive", LeaseUntil: t0.Add(10 * time.Minute)}
	rc := record(t, s, c)
	bNotify := claim(t, s, "dead", t0.Add(time.Minute), t0, 0)
	if len(bNotify) != 1 || bNotify[0].IncidentID != rb.Incident.ID {
		t.Fatalf("set-up claim: %+v", bNotify)
	}
	aTrip := actionByID(t, s, ra.Trip.ID)

	if got, err := s.RescueActions(ctx, t0.Add(time.Minute-1), 30*time.Second, false); err != nil || len(got) != 0 {
		t.Fatalf("rescue before the leases pass: %+v, %v", got, err)
	}
	now := t0.Add(2 * time.Minute)
	got, err := s.RescueActions(ctx, now, 30*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []Action{aTrip, bNotify[0]}) {
		t.Fatalf("rescued\n %+v\nwant the two expired claims as they were\n %+v\n %+v", got, aTrip, bNotify[0])
	}
	tr := actionByID(t, s, ra.Trip.ID)
	if tr.State != ActionAvailable || tr.Owner != "" || !tr.NextAttemptAt.Equal(now.Add(30*time.Second)) ||
		!tr.LeaseUntil.Equal(now.Add(30*time.Second)) || !strings.Contains(tr.Detail, "dead") || tr.Attempts != 0 || !tr.Rescued || aTrip.Rescued {
		t.Errorf("rescued trip %+v", tr)
	}
	if inc := incident(t, s, ra.Incident.ID); inc.Detail != tr.Detail || inc.State != StatePending {
		t.Errorf("rescued trip's incident %+v", inc)
	}
	if n := actionByID(t, s, bNotify[0].ID); n.State != ActionAvailable || n.Owner != "" || !n.NextAttemptAt.Equal(now) || !n.LeaseUntil.IsZero() || !n.Rescued {
		t.Errorf("rescued notification %+v", n)
	}
	if inc := incident(t, s, rb.Incident.ID); inc.State != StateDone || inc.Outcome != OutcomeSuspended {
		t.Errorf("a rescued notification changed its incident: %+v", inc)
	}
	if c := actionByID(t, s, rc.Trip.ID); c.State != ActionRunning || c.Owner != "alive" || c.Rescued {
		t.Errorf("a live claim was rescued: %+v", c)
	}
	// The notification is due again; the trip waits out the write lease.
	if got := kas(claim(t, s, "w", now.Add(time.Hour), now, 0)); !reflect.DeepEqual(got, []ka{{rb.Incident.ID, NotifyKind("ops")}}) {
		t.Errorf("claimed after the rescue: %v", got)
	}
	if got := kas(claim(t, s, "w", now.Add(time.Hour), now.Add(30*time.Second), 0)); !reflect.DeepEqual(got, []ka{{ra.Incident.ID, ActionTrip}}) {
		t.Errorf("claimed after the write lease: %v", got)
	}

	// all: every running action, whoever's, lease or not.
	got, err = s.RescueActions(ctx, now, time.Minute, true)
	if err != nil || len(got) != 3 {
		t.Fatalf("rescue all: %+v, %v", got, err)
	}
	if c := actionByID(t, s, rc.Trip.ID); c.State != ActionAvailable || !c.LeaseUntil.Equal(now.Add(time.Minute)) {
		t.Errorf("trip rescued with all: %+v", c)
	}
	if n := countRows(t, s, "actions WHERE state = 'running'"); n != 0 {
		t.Errorf("%d running after rescuing all", n)
	}
	if got, err := s.RescueActions(ctx, now, time.Minute, true); err != nil || len(got) != 0 {
		t.Errorf("nothing left to rescue: %+v, %v", got, err)
	}
}

// ResumeAvailable brings backed-off actions forward, except scheduled
// reactivations and actions that hold their account.
func TestResumeAvailable(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	backoff := record(t, s, firing("a", "r", "AC1", "p", t0)).Trip.ID
	complete(t, s, backoff, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Hour), Attempted: true})
	leased := record(t, s, firing("b", "r", "AC2", "p", t0)).Trip.ID
	complete(t, s, leased, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Hour), HoldAccountUntil: t0.Add(2 * time.Hour), Attempted: true})
	rc := record(t, s, firing("c", "r", "AC3", "p", t0))
	complete(t, s, rc.Trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended, Then: []Scheduled{{Kind: ActionReactivate, At: t0.Add(24 * time.Hour)}}})
	now := t0.Add(time.Minute)
	n, err := s.ResumeAvailable(ctx, now)
	if err != nil || n != 1 {
		t.Fatalf("ResumeAvailable = %d, %v; want 1", n, err)
	}
	if a := actionByID(t, s, backoff); !a.NextAttemptAt.Equal(now) || a.Attempts != 1 {
		t.Errorf("backed-off action %+v", a)
	}
	if a := actionByID(t, s, leased); !a.NextAttemptAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("leased action moved: %+v", a)
	}
	if a := actionOf(t, s, rc.Incident.ID, ActionReactivate); !a.NextAttemptAt.Equal(t0.Add(24 * time.Hour)) {
		t.Errorf("reactivation moved: %+v", a)
	}
}

// CountPendingActions counts available and running actions, not held ones,
// finished ones or scheduled reactivations.
func TestCountPendingActions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("a", "r", "AC1", "p", t0)
	f.Actions = []ActionKind{ActionTrip, NotifyKind("ops"), ActionEndCalls}
	res := record(t, s, f)
	step := func(name string, want int) {
		t.Helper()
		if n := pending(t, s); n != want {
			t.Errorf("%s: CountPendingActions = %d, want %d", name, n, want)
		}
	}
	step("new", 3)
	take(t, s, res.Trip.ID, testOwner)
	step("running", 3)
	if _, err := s.CompleteAction(ctx, res.Trip.ID, testOwner, Completion{State: ActionHeld}); err != nil {
		t.Fatal(err)
	}
	step("held", 2)
	if n, err := s.CountHeld(ctx); err != nil || n != 1 {
		t.Errorf("CountHeld = %d, %v", n, err)
	}
	if _, err := s.ReleaseHeld(ctx, t0, "released"); err != nil {
		t.Fatal(err)
	}
	step("released", 3)
	complete(t, s, res.Trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended, Then: []Scheduled{{Kind: ActionReactivate, At: t0.Add(time.Hour)}}})
	step("trip done, reactivation scheduled", 2)
	complete(t, s, actionOf(t, s, res.Incident.ID, NotifyKind("ops")).ID, Completion{State: ActionDone, Outcome: OutcomeSent})
	step("notified", 1)
}

// The partial index actions_due serves ClaimActions: a range search on
// next_attempt_at, not a scan of every action ever run, and the lease and
// trip look-ups are index searches.
func TestClaimQueryPlan(t *testing.T) {
	s, _ := openTest(t)
	plan := queryPlan(t, s, claimQuery, "w", int64(1), int64(0), 10)
	text := strings.Join(plan, "\n")
	if !strings.Contains(text, "USING INDEX actions_due (next_attempt_at<?)") || !strings.Contains(text, "actions_leased") {
		t.Errorf("query plan:\n%s", text)
	}
	for _, line := range plan {
		if strings.HasPrefix(line, "SCAN ") && !strings.HasPrefix(line, "SCAN (subquery") {
			t.Errorf("table scan in the claim: %s\n%s", line, text)
		}
	}
	t.Logf("query plan:\n%s", text)
}

// queryPlan is SQLite's EXPLAIN QUERY PLAN of q, one line a step.
func queryPlan(t *testing.T, s *SQLite, q string, args ...any) []string {
	t.Helper()
	rows, err := s.w.Query("EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var (
			id, parent, notused int
			detail              string
		)
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

// A hold after a release is a new episode: it pages again, also when it is
// the same incident's trip (reopened) whose page was sent in the first one.
func TestGuardPagesAgainInANewEpisode(t *testing.T) {
	s, _ := openTest(t)
	inc := record(t, s, firing("t0", "r", "AC0", "p", t0)).Incident.ID
	pages := []ActionKind{GuardPageKind("ops")}
	trip := actionOf(t, s, inc, ActionTrip).ID
	if done := complete(t, s, trip, Completion{State: ActionHeld, Detail: "held", Pages: pages}); !done.Paged {
		t.Fatal("first hold did not page")
	}
	page := actionOf(t, s, inc, GuardPageKind("ops")).ID
	complete(t, s, page, Completion{State: ActionDone, Outcome: OutcomeSent, Attempted: true})
	if _, err := s.ReleaseHeld(context.Background(), t0, "released"); err != nil {
		t.Fatal(err)
	}
	if done := complete(t, s, trip, Completion{State: ActionHeld, Detail: "held again", Pages: pages}); !done.Paged {
		t.Fatal("the second episode's hold did not page")
	}
	if a := actionByID(t, s, page); a.State != ActionAvailable || a.Outcome != "" || a.Attempts != 0 {
		t.Errorf("the page of the second episode = %+v, want available again", a)
	}
}

// A completion may forget an earlier attempt's write (the account was read
// unchanged after it could have landed); a mark of an attempt that is over
// never lands on the next one.
func TestClearWriteSentAndTheAttemptFence(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("IT1", "r", "AC1", "p", t0)
	f.ClaimBy = &Claim{Owner: "w", LeaseUntil: t0.Add(time.Minute)}
	id := record(t, s, f).Trip.ID
	if err := s.MarkWriteSent(ctx, id, "w", 0, t0.Add(time.Second), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompleteAction(ctx, id, "w", Completion{State: ActionAvailable, NextAttemptAt: t0, Attempted: true}); err != nil {
		t.Fatal(err)
	}
	if got := actionByID(t, s, id); !got.WriteSentAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("a retry dropped the mark: %+v", got)
	}
	take(t, s, id, "w") // attempt 1
	if err := s.MarkWriteSent(ctx, id, "w", 0, t0.Add(2*time.Second), t0.Add(time.Minute)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a mark of attempt 0 on attempt 1: %v", err)
	}
	if _, err := s.CompleteAction(ctx, id, "w", Completion{State: ActionAvailable, NextAttemptAt: t0, Attempted: true,
		ClearWriteSent: true}); err != nil {
		t.Fatal(err)
	}
	if got := actionByID(t, s, id); !got.WriteSentAt.IsZero() {
		t.Fatalf("ClearWriteSent kept the mark: %+v", got)
	}
	take(t, s, id, "w") // attempt 2: a write of its own wins over clearing
	if _, err := s.CompleteAction(ctx, id, "w", Completion{State: ActionDone, Outcome: OutcomeSuspended, Attempted: true,
		WriteSentAt: t0.Add(3 * time.Second), ClearWriteSent: true}); err != nil {
		t.Fatal(err)
	}
	if got := actionByID(t, s, id); !got.WriteSentAt.Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("the attempt's own write was not kept: %+v", got)
	}
}

// The lease check of every firing's claim reads the partial index of leased
// actions, not the table (it once scanned every action per firing).
func TestLeasedQueryPlan(t *testing.T) {
	s, _ := openTest(t)
	text := strings.Join(queryPlan(t, s, leasedQuery, "AC1", int64(1)), "\n")
	if !strings.Contains(text, "actions_leased") || strings.Contains(text, "SCAN actions") {
		t.Errorf("query plan:\n%s", text)
	}
}

// A decision is recorded once, with who, when and why, and makes the trip
// that waits for it due at once; an unfinished trip's outcome shows on the
// incident (awaiting_approval), and a snooze may create actions (Then).
func TestDecide(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	inc := record(t, s, firing("t0", "r", "AC0", "p", t0)).Incident.ID
	trip := actionOf(t, s, inc, ActionTrip).ID
	complete(t, s, trip, Completion{State: ActionAvailable, Outcome: OutcomeAwaitingApproval, Detail: "awaiting approval",
		NextAttemptAt: t0.Add(time.Hour), Then: []Scheduled{{Kind: "approval:ops", At: t0}}})
	if got := incident(t, s, inc); got.State != StatePending || got.Outcome != OutcomeAwaitingApproval {
		t.Fatalf("incident while waiting: %+v", got)
	}
	if a := actionOf(t, s, inc, "approval:ops"); a.State != ActionAvailable {
		t.Fatalf("the snooze's Then: %+v", a)
	}
	d, err := s.Decide(ctx, Approval{IncidentID: inc, Decision: DecisionVeto, Actor: "ops@example", Reason: "known load test", CreatedAt: t0.Add(time.Minute)})
	if err != nil || d.Actor != "ops@example" {
		t.Fatalf("Decide = %+v, %v", d, err)
	}
	if a := actionByID(t, s, trip); !a.NextAttemptAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("the trip is not due at the decision: %+v", a)
	}
	if _, err := s.Decide(ctx, Approval{IncidentID: inc, Decision: DecisionApprove, Actor: "x", Reason: "y"}); !errors.Is(err, ErrExists) {
		t.Errorf("a second decision: %v", err)
	}
	if _, err := s.Decide(ctx, Approval{IncidentID: 999, Decision: DecisionApprove, Actor: "x", Reason: "y"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("a decision on no incident: %v", err)
	}
	got, err := s.Approvals(ctx, []int64{inc, 999})
	if err != nil || len(got) != 1 || got[inc].Decision != DecisionVeto || got[inc].Reason != "known load test" || !got[inc].CreatedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("Approvals = %+v, %v", got, err)
	}
}
