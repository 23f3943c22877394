package breaker

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// runExecutor runs f.b's executor until the test ends, and waits until the
// fast path is open (the executor's start-up pass is done).
func (f *fixture) runExecutor(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.b.RunExecutor(ctx, 5*time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, "the executor to start", func() bool { return f.b.exec.Load() != nil })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *fixture) trip(t *testing.T, incidentID int64) store.Action {
	t.Helper()
	for _, a := range f.actions(t, incidentID) {
		if a.Kind == store.ActionTrip {
			return a
		}
	}
	t.Fatalf("incident %d has no trip action", incidentID)
	return store.Action{}
}

// The receiving process claims the trip in the firing's own commit and runs
// it at once: one read (started before the commit returned), one write, no
// executor pass and no second mark.
func TestFastPathClaimsAndSuspends(t *testing.T) {
	f, s := newSlowFixture(t, twoSuspendRules)
	s.fetchDelay = 50 * time.Millisecond // the read is still under way when Accept returns
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.runExecutor(t)

	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
	// Answered (Accept returned) with the claim durable: a process that
	// died now would wait out the lease, then read the account again.
	trip := f.trip(t, res.Incident.ID)
	if trip.State != store.StatePending || trip.Detail != detailClaimed || !trip.NextAttemptAt.Equal(f.clock.Now().Add(30*time.Second)) {
		t.Fatalf("trip right after Accept: %+v", trip)
	}
	if inc := f.incident(t, res.Incident.ID); inc.Detail != detailClaimed {
		t.Fatalf("incident right after Accept: %+v", inc)
	}
	waitUntil(t, "the incident to end", func() bool { return f.incident(t, res.Incident.ID).State == store.StateDone })
	inc := f.incident(t, res.Incident.ID)
	if inc.Outcome != OutcomeSuspended || f.api.count("accounts.fetch") != 1 || f.api.count("accounts.update") != 1 {
		t.Fatalf("incident %+v after %d reads and %d writes", inc, f.api.count("accounts.fetch"), f.api.count("accounts.update"))
	}
	if got := f.trip(t, res.Incident.ID); got.Attempts != 1 || got.Outcome != OutcomeSuspended {
		t.Fatalf("trip %+v", got)
	}
}

// An executor pass that finds the claimed trip due (its lease passed while
// the read was slow) does not run it a second time.
func TestFastPathTripIsNotRunTwice(t *testing.T) {
	f, s := newSlowFixture(t, twoSuspendRules)
	s.fetchDelay = 100 * time.Millisecond
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.runExecutor(t)

	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
	f.clock.Advance(time.Minute) // the claim is due now
	for i := 0; i < 5; i++ {
		f.b.Wake()
		time.Sleep(5 * time.Millisecond)
	}
	waitUntil(t, "the incident to end", func() bool { return f.incident(t, res.Incident.ID).State == store.StateDone })
	if f.api.count("accounts.update") != 1 || f.api.count("accounts.fetch") != 1 {
		t.Fatalf("%d writes and %d reads, want one of each", f.api.count("accounts.update"), f.api.count("accounts.fetch"))
	}
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident %+v", inc)
	}
}

// The fast path only starts when it can start at once; otherwise the firing
// is recorded as before (due now, unclaimed) and the executor runs it.
func TestFastPathFallsBackToTheExecutor(t *testing.T) {
	t.Run("the account is busy", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.runExecutor(t)
		unlock := f.b.acctMu.lock(a.SID) // another action of the account is running
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if trip := f.trip(t, res.Incident.ID); trip.Detail != "" || !trip.NextAttemptAt.Equal(f.clock.Now()) {
			t.Fatalf("claimed although the account was busy: %+v", trip)
		}
		unlock()
		f.b.Wake()
		waitUntil(t, "the executor to run it", func() bool { return f.incident(t, res.Incident.ID).State == store.StateDone })
		if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended || f.api.count("accounts.update") != 1 {
			t.Fatalf("incident %+v, %d writes", inc, f.api.count("accounts.update"))
		}
	})
	t.Run("a write from before a restart may still land", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.runExecutor(t)
		f.b.leases.set(a.SID, f.clock.Now().Add(time.Minute))
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if trip := f.trip(t, res.Incident.ID); trip.Detail == detailClaimed {
			t.Fatalf("claimed during a lease: %+v", trip)
		}
	})
	t.Run("no executor", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if trip := f.trip(t, res.Incident.ID); trip.Detail != "" || f.api.count("accounts.fetch") != 0 {
			t.Fatalf("claimed without an executor: %+v", trip)
		}
	})
	t.Run("rules that do not suspend", func(t *testing.T) {
		f := newFixture(t, baseRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.runExecutor(t)
		for _, rule := range []string{"sms-count", "calls-dry"} { // notify only, dry run
			r := f.b.Rule(rule)
			res := f.accept(t, rule, a, callbackFor(a, "tok-"+rule, r.UsageCategory, r.TriggerBy, "100000"))
			if trip := f.trip(t, res.Incident.ID); trip.Detail == detailClaimed {
				t.Fatalf("%s: claimed: %+v", rule, trip)
			}
		}
	})
}

// A replayed callback (a token this process saw) costs no Twilio read.
func TestFastPathRepeatedTokenReadsNothing(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.runExecutor(t)
	var first AcceptResult
	for i := 0; i < 5; i++ {
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if i == 0 {
			first = res
		} else if !res.Duplicate {
			t.Fatalf("repeat %d not a duplicate", i)
		}
	}
	waitUntil(t, "the incident to end", func() bool { return f.incident(t, first.Incident.ID).State == store.StateDone })
	if f.api.count("accounts.fetch") != 1 || f.api.count("accounts.update") != 1 {
		t.Fatalf("%d reads and %d writes for one firing sent 5 times", f.api.count("accounts.fetch"), f.api.count("accounts.update"))
	}
}

// leaveClaim commits what Accept commits on the fast path for a firing of
// rule, with no process left to run it (the receiving process died).
func (f *fixture) leaveClaim(t *testing.T, rule string, a twilioapi.Account, token, category, by, value string) store.RecordResult {
	t.Helper()
	r := f.b.Rule(rule)
	res, err := f.st.RecordFiring(context.Background(), store.Firing{Source: store.SourceCallback,
		IdempotencyToken: token, Rule: r.Name, AccountSID: a.SID, AccountName: a.FriendlyName,
		Period: PeriodKey(r.Recurring, f.clock.Now()), UsageCategory: category, TriggerBy: by,
		Recurring: r.Recurring, TriggerValue: "50", CurrentValue: value, Action: r.Action,
		ReceivedAt: f.clock.Now(), Actions: f.b.ActionKinds(r), Claim: f.b.claim(f.clock.Now())})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// restart is the next process on the same store and Twilio.
func (f *fixture) restart() *Breaker {
	b := New(Options{API: f.api, Store: f.st, Metrics: f.m, Now: f.clock.Now, WriteLease: 30 * time.Second, Settings: f.b.Settings()})
	b.loadLeases(context.Background())
	return b
}

// A claim left by a process that died does not say whether a write was
// sent. The next process waits out its lease, then reads: an active account
// is suspended, and a suspended one is recorded already_suspended (never
// "suspended by us", which would schedule a reactivation of an account
// somebody else may have suspended).
func TestClaimLeftByACrash(t *testing.T) {
	for _, landed := range []bool{true, false} {
		t.Run(map[bool]string{true: "the write landed", false: "no write was sent"}[landed], func(t *testing.T) {
			f := newFixture(t, twoSuspendRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			f.b.lease = 30 * time.Second
			res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
			if landed {
				f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended)
			}
			writes := f.api.count("accounts.update")

			b2 := f.restart()
			b2.RunDueOnce(context.Background())
			if f.api.count("accounts.fetch") != 0 || f.api.count("accounts.update") != writes {
				t.Fatalf("touched the account during the claim's lease")
			}
			f.clock.Advance(31 * time.Second)
			b2.RunDueOnce(context.Background())
			inc := f.incident(t, res.Incident.ID)
			want, more := OutcomeSuspended, 1
			if landed {
				want, more = OutcomeAlreadySuspended, 0
			}
			if inc.State != store.StateDone || inc.Outcome != want || f.api.count("accounts.update")-writes != more {
				t.Fatalf("incident %+v after %d more writes", inc, f.api.count("accounts.update")-writes)
			}
			if landed && !strings.HasSuffix(inc.Detail, detailClaimLost) {
				t.Fatalf("detail %q does not say why", inc.Detail)
			}
		})
	}
}

// The next process's start-up pass takes every pending action, the claimed
// one too while its lease holds: deferring it must not make it forget that
// it was a claim (found by a review).
func TestClaimLeftSurvivesTheStartPass(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.b.lease = 30 * time.Second
	res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
	f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended) // the claimant's write landed
	b2 := f.restart()
	ctx := context.Background()
	var wg sync.WaitGroup
	b2.runPending(ctx, ctx, make(chan struct{}, 4), &wg, f.clock.Now().AddDate(50, 0, 0), 0) // RunExecutor's start pass
	wg.Wait()
	if trip := f.trip(t, res.Incident.ID); !claimLeft(trip) || !strings.Contains(trip.Detail, "waiting for a suspend write") {
		t.Fatalf("trip deferred by the start pass: %q", trip.Detail)
	}
	b3 := f.restart() // and once more: the deferred claim still holds the account
	if _, held := b3.leases.until(a.SID, f.clock.Now()); !held {
		t.Fatal("a deferred claim does not hold the account at the next start")
	}
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(ctx)
	inc := f.incident(t, res.Incident.ID)
	if inc.Outcome != OutcomeAlreadySuspended || !strings.HasSuffix(inc.Detail, detailClaimLost) || f.api.count("accounts.update") != 1 {
		t.Fatalf("incident %s: %q after %d writes", inc.Outcome, inc.Detail, f.api.count("accounts.update"))
	}
}

// A claim whose own lease has passed still holds the account for a whole
// lease after a restart: its request may have waited for a connection slot
// past the claim's lease and been sent just before the process stopped.
func TestClaimLeftHoldsAWholeLeaseAfterARestart(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.b.lease = 30 * time.Second
	res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
	f.clock.Advance(time.Minute) // the claim's lease has passed; the process stopped now
	b2 := f.restart()
	if until, held := b2.leases.until(a.SID, f.clock.Now()); !held || !until.Equal(f.clock.Now().Add(30*time.Second)) {
		t.Fatalf("lease %v, %v", until, held)
	}
	b2.RunDueOnce(context.Background())
	if f.api.count("accounts.fetch") != 0 || f.api.count("accounts.update") != 0 {
		t.Fatal("touched the account during the lease")
	}
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended || f.api.count("accounts.update") != 1 {
		t.Fatalf("incident %+v after %d writes", inc, f.api.count("accounts.update"))
	}
}

// The account a person suspended stays suspended: a claim cut off before its
// read answered is not taken for the suspension, so the rule's reactivate
// policy does not set the account active again.
func TestClaimLeftOnASuspendedAccountIsNotOurs(t *testing.T) {
	f := newFixture(t, episodeRules)
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended) // by a person
	writes := f.api.count("accounts.update")
	f.b.lease = 30 * time.Second
	res := f.leaveClaim(t, "spend-auto", a, "tok-1", "totalprice", "price", "60")
	b2 := f.restart()
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("incident %+v", inc)
	}
	f.clock.Advance(48 * time.Hour)
	b2.RunDueOnce(context.Background())
	b2.RunDueOnce(context.Background())
	if got := f.status(t, a.SID); got != twilioapi.StatusSuspended || f.api.count("accounts.update") != writes {
		t.Fatalf("the account is %q after %d writes by usagebreaker", got, f.api.count("accounts.update")-writes)
	}
}

// One suspension, one incident that says so: a claim of another rule cut off
// after the account was suspended by the first does not claim it too.
func TestClaimLeftAfterOurSuspensionIsNotCountedTwice(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	f.st.(*store.SQLite).SetClock(f.clock.Now)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.b.lease = 30 * time.Second
	f.accept(t, "spend-daily", a, callbackFor(a, "tok-spend", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	f.clock.Advance(time.Minute)
	f.leaveClaim(t, "sms-daily", a, "tok-sms", "sms", "count", "150")
	b2 := f.restart()
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(context.Background())
	n := 0
	for _, inc := range f.incidentsOf(t, a.SID) {
		if inc.State != store.StateDone {
			t.Fatalf("incident %+v", inc)
		}
		if inc.Outcome == OutcomeSuspended {
			n++
		}
	}
	if n != 1 || f.api.count("accounts.update") != 1 {
		t.Fatalf("%d incidents say suspended after %d suspend writes", n, f.api.count("accounts.update"))
	}
}

// A write that timed out may still land: until its lease has passed, no
// other action of the same process writes to that account (before, only a
// restart loaded such leases).
func TestTimedOutWriteHoldsTheAccountInProcess(t *testing.T) {
	f, s := newSlowFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	s.timeouts = 1 // the first write times out, not applied (yet)
	spend := f.accept(t, "spend-daily", a, callbackFor(a, "tok-spend", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	f.clock.Advance(time.Second)
	sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-sms", "sms", "count", "150"))
	f.b.RunDueOnce(context.Background())
	if n := f.api.count("accounts.update"); n != 1 {
		t.Fatalf("%d suspend writes sent within the first write's lease", n)
	}
	if inc := f.incident(t, sms.Incident.ID); inc.State != store.StatePending || !strings.Contains(inc.Detail, "waiting for a suspend write") {
		t.Fatalf("the other incident during the lease: %+v", inc)
	}
	f.clock.Advance(31 * time.Second) // past the lease: the first write did not land
	f.b.RunDueOnce(context.Background())
	f.b.RunDueOnce(context.Background())
	outcomes := map[string]int{f.incident(t, spend.Incident.ID).Outcome: 1}
	outcomes[f.incident(t, sms.Incident.ID).Outcome]++
	if f.api.count("accounts.update") != 2 || outcomes[OutcomeSuspended] != 1 || outcomes[OutcomeAlreadySuspended] != 1 {
		t.Fatalf("after the lease: %d writes, outcomes %v", f.api.count("accounts.update"), outcomes)
	}
}

// markOnSend marks the write each time it is sent (the first one only
// without skipFirst), in order, and nothing once wait has returned: a late
// hook (HTTP/2 may call it after the answer) must not mark a finished or
// retried action.
func TestMarkOnSend(t *testing.T) {
	for _, skipFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("skipFirst=%v", skipFirst), func(t *testing.T) {
			f := newFixture(t, twoSuspendRules)
			a := f.api.addAccount("tenant-a", "active")
			f.b.lease = 30 * time.Second
			res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
			act := f.trip(t, res.Incident.ID)
			hook, wait := f.b.markOnSend(context.Background(), act, skipFirst)
			hook(httptrace.WroteRequestInfo{Err: errors.New("connection reset")}) // not sent: no mark
			hook(httptrace.WroteRequestInfo{})
			wait()
			got := f.trip(t, res.Incident.ID)
			if marked := got.Detail == detailWriteSent; marked == skipFirst || (marked && !got.NextAttemptAt.Equal(f.clock.Now().Add(30*time.Second))) {
				t.Fatalf("after one send: %+v", got)
			}
			hook, wait = f.b.markOnSend(context.Background(), act, skipFirst)
			hook(httptrace.WroteRequestInfo{})
			f.clock.Advance(10 * time.Second)
			hook(httptrace.WroteRequestInfo{}) // a retried attempt renews the lease
			wait()
			if got := f.trip(t, res.Incident.ID); got.Detail != detailWriteSent || !got.NextAttemptAt.Equal(f.clock.Now().Add(30*time.Second)) {
				t.Fatalf("after a retried send: %+v", got)
			}
			if err := f.st.RetryAction(context.Background(), act.ID, f.clock.Now().Add(time.Second), "429 from Twilio"); err != nil {
				t.Fatal(err)
			}
			hook(httptrace.WroteRequestInfo{}) // late
			time.Sleep(20 * time.Millisecond)
			if got := f.trip(t, res.Incident.ID); got.Detail != "429 from Twilio" {
				t.Fatalf("a late hook changed the action: %+v", got)
			}
		})
	}
}

func TestTokenSetForgetsTheOldest(t *testing.T) {
	var s tokenSet
	for i := 0; i < tokenSetSize; i++ {
		if !s.add(fmt.Sprint(i)) {
			t.Fatalf("%d seen before", i)
		}
	}
	if s.add("0") || s.add(fmt.Sprint(tokenSetSize-1)) {
		t.Fatal("a remembered token counted as new")
	}
	if !s.add("new") { // takes the place of the oldest, "0"
		t.Fatal("a new token counted as seen")
	}
	if !s.add("0") { // takes the place of "1"
		t.Fatal("the oldest token still remembered")
	}
	if s.add("2") {
		t.Fatal("a recent token forgotten")
	}
	if len(s.m) != tokenSetSize {
		t.Fatalf("%d tokens remembered, want %d", len(s.m), tokenSetSize)
	}
}

func TestKeyedMutexTryLock(t *testing.T) {
	var k keyedMutex
	unlock, ok := k.tryLock("a")
	if !ok {
		t.Fatal("free key not locked")
	}
	if _, ok := k.tryLock("a"); ok {
		t.Fatal("held key locked twice")
	}
	if u, ok := k.tryLock("b"); !ok {
		t.Fatal("another key refused")
	} else {
		u()
	}
	unlock()
	u, ok := k.tryLock("a")
	if !ok {
		t.Fatal("released key not lockable")
	}
	u()
	if len(k.m) != 0 {
		t.Fatalf("%d entries left", len(k.m))
	}
}
