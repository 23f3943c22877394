package breaker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// manualReactivation is what the admin API asks for.
func manualReactivation(sid string) ReactivateRequest {
	return ReactivateRequest{AccountSID: sid, Reason: "customer called", Actor: "test", Via: store.ViaManual}
}

// suspendedBySpend is a fixture with two suspending rules and an account
// the first of them suspended.
func suspendedBySpend(t *testing.T) (*fixture, twilioapi.Account) {
	t.Helper()
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.accept(t, "spend-daily", a, callbackFor(a, "tok-spend", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	if got := f.status(t, a.SID); got != "suspended" {
		t.Fatalf("after the trip: %s", got)
	}
	return f, a
}

// A manual reactivation holds its account in the store while it reads and
// writes. A firing of another rule that arrives while Status=active is on
// its way is recorded, but its trip is claimed by nobody, in this process
// or another, and starts no read of the account that could predate the
// write; once the reactivation is done, the trip reads the account active
// and suspends it again.
func TestManualReactivationHoldsTheAccount(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()

	var (
		once   sync.Once
		during AcceptResult
	)
	f.api.onStatusSent = func(_, status string) {
		if status != twilioapi.StatusActive {
			return
		}
		once.Do(func() {
			during = f.accept(t, "sms-daily", a, callbackFor(a, "tok-sms", "sms", "count", "150"))
			if acts := f.claimAs(t, "other-host/3"); len(acts) != 0 {
				t.Errorf("claimed while the reactivation writes: %+v", acts)
			}
		})
	}
	if _, err := f.b.Reactivator().Reactivate(ctx, manualReactivation(a.SID)); err != nil {
		t.Fatal(err)
	}
	if during.Incident.ID == 0 {
		t.Fatal("no firing arrived during the write")
	}
	if trip := f.trip(t, during.Incident.ID); trip.State != store.ActionAvailable || trip.Attempts != 0 {
		t.Fatalf("the firing's trip after the reactivation: %+v", trip)
	}
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, during.Incident.ID); inc.Outcome != OutcomeSuspended {
		t.Fatalf("the firing during the reactivation ended %s (%s), want suspended", inc.Outcome, inc.Detail)
	}
	if got, n := f.status(t, a.SID), f.api.count("accounts.update"); got != "suspended" || n != 3 {
		t.Fatalf("account %s after %d status writes, want suspended after 3 (suspend, reactivate, suspend)", got, n)
	}
}

// A manual reactivation waits a while for an action of the account that
// holds a lease (another process's suspension, say), then is refused and
// changes nothing.
func TestManualReactivationWaitsForARunningAction(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()
	f.leaveClaim(t, "sms-daily", a, "tok-sms", "sms", "count", "150") // another process's claim
	f.b.reactivator.holdWait = 3 * holdPoll                           // the test's clock stands still: the claim never passes

	_, err := f.b.Reactivator().Reactivate(ctx, manualReactivation(a.SID))
	var refused *RefusedError
	if !errors.As(err, &refused) || !refused.Pending || !strings.Contains(refused.Reason, "an action of the account is running") {
		t.Fatalf("reactivation during another process's claim: %v", err)
	}
	if n := f.api.count("accounts.update"); n != 1 || f.status(t, a.SID) != "suspended" {
		t.Fatalf("%d status writes, account %s", n, f.status(t, a.SID))
	}
}

// A manual reactivation whose write may still land (Twilio answered 503 to
// a sent request) keeps the account a write lease after the last moment an
// attempt could be sent: a trip recorded meanwhile is claimed only once the
// write can no longer land.
func TestManualReactivationWriteMayLandKeepsTheAccount(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()

	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 503, Message: "service unavailable"})
	_, err := f.b.Reactivator().Reactivate(ctx, manualReactivation(a.SID))
	var unknown *WriteUnknownError
	if !errors.As(err, &unknown) || !unknown.SentAt.Equal(f.clock.Now()) {
		t.Fatalf("reactivation whose write may land: %v", err)
	}
	sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-sms", "sms", "count", "150"))
	f.clock.Advance(f.b.writeLease/2 + f.b.writeLease - time.Second) // the last moment it could be sent, and a write lease
	if acts := f.claimAs(t, "other-host/3"); len(acts) != 0 {
		t.Fatalf("claimed while the reactivation's write may land: %+v", acts)
	}
	f.clock.Advance(2 * time.Second)
	acts := f.claimAs(t, "other-host/3")
	if len(acts) != 1 || acts[0].IncidentID != sms.Incident.ID || acts[0].Kind != store.ActionTrip {
		t.Fatalf("claim after the write lease: %+v", acts)
	}
}

// The status write of a manual reactivation is sent only while its hold
// covers a send: its context ends half a write lease after the mark, and
// the hold lasts a write lease after that, however long the client waits
// for a slot or retries after a 429.
func TestManualReactivationSendsOnlyWhileHeld(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()
	mark := f.clock.Now()
	lastSend := mark.Add(f.b.writeLease / 2)
	var once sync.Once
	f.api.onStatusSent = func(_, status string) {
		if status != twilioapi.StatusActive {
			return
		}
		once.Do(func() {
			end := lastSend.Add(f.b.writeLease)
			for _, at := range []time.Time{lastSend, end.Add(-time.Second)} {
				if err := f.st.HoldAccount(ctx, a.SID, "other-host/3", at, at.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
					t.Errorf("another hold at %s, during the write: %v, want ErrHeld", at, err)
				}
			}
		})
	}
	start := time.Now()
	if _, err := f.b.Reactivator().Reactivate(ctx, manualReactivation(a.SID)); err != nil {
		t.Fatal(err)
	}
	f.api.mu.Lock()
	deadline := f.api.statusDeadline
	f.api.mu.Unlock()
	if deadline.IsZero() || deadline.Before(start) || deadline.After(time.Now().Add(f.b.writeLease/2)) {
		t.Fatalf("the write's context ends at %s, want within half a write lease (%s) of the mark", deadline, f.b.writeLease/2)
	}
	// Done and recorded: released at once.
	if err := f.st.HoldAccount(ctx, a.SID, "other-host/3", f.clock.Now(), f.clock.Now().Add(time.Minute)); err != nil {
		t.Fatalf("a hold after the reactivation: %v", err)
	}
}

// refusalSignal is the reactivation's store, telling when a hold was
// refused.
type refusalSignal struct {
	reactivateStore
	refused chan struct{}
	once    sync.Once
}

func (r *refusalSignal) HoldAccount(ctx context.Context, sid, owner string, now, until time.Time) error {
	err := r.reactivateStore.HoldAccount(ctx, sid, owner, now, until)
	if errors.Is(err, store.ErrHeld) {
		r.once.Do(func() { close(r.refused) })
	}
	return err
}

// A manual reactivation that finds an action of the account running (the
// end_calls right after a suspension, another process's trip) waits for it
// to finish, then goes on.
func TestManualReactivationWaitsForTheActionToFinish(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()
	sms := f.leaveClaim(t, "sms-daily", a, "tok-sms", "sms", "count", "150")
	sig := &refusalSignal{reactivateStore: f.b.reactivator.store, refused: make(chan struct{})}
	f.b.reactivator.store = sig
	done := make(chan error, 1)
	go func() {
		<-sig.refused // the reactivation found the account held, and waits
		_, err := f.st.CompleteAction(ctx, sms.Trip.ID, deadOwner, store.Completion{State: store.ActionDone,
			Outcome: OutcomeAlreadySuspended, Detail: "the account was already suspended", Attempted: true})
		done <- err
	}()
	res, err := f.b.Reactivator().Reactivate(ctx, manualReactivation(a.SID))
	if err != nil {
		t.Fatalf("reactivation after the other process's trip ended: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := f.status(t, a.SID); got != "active" || len(res.Episode) != 1 || res.Episode[0].ID != sms.Incident.ID {
		t.Fatalf("account %s, episode %+v", got, res.Episode)
	}
}
