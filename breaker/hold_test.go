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

// A manual reactivation is refused, and changes nothing, while an action of
// the account holds a lease (another process's suspension, say).
func TestManualReactivationWaitsForARunningAction(t *testing.T) {
	f, a := suspendedBySpend(t)
	ctx := context.Background()
	f.leaveClaim(t, "sms-daily", a, "tok-sms", "sms", "count", "150") // another process's claim

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
// a sent request) keeps the account a write lease after sending it: a trip
// recorded meanwhile is claimed only once the write can no longer land.
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
	f.clock.Advance(f.b.writeLease - time.Second)
	if acts := f.claimAs(t, "other-host/3"); len(acts) != 0 {
		t.Fatalf("claimed while the reactivation's write may land: %+v", acts)
	}
	f.clock.Advance(2 * time.Second)
	acts := f.claimAs(t, "other-host/3")
	if len(acts) != 1 || acts[0].IncidentID != sms.Incident.ID || acts[0].Kind != store.ActionTrip {
		t.Fatalf("claim after the write lease: %+v", acts)
	}
}
