package breaker

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Two suspend rules that cross together, plus a third that notifies.
const twoSuspendRules = `rules:
  - name: spend-daily
    accounts:
      include: ["*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-daily
    accounts:
      include: ["*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 100
    action: suspend
`

// slowAPI widens the window between the read and the write of a suspension,
// and can make a status write time out after (or instead of) applying it.
type slowAPI struct {
	*fakeAPI
	fetchDelay time.Duration

	mu          sync.Mutex
	timeouts    int  // the next status writes that time out
	applyBefore bool // ... after the write was applied
}

func (s *slowAPI) FetchAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	time.Sleep(s.fetchDelay)
	return s.fakeAPI.FetchAccount(ctx, sid)
}

func (s *slowAPI) SetAccountStatus(ctx context.Context, sid, status string) (twilioapi.Account, error) {
	s.mu.Lock()
	timeout, apply := s.timeouts > 0, s.applyBefore
	if timeout {
		s.timeouts--
	}
	s.mu.Unlock()
	if !timeout {
		return s.fakeAPI.SetAccountStatus(ctx, sid, status)
	}
	if apply {
		s.fakeAPI.SetAccountStatus(ctx, sid, status) // written, and applied
	} else {
		s.fakeAPI.mu.Lock()
		s.fakeAPI.calls["accounts.update"]++
		s.fakeAPI.mu.Unlock()
		wroteRequest(ctx, nil) // written, not applied (yet)
	}
	return twilioapi.Account{}, &twilioapi.Error{Operation: "accounts.update", Status: 0, Message: "context deadline exceeded"}
}

func newSlowFixture(t *testing.T, ruleText string) (*fixture, *slowAPI) {
	f := newFixture(t, ruleText)
	s := &slowAPI{fakeAPI: f.api}
	f.b = New(Options{API: s, Store: f.st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		WriteLease: 30 * time.Second, Workers: 4, Settings: f.b.Settings()})
	return f, s
}

func (f *fixture) actions(t *testing.T, incidentID int64) []store.Action {
	t.Helper()
	acts, err := f.st.(*store.SQLite).Actions(context.Background(), incidentID)
	if err != nil {
		t.Fatal(err)
	}
	return acts
}

func TestTwoIncidentsOfOneAccountWriteOnce(t *testing.T) {
	f, s := newSlowFixture(t, twoSuspendRules)
	s.fetchDelay = 20 * time.Millisecond // without the per-account lock both would read "active"
	var accts []twilioapi.Account
	for _, n := range []string{"tenant-a", "tenant-b", "tenant-c"} {
		accts = append(accts, f.api.addAccount(n, "active"))
	}
	f.reconcile(t)
	var ids []int64
	for _, a := range accts {
		ids = append(ids, f.accept(t, "spend-daily", a, callbackFor(a, a.SID+"-1", "totalprice", "price", "60")).Incident.ID)
		ids = append(ids, f.accept(t, "sms-daily", a, callbackFor(a, a.SID+"-2", "sms", "count", "150")).Incident.ID)
	}
	f.b.RunDueOnce(context.Background()) // 6 actions on 4 workers at once
	if got := f.api.count("accounts.update"); got != 3 {
		t.Fatalf("suspend writes = %d, want 3 (one per account)", got)
	}
	outcomes := map[store.Outcome]int{}
	for _, id := range ids {
		outcomes[f.incident(t, id).Outcome]++
	}
	if outcomes[OutcomeSuspended] != 3 || outcomes[OutcomeAlreadySuspended] != 3 {
		t.Fatalf("outcomes = %v", outcomes)
	}
}

func TestCrashDuringTheWrite(t *testing.T) {
	for _, landed := range []bool{true, false} {
		name := map[bool]string{true: "the write landed", false: "the write was lost"}[landed]
		t.Run(name, func(t *testing.T) {
			f, s := newSlowFixture(t, twoSuspendRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			spend := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
			sms := f.accept(t, "sms-daily", a, callbackFor(a, "t2", "sms", "count", "150"))
			// The state a process leaves when it dies between sending the
			// write of spend-daily's action and recording its answer: the
			// trip claimed (one action per account: sms-daily's waits) and
			// the write marked sent.
			claimed := f.claimAs(t, deadOwner)
			if len(claimed) != 1 || claimed[0].IncidentID != spend.Incident.ID {
				t.Fatalf("claimed %+v, want spend-daily's trip alone", claimed)
			}
			f.markSent(t, claimed[0].ID, deadOwner)
			if landed {
				f.api.SetAccountStatus(context.Background(), a.SID, "suspended")
			}
			writes := f.api.count("accounts.update")

			// The next process: no write to the account until the write
			// lease passed, not even for the other incident.
			b2 := f.restart(t, s)
			b2.RunDueOnce(context.Background())
			if f.api.count("accounts.update") != writes || f.api.count("accounts.fetch") != 0 {
				t.Fatalf("touched the account during the lease: %d writes, %d reads", f.api.count("accounts.update")-writes, f.api.count("accounts.fetch"))
			}
			if inc := f.incident(t, spend.Incident.ID); inc.State != store.StatePending || !strings.Contains(inc.Detail, "held until a status write") {
				t.Fatalf("the rescued incident during the lease: %+v", inc)
			}
			if trip := f.trip(t, sms.Incident.ID); trip.State != store.ActionAvailable || trip.Attempts != 0 {
				t.Fatalf("other incident's trip during the lease: %+v", trip)
			}
			f.clock.Advance(31 * time.Second)
			b2.RunDueOnce(context.Background())
			if got := f.api.count("accounts.update") - writes; (landed && got != 0) || (!landed && got != 1) {
				t.Fatalf("writes after the lease = %d", got)
			}
			inc, other := f.incident(t, spend.Incident.ID), f.incident(t, sms.Incident.ID)
			if inc.State != store.StateDone || other.State != store.StateDone {
				t.Fatalf("incidents = %+v, %+v", inc, other)
			}
			if landed {
				// The interrupted write is known to be ours (sms-daily's trip,
				// due first, found the account suspended with no write of its own).
				if inc.Outcome != OutcomeSuspended || !strings.Contains(inc.Detail, "earlier attempt") || other.Outcome != OutcomeAlreadySuspended {
					t.Fatalf("incidents = %+v, %+v", inc, other)
				}
			} else if other.Outcome != OutcomeSuspended || inc.Outcome != OutcomeAlreadySuspended {
				// sms-daily's trip was due first and suspended the account;
				// spend-daily's lost write is not counted again.
				t.Fatalf("outcomes = %s, %s; want already_suspended (the lost write), suspended", inc.Outcome, other.Outcome)
			}
		})
	}
}

func TestWriteTimeoutWaitsForTheLease(t *testing.T) {
	for _, applied := range []bool{true, false} {
		name := map[bool]string{true: "applied", false: "not applied"}[applied]
		t.Run(name, func(t *testing.T) {
			f, s := newSlowFixture(t, baseRules)
			s.timeouts, s.applyBefore = 1, applied
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			res := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
			f.b.RunDueOnce(context.Background())
			act := f.actions(t, res.Incident.ID)[0]
			if act.State != store.ActionAvailable || act.Attempts != 1 || !act.WriteSentAt.Equal(f.clock.Now()) ||
				!act.NextAttemptAt.Equal(f.clock.Now().Add(30*time.Second)) || !act.LeaseUntil.Equal(f.clock.Now().Add(30*time.Second)) ||
				!strings.Contains(act.Detail, "may have been applied") {
				t.Fatalf("after the timeout: %+v", act)
			}
			f.clock.Advance(10 * time.Second) // the backoff, but not the lease
			f.b.RunDueOnce(context.Background())
			if f.api.count("accounts.update") != 1 {
				t.Fatal("wrote again before the lease passed")
			}
			f.clock.Advance(25 * time.Second)
			f.b.RunDueOnce(context.Background())
			inc := f.incident(t, res.Incident.ID)
			if inc.State != store.StateDone || inc.Outcome != OutcomeSuspended {
				t.Fatalf("incident = %+v", inc)
			}
			want := map[bool]int{true: 1, false: 2}[applied] // the applied write is never repeated
			if got := f.api.count("accounts.update"); got != want {
				t.Fatalf("status writes = %d, want %d", got, want)
			}
			if v := testutil.ToFloat64(f.m.Suspensions.WithLabelValues("spend-daily", string(OutcomeSuspended))); v != 1 {
				t.Errorf("suspensions_total{suspended} = %v", v)
			}
		})
	}
}

func TestRetriesWhatMaySucceedLater(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"parent credentials refused", &twilioapi.Error{Operation: "accounts.fetch", Status: 401, Code: 20003, Message: "Authenticate"}},
		{"undecodable answer", &twilioapi.Error{Operation: "accounts.fetch", Status: 200, Message: "decoding the response: unexpected EOF"}},
		{"HTML 502", &twilioapi.Error{Operation: "accounts.fetch", Status: 502, Message: "Bad Gateway"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, baseRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			f.api.failNext("accounts.fetch", c.err)
			res := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
			f.b.RunDueOnce(context.Background())
			if inc := f.incident(t, res.Incident.ID); inc.State != store.StatePending {
				t.Fatalf("gave up: %+v", inc)
			}
			f.clock.Advance(time.Minute)
			f.b.RunDueOnce(context.Background())
			if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended {
				t.Fatalf("incident = %+v", inc)
			}
		})
	}
}

func TestPermanentAnswersEndTheAction(t *testing.T) {
	// Twilio answers that can never succeed end the action as failed, with the reason.
	for _, code := range []int{21478, 21476, 20404} {
		f := newFixture(t, baseRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		status := 400
		if code == 20404 {
			status = 404
		}
		f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: status, Code: code, Message: "cannot"})
		res := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
		f.b.RunDueOnce(context.Background())
		inc := f.incident(t, res.Incident.ID)
		if inc.State != store.StateFailed || !strings.Contains(inc.Detail, "error "+strconv.Itoa(code)) {
			t.Fatalf("code %d: incident = %+v", code, inc)
		}
		f.clock.Advance(time.Hour)
		f.b.RunDueOnce(context.Background())
		if f.api.count("accounts.update") != 1 {
			t.Fatalf("code %d: retried a permanent failure", code)
		}
	}
}

func TestPendingGaugeFollowsTheStore(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
	f.m.ActionsPending.Set(42) // drifted
	f.b.UpdatePendingGauge(context.Background())
	if v := testutil.ToFloat64(f.m.ActionsPending); v != 1 {
		t.Fatalf("actions_pending = %v", v)
	}
}

func TestAWriteMayHaveLandedIsRememberedAcrossOtherErrors(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 500, Code: 20500, Message: "Internal Server Error"})
	res := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	// Twilio applied the write although it answered 500; the next attempt's read fails.
	f.api.mu.Lock()
	f.api.accounts[a.SID].Status = "suspended"
	f.api.mu.Unlock()
	f.api.failNext("accounts.fetch", &twilioapi.Error{Operation: "accounts.fetch", Status: 503, Message: "unavailable"})
	f.clock.Advance(time.Minute)
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.State != store.StatePending || !strings.Contains(inc.Detail, "unavailable") {
		t.Fatalf("after the failed read: %+v", inc)
	}
	if trip := f.trip(t, res.Incident.ID); trip.WriteSentAt.IsZero() || trip.Attempts != 2 {
		t.Fatalf("the trip forgot its write after the failed read: %+v", trip)
	}
	f.clock.Advance(time.Minute)
	f.b.RunDueOnce(context.Background())
	inc := f.incident(t, res.Incident.ID)
	if inc.Outcome != OutcomeSuspended || !strings.Contains(inc.Detail, "earlier attempt") {
		t.Fatalf("incident = %+v", inc)
	}
	if n := f.api.count("accounts.update"); n != 1 {
		t.Fatalf("%d writes", n)
	}
}

func TestStartResumesEveryPendingAction(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.fetch", &twilioapi.Error{Operation: "accounts.fetch", Status: 401, Code: 20003, Message: "Authenticate"})
	res := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	acts := f.actions(t, res.Incident.ID)
	if acts[0].State != store.ActionAvailable || !acts[0].NextAttemptAt.After(f.clock.Now()) {
		t.Fatalf("after the 401: %+v", acts[0])
	}
	// The operator fixes the token and restarts: the action runs at once,
	// not when its backoff would have let it.
	b2 := New(Options{API: f.api, Store: f.st, Metrics: f.m, Now: f.clock.Now, Settings: f.b.Settings()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b2.RunExecutor(ctx, 5*time.Second); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for f.incident(t, res.Incident.ID).State == store.StatePending {
		if time.Now().After(deadline) {
			t.Fatal("the pending action was not resumed at start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v", inc)
	}
}

func TestTwoLostWritesOneClaim(t *testing.T) {
	// Two actions of one account both sent a write whose fate a crash hid;
	// the account is suspended. Only one incident may say it suspended it.
	f, s := newSlowFixture(t, twoSuspendRules)
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	spend := f.accept(t, "spend-daily", a, callbackFor(a, "t1", "totalprice", "price", "60"))
	sms := f.accept(t, "sms-daily", a, callbackFor(a, "t2", "sms", "count", "150"))
	// A first process sends spend-daily's write and records the attempt as
	// a retry (due a moment later); a second sends sms-daily's and dies.
	first := f.claimAs(t, "first/1")
	if len(first) != 1 || first[0].IncidentID != spend.Incident.ID {
		t.Fatalf("claimed %+v", first)
	}
	f.markSent(t, first[0].ID, "first/1")
	if _, err := f.st.CompleteAction(ctx, first[0].ID, "first/1", store.Completion{State: store.ActionAvailable, Attempted: true,
		NextAttemptAt: f.clock.Now().Add(time.Nanosecond), WriteSentAt: f.clock.Now(), Detail: "timeout"}); err != nil {
		t.Fatal(err)
	}
	second := f.claimAs(t, "second/2")
	if len(second) != 1 || second[0].IncidentID != sms.Incident.ID {
		t.Fatalf("claimed %+v", second)
	}
	f.markSent(t, second[0].ID, "second/2")
	f.api.SetAccountStatus(ctx, a.SID, "suspended")

	b2 := f.restart(t, s)
	f.clock.Advance(31 * time.Second)
	b2.RunDueOnce(ctx)
	got := []store.Outcome{f.incident(t, spend.Incident.ID).Outcome, f.incident(t, sms.Incident.ID).Outcome}
	if got[0] != OutcomeSuspended || got[1] != OutcomeAlreadySuspended {
		t.Fatalf("outcomes = %v, want the first to run (spend-daily) suspended and the other already_suspended", got)
	}
	if f.api.count("accounts.update") != 1 {
		t.Fatalf("%d writes", f.api.count("accounts.update"))
	}
}
