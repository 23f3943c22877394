package breaker

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func (f *fixture) poll(t *testing.T) PollResult {
	t.Helper()
	res, err := f.b.Poller().Poll(context.Background())
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return res
}

func (f *fixture) incidentsOf(t *testing.T, acct string) []store.Incident {
	t.Helper()
	incs, err := f.st.ListIncidents(context.Background(), store.IncidentFilter{AccountSID: acct})
	if err != nil {
		t.Fatal(err)
	}
	return incs
}

func TestPollOpensIncidentsWithOneCallPerPeriodKind(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")    // spend-daily, sms-count (monthly), calls-dry (alltime)
	b := f.api.addAccount("tenant-b", "active")    // spend-daily, calls-dry
	f.api.addAccount("internal-qa", "active")      // no rule matches: not polled
	s := f.api.addAccount("tenant-s", "suspended") // not active: not polled
	f.api.addAccount("tenant-x", "closed")
	f.reconcile(t)
	f.api.setUsage(a.SID, twilioapi.PeriodDaily, "totalprice", "", "50", "50", "2026-11-24") // exactly the threshold: trips
	f.api.setUsage(a.SID, twilioapi.PeriodDaily, "sms", "9000", "9000", "40", "2026-11-24")  // monthly rule: the daily record is not it
	f.api.setUsage(a.SID, twilioapi.PeriodMonthly, "sms", "999", "999", "0.5", "2026-11-01") // below 1000
	f.api.setUsage(a.SID, twilioapi.PeriodAllTime, "calls", "3", "200", "1", "")             // dry-run rule, over
	f.api.setUsage(b.SID, twilioapi.PeriodDaily, "totalprice", "", "49.999999", "49.999999", "2026-11-24")
	f.api.setUsage(s.SID, twilioapi.PeriodDaily, "totalprice", "", "500", "500", "2026-11-24")

	res := f.poll(t)
	if res.Polled != 2 || res.Reads != 5 || res.Over != 2 || res.Opened != 2 || res.Known != 0 || res.Subaccounts != 5 || res.NewAccounts != 0 {
		t.Fatalf("poll = %+v", res)
	}
	if got := f.api.count("records.read"); got != 5 {
		t.Fatalf("records.read = %d, want 5 (tenant-a: daily, monthly, alltime; tenant-b: daily, alltime)", got)
	}
	incs := f.incidentsOf(t, a.SID)
	if len(incs) != 2 {
		t.Fatalf("incidents = %+v", incs)
	}
	byRule := map[string]store.Incident{}
	for _, i := range incs {
		byRule[i.Rule] = i
	}
	sp := byRule["spend-daily"]
	if sp.Source != store.SourcePoll || sp.Period != "daily:2026-11-24" || sp.CurrentValue != "50" || sp.TriggerValue != "50" ||
		sp.UsageCategory != "totalprice" || sp.TriggerBy != "price" || sp.IdempotencyToken != PollToken("spend-daily", a.SID, "daily:2026-11-24") ||
		sp.State != store.StatePending || sp.Action != "suspend" {
		t.Errorf("spend-daily incident = %+v", sp)
	}
	if cd := byRule["calls-dry"]; cd.Period != "alltime" || cd.CurrentValue != "200" || !cd.DryRun {
		t.Errorf("calls-dry incident = %+v", cd)
	}
	if len(f.incidentsOf(t, b.SID)) != 0 || len(f.incidentsOf(t, s.SID)) != 0 {
		t.Error("an incident for an account under its threshold, or not active")
	}
	if v := testutil.ToFloat64(f.m.Incidents.WithLabelValues("spend-daily", string(store.SourcePoll))); v != 1 {
		t.Errorf("incidents_total{poll} = %v", v)
	}

	// Polling the same period again changes nothing and writes nothing.
	res = f.poll(t)
	if res.Opened != 0 || res.Known != 2 || res.Over != 2 {
		t.Fatalf("second poll = %+v", res)
	}
	if inc := f.incident(t, sp.ID); inc.Firings != 1 {
		t.Errorf("a repeated poll added a firing: %+v", inc)
	}

	// The executor acts on poll incidents as on callbacks.
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, sp.ID); inc.State != store.StateDone || inc.Outcome != OutcomeSuspended {
		t.Fatalf("after the executor: %+v", inc)
	}
	if inc := f.incident(t, byRule["calls-dry"].ID); inc.Outcome != OutcomeDryRun {
		t.Fatalf("dry run: %+v", inc)
	}
	if got := f.api.count("accounts.update"); got != 1 {
		t.Errorf("suspend writes = %d", got)
	}
	// Now suspended, tenant-a is no longer polled.
	before := f.api.count("records.read")
	res = f.poll(t)
	if res.Polled != 1 || f.api.count("records.read")-before != 2 {
		t.Errorf("after the suspension: %+v, %d reads", res, f.api.count("records.read")-before)
	}
}

func TestPollAndCallbackLandOnOneIncident(t *testing.T) {
	t.Run("callback first", func(t *testing.T) {
		f := newFixture(t, baseRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		cb := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		f.api.setUsage(a.SID, twilioapi.PeriodDaily, "totalprice", "", "61", "61", "2026-11-24")
		if res := f.poll(t); res.Opened != 0 || res.Known != 1 {
			t.Fatalf("poll = %+v", res)
		}
		if incs := f.incidentsOf(t, a.SID); len(incs) != 1 || incs[0].ID != cb.Incident.ID || incs[0].Firings != 1 {
			t.Fatalf("incidents = %+v", incs)
		}
	})
	t.Run("poll first", func(t *testing.T) {
		f := newFixture(t, baseRules)
		a := f.api.addAccount("tenant-a", "active")
		f.reconcile(t)
		f.api.setUsage(a.SID, twilioapi.PeriodDaily, "totalprice", "", "61", "61", "2026-11-24")
		if res := f.poll(t); res.Opened != 1 {
			t.Fatalf("poll = %+v", res)
		}
		// The callback Twilio sends a bit later is answered 200 and attaches.
		cb := f.accept(t, "spend-daily", a, callbackFor(a, "tok-1", "totalprice", "price", "60"))
		if !cb.Duplicate || cb.Incident.Source != store.SourcePoll {
			t.Fatalf("callback after the poll = %+v", cb)
		}
		f.b.RunDueOnce(context.Background())
		if f.api.count("accounts.update") != 1 {
			t.Fatalf("suspend writes = %d", f.api.count("accounts.update"))
		}
		if v := testutil.ToFloat64(f.m.Incidents.WithLabelValues("spend-daily", string(store.SourceCallback))); v != 0 {
			t.Errorf("incidents_total{callback} = %v", v)
		}
	})
}

func TestPollPeriodIsTwiliosDay(t *testing.T) {
	// The breaker's clock says 24 Nov; Twilio's record is of 25 Nov (GMT).
	// The incident is 25 Nov's, the one the callback of that day lands on.
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.setUsage(a.SID, twilioapi.PeriodDaily, "totalprice", "", "70", "70", "2026-11-25")
	f.poll(t)
	incs := f.incidentsOf(t, a.SID)
	if len(incs) != 1 || incs[0].Period != "daily:2026-11-25" {
		t.Fatalf("incidents = %+v", incs)
	}
	cb := callbackFor(a, "tok-25", "totalprice", "price", "70")
	cb.DateFired = "Wed, 25 Nov 2026 00:00:05 +0000"
	if r := f.accept(t, "spend-daily", a, cb); !r.Duplicate || r.Incident.ID != incs[0].ID {
		t.Fatalf("callback = %+v", r)
	}
	// Without a start date the breaker's clock decides.
	b := f.api.addAccount("tenant-b", "active")
	f.api.setUsage(b.SID, twilioapi.PeriodDaily, "totalprice", "", "70", "70", "")
	f.poll(t)
	if incs := f.incidentsOf(t, b.SID); len(incs) != 1 || incs[0].Period != "daily:2026-11-24" {
		t.Fatalf("incidents = %+v", incs)
	}
}

func TestPollKeepsGoingPastErrors(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	b := f.api.addAccount("tenant-b", "active")
	f.reconcile(t)
	for _, acct := range []twilioapi.Account{a, b} {
		f.api.setUsage(acct.SID, twilioapi.PeriodDaily, "totalprice", "", "99", "99", "2026-11-24")
	}
	f.api.failNext("records.read", &twilioapi.Error{Operation: "records.read", Status: 503, Message: "unavailable"})
	res, err := f.b.Poller().Poll(context.Background())
	if err == nil || len(res.Errors) != 1 || !strings.Contains(err.Error(), "503") {
		t.Fatalf("poll error = %v (%+v)", err, res)
	}
	if res.Opened != 1 {
		t.Fatalf("the other account was not polled: %+v", res)
	}
	// The next poll catches the one that failed.
	if res := f.poll(t); res.Opened != 1 || res.Known != 1 {
		t.Fatalf("next poll = %+v", res)
	}
	f.api.failNext("accounts.list", &twilioapi.Error{Operation: "accounts.list", Status: 500})
	if _, err := f.b.Poller().Poll(context.Background()); err == nil || !strings.Contains(err.Error(), "list subaccounts") {
		t.Fatalf("list failure: %v", err)
	}
	var te *twilioapi.Error
	if _, err := f.b.Poller().Poll(context.Background()); errors.As(err, &te) {
		t.Fatalf("poll after recovery: %v", err)
	}
}

func TestPollFindsAccountsCreatedSinceTheLastListing(t *testing.T) {
	f := newFixture(t, baseRules)
	f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	n := f.api.addAccount("tenant-new", "active") // no triggers yet: its callbacks cannot come
	f.api.setUsage(n.SID, twilioapi.PeriodDaily, "totalprice", "", "80", "80", "2026-11-24")
	res := f.poll(t)
	if res.NewAccounts != 1 || res.Opened != 1 {
		t.Fatalf("poll = %+v", res)
	}
	if res := f.poll(t); res.NewAccounts != 0 {
		t.Fatalf("second poll = %+v", res)
	}
	f.b.RunDueOnce(context.Background())
	if acct, _ := f.api.FetchAccount(context.Background(), n.SID); acct.Status != "suspended" {
		t.Fatalf("new account = %+v", acct)
	}
}

func TestPollIncidentIsVerifiedBeforeActing(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.api.setUsage(a.SID, twilioapi.PeriodDaily, "totalprice", "", "60", "60", "2026-11-24")
	f.poll(t)
	// The threshold went up before the executor ran: the value is now below it.
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, strings.Replace(baseRules, `threshold: "50"`, `threshold: "75"`, 1))})
	f.b.RunDueOnce(context.Background())
	incs := f.incidentsOf(t, a.SID)
	if len(incs) != 1 || incs[0].Outcome != OutcomeSkipped || incs[0].Detail != "current value 60 is below the rule's threshold 75" {
		t.Fatalf("incidents = %+v", incs)
	}
	if f.api.count("accounts.update") != 0 {
		t.Fatal("suspended anyway")
	}
}

// The duration reached neither the log nor the histogram (a
// deferred assignment to an unnamed result).
func TestPollReportsItsDuration(t *testing.T) {
	f := newFixture(t, baseRules)
	f.api.addAccount("tenant-a", "active")
	if res := f.poll(t); res.Duration <= 0 {
		t.Errorf("a poll's Duration = %v", res.Duration)
	}
	f.api.failNext("accounts.list", errors.New("boom"))
	res, err := f.b.Poller().Poll(context.Background())
	if err == nil || res.Duration <= 0 {
		t.Errorf("a failed poll: err %v, Duration %v", err, res.Duration)
	}
}
