package breaker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Claims: a firing's trip is recorded already claimed by the engine of the
// process that received it and handed to a worker at once; a claim left by
// a process that stopped is rescued at the next start and holds its
// account for a write lease; a status write is recorded when it is sent.

// deadOwner names a process that claimed actions and stopped.
const deadOwner = "dead-host/0000dead"

// waitUntil polls cond until it holds, for at most 30 seconds.
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

// runExecutor runs f.b's engine until the test ends, and waits until it
// has started (rescued, resumed, and claims firings' trips).
func (f *fixture) runExecutor(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.b.RunExecutor(ctx, 30*time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, "the engine to start", func() bool { return f.b.Engine().Claim() != nil })
}

// startEngine runs b's engine start (what a restart does: rescue the claims
// left, resume the queue) and stops it again; the test then steps b with
// RunDueOnce.
func startEngine(t *testing.T, b *Breaker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Engine().Run(ctx, 30*time.Second); close(done) }()
	waitUntil(t, "the engine to start", func() bool { return b.Engine().Claim() != nil })
	cancel()
	<-done
}

// restart is the next process on the same store and Twilio, started.
func (f *fixture) restart(t *testing.T, api twilioapi.API) *Breaker {
	t.Helper()
	b := New(Options{API: api, Store: f.st, Metrics: f.m, Now: f.clock.Now, WriteLease: 30 * time.Second, Workers: 4,
		RetryMin: time.Second, RetryMax: time.Minute, Owner: "next-host/00000002", Settings: f.b.Settings()})
	startEngine(t, b)
	return b
}

// trip is the trip action of an incident.
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

// claimAs claims the due actions for owner, as another process would.
func (f *fixture) claimAs(t *testing.T, owner string) []store.Action {
	t.Helper()
	acts, err := f.st.ClaimActions(context.Background(), store.Claim{Owner: owner, LeaseUntil: f.clock.Now().Add(5 * time.Minute)}, f.clock.Now(), 100)
	if err != nil {
		t.Fatal(err)
	}
	return acts
}

// markSent records that owner's attempt at action id sent its status write now.
func (f *fixture) markSent(t *testing.T, id int64, owner string) {
	t.Helper()
	if err := f.st.MarkWriteSent(context.Background(), id, owner, 0, f.clock.Now(), f.clock.Now().Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// leaveClaim commits what Accept commits for a firing of rule received by
// a process whose engine runs (the trip claimed by it), with that process
// gone: nothing runs the trip.
func (f *fixture) leaveClaim(t *testing.T, rule string, a twilioapi.Account, token, category, by, value string) store.RecordResult {
	t.Helper()
	r := f.b.Rule(rule)
	res, err := f.st.RecordFiring(context.Background(), store.Firing{Source: store.SourceCallback,
		IdempotencyToken: token, Rule: r.Name, AccountSID: a.SID, AccountName: a.FriendlyName,
		Period: PeriodKey(r.Recurring, f.clock.Now()), UsageCategory: category, TriggerBy: by,
		Recurring: r.Recurring, TriggerValue: "50", CurrentValue: value, Action: r.Action,
		ReceivedAt: f.clock.Now(), Actions: f.b.ActionKinds(r),
		ClaimBy: &store.Claim{Owner: deadOwner, LeaseUntil: f.clock.Now().Add(30 * time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Trip.State != store.ActionRunning || res.Trip.Owner != deadOwner {
		t.Fatalf("the trip was not recorded claimed: %+v", res.Trip)
	}
	return res
}

// gatedAPI holds every account read until the test opens the gate.
type gatedAPI struct {
	*fakeAPI
	reading chan string   // the SID of each read, as it starts to wait
	gate    chan struct{} // closed: reads go on
	once    sync.Once
}

func newGatedAPI(f *fakeAPI) *gatedAPI {
	return &gatedAPI{fakeAPI: f, reading: make(chan string, 100), gate: make(chan struct{})}
}

func (g *gatedAPI) FetchAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	g.reading <- sid
	select {
	case <-g.gate:
	case <-ctx.Done():
		return twilioapi.Account{}, ctx.Err()
	}
	return g.fakeAPI.FetchAccount(ctx, sid)
}

func (g *gatedAPI) open() { g.once.Do(func() { close(g.gate) }) }

// waitRead waits until a read of sid waits at the gate.
func (g *gatedAPI) waitRead(t *testing.T, sid string) {
	t.Helper()
	select {
	case got := <-g.reading:
		if got != sid {
			t.Fatalf("read %s, want %s", got, sid)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no read of %s", sid)
	}
}

func newGatedFixture(t *testing.T, ruleText string) (*fixture, *gatedAPI) {
	f := newFixture(t, ruleText)
	g := newGatedAPI(f.api)
	t.Cleanup(g.open) // never leave a worker waiting
	f.b = New(Options{API: g, Store: f.st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		WriteLease: 30 * time.Second, Owner: "this-host/00000001", Settings: f.b.Settings()})
	return f, g
}

// The receiving process records the trip claimed by its engine in the
// firing's own commit and runs it at once: one read, one write, and no
// other pass runs it while it runs, even past its claim's lease.
func TestAcceptClaimsTheTripAndRunsIt(t *testing.T) {
	f, g := newGatedFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.runExecutor(t)

	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
	// Answered (Accept returned) with the claim durable: a process that
	// died now would leave it to be rescued at the next start.
	trip := f.trip(t, res.Incident.ID)
	if trip.State != store.ActionRunning || trip.Owner != "this-host/00000001" || !trip.LeaseUntil.Equal(f.clock.Now().Add(5*time.Minute)) {
		t.Fatalf("trip right after Accept: %+v", trip)
	}
	g.waitRead(t, a.SID) // the worker has it
	if inc := f.incident(t, res.Incident.ID); inc.State != store.StatePending {
		t.Fatalf("incident while the read waits: %+v", inc)
	}
	// Its claim's lease passes while the read waits: nothing claims it again.
	f.clock.Advance(10 * time.Minute)
	f.b.Wake()
	f.b.RunDueOnce(context.Background())
	if got := f.trip(t, res.Incident.ID); got.State != store.ActionRunning || got.Owner != "this-host/00000001" {
		t.Fatalf("trip claimed again: %+v", got)
	}
	g.open()
	waitUntil(t, "the incident to end", func() bool { return f.incident(t, res.Incident.ID).State == store.StateDone })
	inc := f.incident(t, res.Incident.ID)
	if inc.Outcome != OutcomeSuspended || f.api.count("accounts.fetch") != 1 || f.api.count("accounts.update") != 1 {
		t.Fatalf("incident %+v after %d reads and %d writes", inc, f.api.count("accounts.fetch"), f.api.count("accounts.update"))
	}
	if got := f.trip(t, res.Incident.ID); got.Attempts != 1 || got.Outcome != OutcomeSuspended || got.Owner != "" ||
		!got.LeaseUntil.IsZero() || !got.WriteSentAt.Equal(f.clock.Now()) {
		t.Fatalf("trip %+v", got)
	}
}

// A trip is recorded unclaimed, for the engine's next pass, when it cannot
// start at once.
func TestAcceptLeavesTheTripToTheQueue(t *testing.T) {
	t.Run("another action of the account runs", func(t *testing.T) {
		f, g := newGatedFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.runExecutor(t)
		spend := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		g.waitRead(t, a.SID)
		sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-2", "sms", "count", "150"))
		if trip := f.trip(t, sms.Incident.ID); trip.State != store.ActionAvailable || trip.Owner != "" {
			t.Fatalf("claimed although the account was busy: %+v", trip)
		}
		g.open()
		waitUntil(t, "both incidents to end", func() bool {
			return f.incident(t, spend.Incident.ID).State == store.StateDone && f.incident(t, sms.Incident.ID).State == store.StateDone
		})
		if f.incident(t, spend.Incident.ID).Outcome != OutcomeSuspended || f.incident(t, sms.Incident.ID).Outcome != OutcomeAlreadySuspended ||
			f.api.count("accounts.update") != 1 {
			t.Fatalf("incidents %+v, %+v after %d writes", f.incident(t, spend.Incident.ID), f.incident(t, sms.Incident.ID), f.api.count("accounts.update"))
		}
	})
	t.Run("a write from before a restart may still land", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		spend := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
		f.runExecutor(t) // rescues the claim: the account is held a write lease (20s)
		sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-2", "sms", "count", "150"))
		if trip := f.trip(t, sms.Incident.ID); trip.State == store.ActionRunning {
			t.Fatalf("claimed during the write lease: %+v", trip)
		}
		// The receiving process starts its read of the account while the
		// firing is committed; unclaimed, that read is dropped unused.
		waitUntil(t, "the receiving process's read", func() bool { return f.api.count("accounts.fetch") == 1 })
		f.b.RunDueOnce(context.Background())
		if f.api.count("accounts.fetch") != 1 {
			t.Fatal("the engine read the account during the write lease")
		}
		f.clock.Advance(21 * time.Second)
		f.b.Wake()
		waitUntil(t, "both incidents to end", func() bool {
			return f.incident(t, spend.Incident.ID).State == store.StateDone && f.incident(t, sms.Incident.ID).State == store.StateDone
		})
		// sms-daily's trip was due first; the rescued claim had recorded no
		// write, so it does not take the suspension for its own.
		if f.incident(t, sms.Incident.ID).Outcome != OutcomeSuspended || f.incident(t, spend.Incident.ID).Outcome != OutcomeAlreadySuspended ||
			f.api.count("accounts.update") != 1 {
			t.Fatalf("incidents %+v, %+v after %d writes", f.incident(t, spend.Incident.ID), f.incident(t, sms.Incident.ID), f.api.count("accounts.update"))
		}
	})
	t.Run("no engine", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if trip := f.trip(t, res.Incident.ID); trip.State != store.ActionAvailable || trip.Owner != "" || f.api.count("accounts.fetch") != 0 {
			t.Fatalf("claimed without an engine: %+v", trip)
		}
	})
}

// Trips that do not suspend are run at once too, and write nothing.
func TestAcceptRunsTripsThatDoNotSuspend(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.runExecutor(t)
	want := map[string]store.Outcome{"sms-count": OutcomeNotified, "calls-dry": OutcomeDryRun}
	for rule, outcome := range want {
		r := f.b.Rule(rule)
		res := f.accept(t, rule, a, callbackFor(a, "tok-"+rule, r.UsageCategory, r.TriggerBy, "100000"))
		waitUntil(t, rule+" to end", func() bool { return f.incident(t, res.Incident.ID).State == store.StateDone })
		if inc := f.incident(t, res.Incident.ID); inc.Outcome != outcome {
			t.Fatalf("%s: incident %+v", rule, inc)
		}
	}
	if f.api.count("accounts.update") != 0 {
		t.Fatalf("%d writes", f.api.count("accounts.update"))
	}
}

// A replayed callback (a token recorded before) starts nothing.
func TestRepeatedTokenRunsTheTripOnce(t *testing.T) {
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

// A claim left by a process that stopped is rescued at the next start and
// holds its account for a write lease from the restart; then the account
// is read. An active account is suspended; a suspended one is ours only if
// the claim recorded that its write was sent (never otherwise: that would
// schedule a reactivation of an account somebody else may have suspended).
func TestClaimLeftByACrash(t *testing.T) {
	cases := []struct {
		name           string
		marked, landed bool
		want           store.Outcome
		writes         int
	}{
		{"no write was sent", false, false, OutcomeSuspended, 1},
		{"unmarked, and the account is suspended", false, true, OutcomeAlreadySuspended, 0},
		{"marked sent, and it landed", true, true, OutcomeSuspended, 0},
		{"marked sent, and it was lost", true, false, OutcomeSuspended, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, twoSuspendRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
			if c.marked {
				f.markSent(t, res.Trip.ID, deadOwner)
			}
			if c.landed {
				f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended)
			}
			writes := f.api.count("accounts.update")

			b2 := f.restart(t, f.api)
			trip := f.trip(t, res.Incident.ID)
			hold := f.clock.Now().Add(30 * time.Second)
			if trip.State != store.ActionAvailable || trip.Owner != "" || !trip.LeaseUntil.Equal(hold) || !trip.NextAttemptAt.Equal(hold) ||
				trip.WriteSentAt.IsZero() == c.marked {
				t.Fatalf("trip after the restart: %+v", trip)
			}
			b2.RunDueOnce(context.Background())
			if f.api.count("accounts.fetch") != 0 || f.api.count("accounts.update") != writes {
				t.Fatalf("touched the account during the write lease")
			}
			f.clock.Advance(31 * time.Second)
			b2.RunDueOnce(context.Background())
			inc := f.incident(t, res.Incident.ID)
			if inc.State != store.StateDone || inc.Outcome != c.want || f.api.count("accounts.update")-writes != c.writes {
				t.Fatalf("incident %+v after %d more writes", inc, f.api.count("accounts.update")-writes)
			}
			if c.landed && c.marked && !strings.Contains(inc.Detail, "earlier attempt") {
				t.Fatalf("detail %q does not say why", inc.Detail)
			}
			if c.landed && !c.marked && !strings.HasSuffix(inc.Detail, detailClaimLost) {
				t.Fatalf("detail %q does not say why", inc.Detail)
			}
		})
	}
}

// A rescued claim still holds its account at a second restart within its
// write lease: the next start does not make it due early.
func TestClaimLeftSurvivesASecondRestart(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
	f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended) // the claimant's write landed
	f.restart(t, f.api)
	hold := f.clock.Now().Add(30 * time.Second)
	f.clock.Advance(10 * time.Second)
	b3 := f.restart(t, f.api) // and once more, within the lease
	if trip := f.trip(t, res.Incident.ID); trip.State != store.ActionAvailable || !trip.LeaseUntil.Equal(hold) || !trip.NextAttemptAt.Equal(hold) {
		t.Fatalf("trip after the second start: %+v", trip)
	}
	b3.RunDueOnce(context.Background())
	if f.api.count("accounts.fetch") != 0 {
		t.Fatal("read the account during the write lease")
	}
	f.clock.Advance(21 * time.Second)
	b3.RunDueOnce(context.Background())
	inc := f.incident(t, res.Incident.ID)
	if inc.Outcome != OutcomeAlreadySuspended || f.api.count("accounts.update") != 1 {
		t.Fatalf("incident %s: %q after %d writes", inc.Outcome, inc.Detail, f.api.count("accounts.update"))
	}
}

// A claim whose own lease has passed still holds the account for a whole
// write lease after a restart: its request may have waited for a connection
// slot past the claim's lease and been sent just before the process stopped.
func TestClaimLeftHoldsAWholeLeaseAfterARestart(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	res := f.leaveClaim(t, "spend-daily", a, "tok-1", "totalprice", "price", "60")
	f.clock.Advance(time.Minute) // the claim's lease has passed; the process stopped now
	b2 := f.restart(t, f.api)
	if trip := f.trip(t, res.Incident.ID); !trip.LeaseUntil.Equal(f.clock.Now().Add(30 * time.Second)) {
		t.Fatalf("trip after the restart: %+v", trip)
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

// The account a person suspended stays suspended: a claim cut off before it
// recorded a write is not taken for the suspension, so the rule's
// reactivate policy does not set the account active again.
func TestClaimLeftOnASuspendedAccountIsNotOurs(t *testing.T) {
	f := newFixture(t, episodeRules)
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended) // by a person
	writes := f.api.count("accounts.update")
	res := f.leaveClaim(t, "spend-auto", a, "tok-1", "totalprice", "price", "60")
	b2 := f.restart(t, f.api)
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("incident %+v", inc)
	}
	f.clock.Advance(48 * time.Hour)
	b2.RunDueOnce(context.Background())
	if got := f.status(t, a.SID); got != twilioapi.StatusSuspended || f.api.count("accounts.update") != writes {
		t.Fatalf("the account is %q after %d writes by usagebreaker", got, f.api.count("accounts.update")-writes)
	}
}

// One suspension, one incident that says so: a claim of another rule cut
// off after the account was suspended by the first does not claim it too.
func TestClaimLeftAfterOurSuspensionIsNotCountedTwice(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.accept(t, "spend-daily", a, callbackFor(a, "tok-spend", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	f.clock.Advance(time.Minute)
	f.leaveClaim(t, "sms-daily", a, "tok-sms", "sms", "count", "150")
	b2 := f.restart(t, f.api)
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

// A write that timed out may still land: until its write lease has passed,
// no other action of the account runs, in this process or another.
func TestTimedOutWriteHoldsTheAccount(t *testing.T) {
	f, s := newSlowFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	s.timeouts = 1 // the first write times out, not applied (yet)
	spend := f.accept(t, "spend-daily", a, callbackFor(a, "tok-spend", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	f.clock.Advance(time.Second)
	sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-sms", "sms", "count", "150"))
	f.b.RunDueOnce(context.Background())
	if acts := f.claimAs(t, "other-host/3"); len(acts) != 0 { // nor another process
		t.Fatalf("claimed during the write lease: %+v", acts)
	}
	if n := f.api.count("accounts.update"); n != 1 || f.api.count("accounts.fetch") != 1 {
		t.Fatalf("%d suspend writes and %d reads within the first write's lease", n, f.api.count("accounts.fetch"))
	}
	if trip := f.trip(t, sms.Incident.ID); trip.State != store.ActionAvailable || trip.Attempts != 0 {
		t.Fatalf("the other incident's trip during the lease: %+v", trip)
	}
	f.clock.Advance(31 * time.Second) // past the lease: the first write did not land
	f.b.RunDueOnce(context.Background())
	outcomes := map[store.Outcome]int{f.incident(t, spend.Incident.ID).Outcome: 1}
	outcomes[f.incident(t, sms.Incident.ID).Outcome]++
	if f.api.count("accounts.update") != 2 || outcomes[OutcomeSuspended] != 1 || outcomes[OutcomeAlreadySuspended] != 1 {
		t.Fatalf("after the lease: %d writes, outcomes %v", f.api.count("accounts.update"), outcomes)
	}
}

// The moment a suspend request is written is recorded on the action
// (MarkWriteSent) while Twilio answers, so a process that starts after a
// crash knows the suspension may be its own; a request that failed before
// it was written records nothing and is retried after a backoff.
func TestSuspendWriteIsMarkedWhenSent(t *testing.T) {
	t.Run("sent", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		release := make(chan struct{})
		f.api.onStatusSent = func(string, string) { <-release }
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		sent := f.clock.Now()
		done := make(chan struct{})
		go func() { f.b.RunDueOnce(context.Background()); close(done) }()
		waitUntil(t, "the write to be marked sent", func() bool { return !f.trip(t, res.Incident.ID).WriteSentAt.IsZero() })
		trip := f.trip(t, res.Incident.ID)
		if trip.State != store.ActionRunning || !trip.WriteSentAt.Equal(sent) || trip.LeaseUntil.Before(sent.Add(20*time.Second)) {
			t.Fatalf("trip while Twilio answers: %+v", trip)
		}
		f.clock.Advance(time.Second)
		close(release)
		<-done
		trip = f.trip(t, res.Incident.ID)
		if trip.State != store.ActionDone || trip.Outcome != OutcomeSuspended || !trip.WriteSentAt.Equal(sent) {
			t.Fatalf("trip = %+v", trip)
		}
	})
	t.Run("not sent", func(t *testing.T) {
		f := newFixture(t, twoSuspendRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.api.failNext("accounts.update", notSent{&twilioapi.Error{Operation: "accounts.update", Message: "connection refused"}})
		res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		f.b.RunDueOnce(context.Background())
		trip := f.trip(t, res.Incident.ID)
		if trip.State != store.ActionAvailable || !trip.WriteSentAt.IsZero() || !trip.LeaseUntil.IsZero() ||
			!trip.NextAttemptAt.After(f.clock.Now()) || trip.NextAttemptAt.After(f.clock.Now().Add(time.Second)) {
			t.Fatalf("trip after a write that was not sent: %+v", trip)
		}
		f.clock.Advance(time.Second)
		f.b.RunDueOnce(context.Background())
		if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended || f.api.count("accounts.update") != 2 {
			t.Fatalf("incident %+v after %d writes", inc, f.api.count("accounts.update"))
		}
	})
}

// Shutdown: the running attempts get the drain to finish; one cut off
// past it stays in the queue, and the next start runs it.
func TestShutdownLeavesUnfinishedWorkInTheQueue(t *testing.T) {
	f, g := newGatedFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.b.RunExecutor(ctx, 10*time.Millisecond); close(done) }()
	waitUntil(t, "the engine to start", func() bool { return f.b.Engine().Claim() != nil })
	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
	g.waitRead(t, a.SID)
	cancel()
	<-done // the drain passed; the read was cut off
	if f.api.count("accounts.update") != 0 {
		t.Fatal("wrote after the shutdown")
	}
	trip := f.trip(t, res.Incident.ID)
	if trip.State.Finished() || trip.State == store.ActionHeld {
		t.Fatalf("the cut-off trip left the queue: %+v", trip)
	}
	if inc := f.incident(t, res.Incident.ID); inc.State != store.StatePending {
		t.Fatalf("incident %+v", inc)
	}
	// A firing after the shutdown is recorded unclaimed.
	sms := f.accept(t, "sms-daily", a, callbackFor(a, "tok-2", "sms", "count", "150"))
	if trip := f.trip(t, sms.Incident.ID); trip.State != store.ActionAvailable {
		t.Fatalf("a firing after the shutdown was claimed: %+v", trip)
	}
	g.open()
	b2 := f.restart(t, f.api)
	f.clock.Advance(time.Minute)
	b2.RunDueOnce(context.Background())
	if f.incident(t, res.Incident.ID).State != store.StateDone || f.incident(t, sms.Incident.ID).State != store.StateDone ||
		f.api.count("accounts.update") != 1 {
		t.Fatalf("after the restart: %+v, %+v, %d writes", f.incident(t, res.Incident.ID), f.incident(t, sms.Incident.ID), f.api.count("accounts.update"))
	}
}

// The per-account lock forgets a key once nobody holds or waits for it.
func TestKeyedMutexForgetsUnusedKeys(t *testing.T) {
	var k keyedMutex
	unlock := k.lock("a")
	got := make(chan struct{})
	go func() { u := k.lock("a"); close(got); u() }()
	u := k.lock("b")
	u()
	unlock()
	<-got
	waitUntil(t, "the keys to be forgotten", func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return len(k.m) == 0
	})
}

// A trip's write mark does not outlive the proof that its write did not
// land. The first write's answer is lost (a 503: it may land within the
// write lease); after the lease the next attempt reads the account active
// (so it did not land) and its own write is refused (429: not applied). A
// person then suspends the account. The third attempt must find that
// suspension somebody else's: counted as ours, the rule's reactivate policy
// would undo it an hour later. The second attempt forgets the mark
// (Completion.ClearWriteSent).
func TestWriteMarkDoesNotOutliveAnActiveRead(t *testing.T) {
	f := newFixture(t, episodeRules)
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 503, Message: "unavailable"})
	res := f.accept(t, "spend-auto", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background()) // sent, answer 503: may land within the write lease
	f.clock.Advance(21 * time.Second)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 429, Code: 20429, Message: "too many"})
	f.b.RunDueOnce(context.Background()) // reads active: the first write did not land; the second is refused
	if got := f.status(t, a.SID); got != twilioapi.StatusActive {
		t.Fatalf("status %s", got)
	}
	f.api.SetAccountStatus(context.Background(), a.SID, twilioapi.StatusSuspended) // by a person
	f.clock.Advance(time.Minute)
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("incident %s: %q (a person's suspension counted as ours)", inc.Outcome, inc.Detail)
	}
	f.clock.Advance(2 * time.Hour)
	f.b.RunDueOnce(context.Background())
	if got := f.status(t, a.SID); got != twilioapi.StatusSuspended {
		t.Fatalf("the account a person suspended is %s", got)
	}
}

// The read the receiving process started while the firing was committed is
// not used when a status write of this process to the account may postdate
// it: two rules crossed by one purchase, the first trip's suspension ended
// between the second's read and its claim. The worker reads again and does
// not write a second time.
func TestPreReadOlderThanOurWriteIsReadAgain(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	ctx := context.Background()
	// The second rule's firing, recorded claimed by this process.
	fr := store.Firing{Source: store.SourceCallback, IdempotencyToken: "tok-2", Rule: "sms-daily", AccountSID: a.SID,
		AccountName: a.FriendlyName, Period: "daily:2026-11-24", UsageCategory: "sms", TriggerBy: "count",
		Recurring: "daily", TriggerValue: "100", CurrentValue: "150", Action: "suspend",
		Actions: []store.ActionKind{store.ActionTrip}, ReceivedAt: f.clock.Now(),
		ClaimBy: &store.Claim{Owner: f.b.Engine().Owner(), LeaseUntil: f.clock.Now().Add(time.Minute)}}
	res, err := f.st.RecordFiring(ctx, fr)
	if err != nil || res.Trip.State != store.ActionRunning {
		t.Fatalf("record: %+v, %v", res.Trip, err)
	}
	// Its read saw the account active; then the first rule's trip wrote.
	pre := make(chan accountRead, 1)
	pre <- accountRead{acct: a, started: time.Now()}
	f.b.wroteStatus(a.SID)
	f.api.mu.Lock()
	f.api.accounts[a.SID].Status = "suspended"
	f.api.mu.Unlock()
	f.b.handoffs.Store(res.Trip.ID, &handoff{inc: res.Incident, read: pre})

	r := f.b.workTrip(ctx, res.Trip)
	if r.Outcome() != OutcomeAlreadySuspended || f.api.count("accounts.update") != 0 || f.api.count("accounts.fetch") != 1 {
		t.Fatalf("outcome %q after %d writes and %d reads", r.Outcome(), f.api.count("accounts.update"), f.api.count("accounts.fetch"))
	}
}

// On a shared store another replica's status write is not in this
// process's memory: the store answers the account's last status write with
// the claimed trip (RecordResult.LastStatusWrite), and a read that started
// less than a write lease after it (the replicas' clocks may differ by
// less) is not used. One that started later is.
func TestPreReadOlderThanAnotherReplicasWriteIsReadAgain(t *testing.T) {
	for _, c := range []struct {
		name        string
		readAfter   time.Duration // the read started this long after the other replica's write
		wantReads   int
		wantOutcome store.Outcome
	}{
		{"the read may predate the write", 0, 1, OutcomeAlreadySuspended},
		{"the read started a write lease after it", 31 * time.Second, 0, OutcomeSuspended},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, twoSuspendRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			ctx := context.Background()
			firing := func(token, rule, category, by, owner string) store.RecordResult {
				r := f.b.Rule(rule)
				res, err := f.st.RecordFiring(ctx, store.Firing{Source: store.SourceCallback, IdempotencyToken: token,
					Rule: rule, AccountSID: a.SID, AccountName: a.FriendlyName, Period: PeriodKey(r.Recurring, f.clock.Now()),
					UsageCategory: category, TriggerBy: by, Recurring: r.Recurring, TriggerValue: "100", CurrentValue: "150",
					Action: "suspend", Actions: []store.ActionKind{store.ActionTrip}, ReceivedAt: f.clock.Now(),
					ClaimBy: &store.Claim{Owner: owner, LeaseUntil: f.clock.Now().Add(time.Minute)}})
				if err != nil || res.Trip.State != store.ActionRunning {
					t.Fatalf("record %s: %+v, %v", token, res.Trip, err)
				}
				return res
			}
			// Another replica suspends the account for spend-daily.
			other := firing("tok-1", "spend-daily", "totalprice", "price", "other-host/00000002")
			if !other.LastStatusWrite.IsZero() {
				t.Fatalf("a fresh account's last status write: %s", other.LastStatusWrite)
			}
			wrote := f.clock.Now()
			if _, err := f.st.CompleteAction(ctx, other.Trip.ID, "other-host/00000002", store.Completion{State: store.ActionDone,
				Outcome: OutcomeSuspended, Attempted: true, WriteSentAt: wrote}); err != nil {
				t.Fatal(err)
			}
			f.api.mu.Lock()
			f.api.accounts[a.SID].Status = "suspended"
			f.api.mu.Unlock()

			// This process's firing of sms-daily, with the read it started.
			f.clock.Advance(c.readAfter)
			res := firing("tok-2", "sms-daily", "sms", "count", f.b.Engine().Owner())
			if !res.LastStatusWrite.Equal(wrote) {
				t.Fatalf("last status write %s, want %s", res.LastStatusWrite, wrote)
			}
			pre := make(chan accountRead, 1)
			// It saw the account active (made up for the later read: that
			// it was used shows in the write).
			pre <- accountRead{acct: a, started: time.Now(), at: f.clock.Now()}
			f.b.handoffs.Store(res.Trip.ID, &handoff{inc: res.Incident, read: pre, lastWrite: res.LastStatusWrite})

			r := f.b.workTrip(ctx, res.Trip)
			if r.Outcome() != c.wantOutcome || f.api.count("accounts.fetch") != c.wantReads {
				t.Fatalf("outcome %q after %d reads, want %q after %d", r.Outcome(), f.api.count("accounts.fetch"), c.wantOutcome, c.wantReads)
			}
		})
	}
}

// A reconcile holds no account's lock between its two passes (a reconcile
// of thousands of accounts must not hold off their suspensions), and an
// account re-armed between the passes is planned again on what it has now.
func TestReconcilePassesHoldNoLockAndReplanAfterARearm(t *testing.T) {
	f := newFixture(t, twoSuspendRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	s := f.b.Settings()
	prefix := "usagebreaker:" + s.Instance + ":"
	var desired []twilioapi.TriggerSpec
	for _, r := range s.Rules.Rules {
		desired = append(desired, s.Spec(r))
	}
	pa, err := f.b.reconciler.prepareAccount(context.Background(), a, desired, prefix, false)
	if err != nil || pa == nil {
		t.Fatalf("prepare: %v", err)
	}
	unlock := f.b.locks.lock(a.SID) // would wait forever if the first pass held it
	unlock()

	// A re-arm deletes one of the account's triggers meanwhile.
	ts, _ := f.api.ListTriggers(context.Background(), a.SID)
	if err := f.api.DeleteTrigger(context.Background(), a.SID, ts[0].SID); err != nil {
		t.Fatal(err)
	}
	f.b.touchTriggers(a.SID)
	lists := f.api.count("triggers.list")
	res, err := f.b.reconciler.executeAccount(context.Background(), pa, prefix, false)
	if err != nil {
		t.Fatal(err)
	}
	if f.api.count("triggers.list") != lists+1 || res.created != 1 {
		t.Fatalf("after the re-arm: %d more lists, %d created; want the account planned again and its trigger restored",
			f.api.count("triggers.list")-lists, res.created)
	}
}
