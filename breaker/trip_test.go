package breaker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func callbackFor(acct twilioapi.Account, token, category, by, value string) Callback {
	return Callback{AccountSID: acct.SID, UsageTriggerSID: "UT" + strings.Repeat("1", 32),
		DateFired: "Tue, 24 Nov 2026 10:00:00 +0000", Recurring: "daily", UsageCategory: category,
		TriggerBy: by, TriggerValue: "50", CurrentValue: value, IdempotencyToken: token}
}

func (f *fixture) accept(t *testing.T, rule string, acct twilioapi.Account, cb Callback) AcceptResult {
	t.Helper()
	r := f.b.Rule(rule)
	if r == nil {
		t.Fatalf("no rule %s", rule)
	}
	res, err := f.b.Accept(context.Background(), r, acct, cb)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (f *fixture) incident(t *testing.T, id int64) store.Incident {
	t.Helper()
	inc, err := f.st.Incident(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return inc
}

func TestTripSuspendsOnce(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	cb := callbackFor(a, a.SID+"-FIRES-UT1-2026-11-24", "totalprice", "price", "50.12")
	res := f.accept(t, "spend-daily", a, cb)
	if res.Duplicate || res.Incident.State != store.StatePending {
		t.Fatalf("first accept = %+v", res)
	}
	// The same firing delivered 4 more times, and another firing in the same period.
	for i := 0; i < 4; i++ {
		if r := f.accept(t, "spend-daily", a, cb); !r.Duplicate || r.Incident.ID != res.Incident.ID {
			t.Fatalf("repeat %d = %+v", i, r)
		}
	}
	cb2 := cb
	cb2.IdempotencyToken = "another-token"
	cb2.CurrentValue = "80"
	if r := f.accept(t, "spend-daily", a, cb2); !r.Duplicate || r.Incident.ID != res.Incident.ID {
		t.Fatalf("same-period firing = %+v", r)
	}
	f.b.RunDueOnce(context.Background())
	f.b.RunDueOnce(context.Background())

	inc := f.incident(t, res.Incident.ID)
	if inc.State != store.StateDone || inc.Outcome != OutcomeSuspended || inc.Firings != 2 || inc.Period != "daily:2026-11-24" {
		t.Fatalf("incident = %+v", inc)
	}
	if got := f.api.count("accounts.update"); got != 1 {
		t.Fatalf("suspend writes = %d, want 1", got)
	}
	if acct, _ := f.api.FetchAccount(context.Background(), a.SID); acct.Status != "suspended" {
		t.Fatalf("status = %s", acct.Status)
	}
	if v := testutil.ToFloat64(f.m.Suspensions.WithLabelValues("spend-daily", string(OutcomeSuspended))); v != 1 {
		t.Errorf("suspensions_total = %v", v)
	}
	if v := testutil.ToFloat64(f.m.Incidents.WithLabelValues("spend-daily", "callback")); v != 1 {
		t.Errorf("incidents_total = %v", v)
	}
	if v := testutil.ToFloat64(f.m.ActionsPending); v != 0 {
		t.Errorf("actions_pending = %v", v)
	}

	// The next day is a new period: a new incident, and the account is already suspended.
	cb3 := cb
	cb3.IdempotencyToken = "next-day"
	cb3.DateFired = "Wed, 25 Nov 2026 00:01:00 +0000"
	r3 := f.accept(t, "spend-daily", a, cb3)
	if r3.Duplicate || r3.Incident.Period != "daily:2026-11-25" {
		t.Fatalf("next day = %+v", r3)
	}
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, r3.Incident.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("next day incident = %+v", inc)
	}
	if got := f.api.count("accounts.update"); got != 1 {
		t.Fatalf("suspend writes = %d, want still 1", got)
	}
}

func TestTripDryRunAndNotifyWriteNothing(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	dry := f.accept(t, "calls-dry", a, callbackFor(a, "t1", "calls", "usage", "121"))
	notify := f.accept(t, "sms-count", a, callbackFor(a, "t2", "sms", "count", "1000"))
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, dry.Incident.ID); inc.Outcome != OutcomeDryRun || inc.State != store.StateDone || !strings.Contains(inc.Detail, "would suspend") {
		t.Errorf("dry run incident = %+v", inc)
	}
	if inc := f.incident(t, notify.Incident.ID); inc.Outcome != OutcomeNotified {
		t.Errorf("notify incident = %+v", inc)
	}
	if f.api.count("accounts.update") != 0 || f.api.count("accounts.fetch") != 0 {
		t.Errorf("Twilio calls: update %d fetch %d", f.api.count("accounts.update"), f.api.count("accounts.fetch"))
	}
	if v := testutil.ToFloat64(f.m.Suspensions.WithLabelValues("calls-dry", string(OutcomeDryRun))); v != 1 {
		t.Errorf("suspensions_total{dry_run} = %v", v)
	}
}

func TestTripVerifies(t *testing.T) {
	cases := []struct {
		name, rule, category, by, value, wantDetail string
		setup                                       func(t *testing.T, f *fixture)
	}{
		{"below threshold", "spend-daily", "totalprice", "price", "49.999", "current value 49.999 is below the rule's threshold 50", nil},
		{"other category", "spend-daily", "sms", "price", "60", "the trigger that fired watches sms by price, the rule now watches totalprice by price", nil},
		{"not a number", "spend-daily", "totalprice", "price", "lots", `current value "lots" is not a number`, nil},
		{"rule removed", "spend-daily", "totalprice", "price", "60", `rule "spend-daily" no longer exists`, func(t *testing.T, f *fixture) {
			f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, "rules:\n"+baseRules[strings.Index(baseRules, "  - name: sms-count"):])})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, baseRules)
			a := f.api.addAccount("tenant-a", "active")
			f.reconcile(t)
			res := f.accept(t, c.rule, a, callbackFor(a, "tok", c.category, c.by, c.value))
			if c.setup != nil {
				c.setup(t, f)
			}
			f.b.RunDueOnce(context.Background())
			inc := f.incident(t, res.Incident.ID)
			if inc.Outcome != OutcomeSkipped || inc.Detail != c.wantDetail || inc.State != store.StateDone {
				t.Fatalf("incident = %s / %q, want skipped / %q", inc.Outcome, inc.Detail, c.wantDetail)
			}
			if f.api.count("accounts.update") != 0 {
				t.Fatal("suspended anyway")
			}
		})
	}
}

func TestTripRuleNoLongerMatchesAccount(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok", "totalprice", "price", "60"))
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, strings.Replace(baseRules, `exclude: ["internal-*"]`, `exclude: ["tenant-a"]`, 1))})
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSkipped || inc.Detail != `rule "spend-daily" no longer matches account "tenant-a"` {
		t.Fatalf("incident = %+v", inc)
	}
}

func TestTripRetriesThenSucceeds(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.update",
		&twilioapi.Error{Operation: "accounts.update", Status: 503, Message: "unavailable"},
		&twilioapi.Error{Operation: "accounts.update", Status: 429, Code: 20429, Message: "too many"})
	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.State != store.StatePending {
		t.Fatalf("after a 503: %+v", inc)
	}
	f.b.RunDueOnce(context.Background()) // not due yet: nothing happens
	if got := f.api.count("accounts.update"); got != 1 {
		t.Fatalf("retried before the backoff: %d updates", got)
	}
	for i := 0; i < 2; i++ {
		f.clock.Advance(time.Minute)
		f.b.RunDueOnce(context.Background())
	}
	inc := f.incident(t, res.Incident.ID)
	if inc.State != store.StateDone || inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v", inc)
	}
	if got := f.api.count("accounts.update"); got != 3 {
		t.Fatalf("updates = %d, want 3 (503, 429, ok)", got)
	}
	if v := testutil.ToFloat64(f.m.ActionAttemptErrors.WithLabelValues(string(store.ActionTrip))); v != 2 {
		t.Errorf("attempt errors = %v", v)
	}
}

func TestTripPermanentErrorFails(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 400, Code: 20008, Message: "cannot suspend"})
	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok", "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	inc := f.incident(t, res.Incident.ID)
	if inc.State != store.StateFailed || inc.Outcome != OutcomeFailed || !strings.Contains(inc.Detail, "error 20008") {
		t.Fatalf("incident = %+v", inc)
	}
	if v := testutil.ToFloat64(f.m.Suspensions.WithLabelValues("spend-daily", string(OutcomeFailed))); v != 1 {
		t.Errorf("suspensions_total{failed} = %v", v)
	}
}

func TestTripResumesAfterRestart(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	res := f.accept(t, "spend-daily", a, callbackFor(a, "tok", "totalprice", "price", "60"))
	// A new process on the same state: the pending action runs there.
	b2 := New(Options{API: f.api, Store: f.st, Now: f.clock.Now, Settings: f.b.Settings()})
	b2.RunDueOnce(context.Background())
	if inc := f.incident(t, res.Incident.ID); inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident = %+v", inc)
	}
}

func TestExecutorRunsConcurrentFiringsOnce(t *testing.T) {
	f := newFixture(t, baseRules)
	var accts []twilioapi.Account
	for i := 0; i < 20; i++ {
		accts = append(accts, f.api.addAccount(fmt.Sprintf("tenant-%d", i), "active"))
	}
	f.reconcile(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.b.RunExecutor(ctx, 5*time.Second); close(done) }()
	var wg sync.WaitGroup
	for _, a := range accts {
		for rep := 0; rep < 5; rep++ {
			wg.Add(1)
			go func(a twilioapi.Account) {
				defer wg.Done()
				f.accept(t, "spend-daily", a, callbackFor(a, a.SID+"-tok", "totalprice", "price", "99"))
			}(a)
		}
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := f.st.CountPendingActions(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d actions still pending", n)
		}
		f.b.Wake()
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if got := f.api.count("accounts.update"); got != len(accts) {
		t.Fatalf("suspend writes = %d, want %d", got, len(accts))
	}
}

func TestPeriodKey(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 59, 59, 0, time.FixedZone("x", -5*3600)) // 2027-01-01 04:59 UTC
	for rec, want := range map[string]string{"daily": "daily:2027-01-01", "monthly": "monthly:2027-01", "yearly": "yearly:2027", "alltime": "alltime", "": "alltime"} {
		if got := PeriodKey(rec, at); got != want {
			t.Errorf("PeriodKey(%q) = %q, want %q", rec, got, want)
		}
	}
}
