package breaker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// One burst of usage often fires several rules of one tenant at once: the
// first incident suspends, the others find the account already suspended.
// Reactivation undoes the suspension of that episode as a whole.

const episodeRules = `rules:
  - name: spend-daily
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    rearm_allowance: "20"
  - name: sms-daily
    accounts:
      include: ["tenant-*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: "100"
    action: suspend
    rearm_allowance: "30"
  - name: spend-auto
    accounts:
      include: ["auto-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    reactivate:
      after: 1h
  - name: sms-auto
    accounts:
      include: ["auto-*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: "100"
    action: suspend
`

const firedToday = "Tue, 24 Nov 2026 09:59:00 +0000"

// spendCB and smsCB are the two rules' callbacks of one burst.
func spendCB(a twilioapi.Account, token string) Callback {
	return callbackFor(a, token, "totalprice", "price", "60")
}

func smsCB(a twilioapi.Account, token string) Callback {
	return callbackFor(a, token, "sms", "count", "150")
}

// burst trips rule1 then rule2 on a (each action run before the next
// firing, so rule1's incident is the one that suspends).
func (f *fixture) burst(t *testing.T, a twilioapi.Account, rule1, rule2 string) (first, second store.Incident) {
	t.Helper()
	first = f.accept(t, rule1, a, spendCB(a, a.SID+"-spend")).Incident
	f.b.RunDueOnce(context.Background())
	second = f.accept(t, rule2, a, smsCB(a, a.SID+"-sms")).Incident
	f.b.RunDueOnce(context.Background())
	if got := f.incident(t, first.ID); got.Outcome != OutcomeSuspended {
		t.Fatalf("first incident = %s %s", got.Outcome, got.Detail)
	}
	if got := f.incident(t, second.ID); got.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("second incident = %s %s", got.Outcome, got.Detail)
	}
	return first, second
}

// setFired marks the account's owned trigger of rule as fired at when.
func (f *fixture) setFired(acct, rule, when string) {
	f.api.mu.Lock()
	defer f.api.mu.Unlock()
	for i, tr := range f.api.triggers[acct] {
		if tr.FriendlyName == "usagebreaker:prod:"+rule {
			f.api.triggers[acct][i].DateFired = when
		}
	}
}

func (f *fixture) status(t *testing.T, sid string) string {
	t.Helper()
	a, err := f.api.FetchAccount(context.Background(), sid)
	if err != nil {
		t.Fatal(err)
	}
	return a.Status
}

func (f *fixture) triggerValues(acct string) map[string]string {
	out := map[string]string{}
	for _, tr := range f.api.trig(acct) {
		out[strings.TrimPrefix(tr.FriendlyName, "usagebreaker:prod:")] = tr.TriggerValue.String()
	}
	return out
}

func manual(sid string) ReactivateRequest {
	return ReactivateRequest{AccountSID: sid, Reason: "customer confirmed the traffic", Actor: "test", Via: store.ViaManual}
}

func wantRefused(t *testing.T, err error, want string) {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, want) {
		t.Fatalf("got %v, want a refusal containing %q", err, want)
	}
}

// The later incident of another rule, which found the account already
// suspended, does not block the reactivation; both rules are re-armed and
// the suspending incident carries the audit record.
func TestReactivateAnEpisodeOfTwoRules(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	first, second := f.burst(t, a, "spend-daily", "sms-daily")
	// Twilio says the spend trigger fired; the sms one does not say so (as
	// when a poll found the usage), but its incident is of this period.
	f.setFired(a.SID, "spend-daily", firedToday)

	// The suspension's write is remembered on its own action (and only
	// there): a lost answer of another incident's write is never taken for it.
	for _, act := range f.actions(t, first.ID) {
		if act.Kind == store.ActionTrip && !act.WriteSentAt.Equal(f.clock.Now()) {
			t.Fatalf("the suspending trip does not record its write: %+v", act)
		}
	}
	for _, act := range f.actions(t, second.ID) {
		if act.Kind == store.ActionTrip && !act.WriteSentAt.IsZero() {
			t.Fatalf("the already_suspended trip records a write: %+v", act)
		}
	}
	out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	if err != nil {
		t.Fatalf("reactivate: %v", err)
	}
	if out.Incident.ID != first.ID || len(out.Episode) != 1 || out.Episode[0].ID != second.ID || len(out.Problems) != 0 {
		t.Fatalf("reactivate = incident %d, episode %+v, problems %v", out.Incident.ID, out.Episode, out.Problems)
	}
	if f.status(t, a.SID) != "active" {
		t.Fatal("not active")
	}
	if len(out.Rearmed) != 2 || out.Rearmed[0].Rule != "sms-daily" || out.Rearmed[0].Allowance != "30" ||
		out.Rearmed[1].Rule != "spend-daily" || out.Rearmed[1].Allowance != "20" {
		t.Fatalf("re-armed %+v", out.Rearmed)
	}
	if got := f.triggerValues(a.SID); len(f.api.trig(a.SID)) != 2 || got["spend-daily"] != "20" || got["sms-daily"] != "30" {
		t.Fatalf("triggers after the re-arm = %v", got)
	}
	for _, rule := range []string{"spend-daily", "sms-daily"} {
		if ex, err := f.st.RearmFor(ctx, a.SID, rule, "daily:2026-11-24"); err != nil || ex.Generation != 2 || ex.TriggerSID == "" {
			t.Errorf("%s exception = %+v, %v", rule, ex, err)
		}
	}
	rs, err := f.st.Reactivations(ctx, []int64{first.ID, second.ID})
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := rs[first.ID]; !ok || r.Rearmed != 2 || !strings.Contains(r.Detail, "also covers the later incident(s) 2 (sms-daily, already_suspended)") {
		t.Errorf("audit of the suspending incident = %+v", r)
	}
	if _, ok := rs[second.ID]; ok {
		t.Error("the incident that did not suspend got a reactivation record")
	}
	_, err = f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	wantRefused(t, err, "already reactivated")

	// The second rule trips again on its re-armed generation, and that
	// suspension can be undone in turn.
	third := f.accept(t, "sms-daily", a, smsCB(a, "sms-gen2")).Incident
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, third.ID); inc.Period != "daily:2026-11-24#2" || inc.Outcome != OutcomeSuspended {
		t.Fatalf("generation 2 = %+v", inc)
	}
	out, err = f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	if err != nil || out.Incident.ID != third.ID || len(out.Episode) != 0 {
		t.Fatalf("second reactivation = incident %d, %v", out.Incident.ID, err)
	}
}

// A newer incident that may still suspend (pending) blocks; once it has
// ended already_suspended it no longer does.
func TestReactivateWaitsForANewerPendingIncident(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	first := f.accept(t, "spend-daily", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	second := f.accept(t, "sms-daily", a, smsCB(a, "sms")).Incident
	_, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	wantRefused(t, err, "the newest incident (2, rule sms-daily) is still being handled")
	if f.status(t, a.SID) != "suspended" {
		t.Fatal("reactivated while a newer incident was pending")
	}
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, second.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Fatalf("second = %+v", inc)
	}
	if out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID)); err != nil || out.Incident.ID != first.ID {
		t.Fatalf("reactivate = %d, %v", out.Incident.ID, err)
	}
}

// The scheduled reactivation of the suspending incident is not skipped
// because another rule's incident came later in the same burst.
func TestScheduledReactivationOfAnEpisode(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	first, second := f.burst(t, a, "spend-auto", "sms-auto")
	f.setFired(a.SID, "spend-auto", firedToday)
	f.setFired(a.SID, "sms-auto", firedToday)
	f.clock.Advance(time.Hour)
	f.b.RunDueOnce(ctx)
	if f.status(t, a.SID) != "active" {
		t.Fatalf("not reactivated on schedule: %+v", f.actions(t, first.ID))
	}
	var re store.Action
	for _, act := range f.actions(t, first.ID) {
		if act.Kind == store.ActionReactivate {
			re = act
		}
	}
	if re.State != store.ActionDone || re.Outcome != OutcomeReactivated || !strings.Contains(re.Detail, "re-armed sms-auto") ||
		!strings.Contains(re.Detail, "re-armed spend-auto") {
		t.Errorf("reactivate action = %+v", re)
	}
	rs, _ := f.st.Reactivations(ctx, []int64{first.ID, second.ID})
	if r := rs[first.ID]; r.Via != store.ViaScheduled || r.Actor != "rule spend-auto" || len(rs) != 1 {
		t.Errorf("audit = %+v", rs)
	}
}

// A scheduled reactivation whose incident is no longer the newest
// suspension is still skipped, and says why.
func TestScheduledReactivationSkippedAfterANewerSuspension(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	first := f.accept(t, "spend-auto", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	// Someone reactivates it by hand at Twilio; another rule suspends it again.
	if _, err := f.api.SetAccountStatus(ctx, a.SID, "active"); err != nil {
		t.Fatal(err)
	}
	second := f.accept(t, "sms-auto", a, smsCB(a, "sms")).Incident
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, second.ID); inc.Outcome != OutcomeSuspended {
		t.Fatalf("second = %+v", inc)
	}
	f.clock.Advance(time.Hour)
	f.b.RunDueOnce(ctx)
	if f.status(t, a.SID) != "suspended" {
		t.Fatal("a scheduled reactivation undid a newer suspension")
	}
	var re store.Action
	for _, act := range f.actions(t, first.ID) {
		if act.Kind == store.ActionReactivate {
			re = act
		}
	}
	if re.State != store.ActionDone || re.Outcome != OutcomeSkipped ||
		!strings.Contains(re.Detail, "a newer incident (2, rule sms-auto, outcome suspended) exists") {
		t.Errorf("reactivate action = %+v", re)
	}
	// A person can still undo the newer suspension.
	if out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID)); err != nil || out.Incident.ID != second.ID {
		t.Fatalf("manual reactivation = %d, %v", out.Incident.ID, err)
	}
}

// The account's triggers are listed before anything changes: when that
// fails, the reactivation fails and the account stays suspended, rather than
// being active with nothing re-armed and nothing for the reconciler to finish.
func TestReactivateChangesNothingWhenTheTriggersCannotBeListed(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	first := f.accept(t, "spend-daily", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	f.setFired(a.SID, "spend-daily", firedToday)
	writes := f.api.count("accounts.update")

	f.api.failNext("triggers.list", &twilioapi.Error{Operation: "triggers.list", Status: 503, Message: "unavailable"})
	_, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	var re *RefusedError
	if err == nil || errors.As(err, &re) || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("reactivate = %v, want an error saying nothing was changed", err)
	}
	if f.status(t, a.SID) != "suspended" || f.api.count("accounts.update") != writes {
		t.Fatal("the account was set active without its re-arm")
	}
	if _, err := f.st.RearmFor(ctx, a.SID, "spend-daily", "daily:2026-11-24"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an exception was recorded: %v", err)
	}
	if rs, _ := f.st.Reactivations(ctx, []int64{first.ID}); len(rs) != 0 {
		t.Errorf("audit recorded for a reactivation that did not happen: %+v", rs)
	}

	// Tried again: done, and re-armed.
	out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	if err != nil || len(out.Rearmed) != 1 || f.status(t, a.SID) != "active" || f.triggerValues(a.SID)["spend-daily"] != "20" {
		t.Fatalf("second try = %+v, %v", out, err)
	}
}

// Once the account is active its re-arms are recorded, so a re-arm that a
// Twilio error cuts short is finished by the reconcile it asks for.
func TestReactivateRecordsTheRearmBeforeTheAccountIsActive(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	var asked atomic.Int32
	f.b.SetReconcileRequester(func() { asked.Add(1) })
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	f.burst(t, a, "spend-daily", "sms-daily")
	f.setFired(a.SID, "spend-daily", firedToday)
	f.setFired(a.SID, "sms-daily", firedToday)

	// Every create fails (the client already retried).
	boom := &twilioapi.Error{Operation: "triggers.create", Status: 503, Message: "unavailable"}
	f.api.failNext("triggers.create", boom, boom)
	out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	if err != nil || f.status(t, a.SID) != "active" || len(out.Problems) != 2 || len(out.Rearmed) != 0 || asked.Load() == 0 {
		t.Fatalf("reactivate = %+v, %v (reconcile asked %d)", out, err, asked.Load())
	}
	for _, rule := range []string{"spend-daily", "sms-daily"} {
		if ex, err := f.st.RearmFor(ctx, a.SID, rule, "daily:2026-11-24"); err != nil || ex.Generation != 2 || ex.TriggerSID != "" {
			t.Errorf("%s exception = %+v, %v", rule, ex, err)
		}
	}
	f.reconcile(t)
	if got := f.triggerValues(a.SID); len(f.api.trig(a.SID)) != 2 || got["spend-daily"] != "20" || got["sms-daily"] != "30" {
		t.Fatalf("triggers after the reconcile = %v", got)
	}
}

// At start the executor resumes every pending action whatever its backoff;
// a scheduled reactivation still waits for its time.
func TestRestartDoesNotRunAScheduledReactivationEarly(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	first := f.accept(t, "spend-auto", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	f.clock.Advance(10 * time.Minute)

	// A restart: the engine's start resumes the queue.
	startEngine(t, f.b)
	if f.status(t, a.SID) != "suspended" {
		t.Fatal("a restart reactivated the account 50 minutes early")
	}
	for _, act := range f.actions(t, first.ID) {
		if act.Kind == store.ActionReactivate && (act.State != store.ActionAvailable || act.Attempts != 0 ||
			!act.NextAttemptAt.Equal(f.clock.Now().Add(50*time.Minute))) {
			t.Errorf("reactivate action = %+v", act)
		}
	}
	f.clock.Advance(50 * time.Minute)
	f.b.RunDueOnce(ctx)
	if f.status(t, a.SID) != "active" {
		t.Fatal("not reactivated at its time")
	}
}

// A scheduled reactivation that finds a newer incident still being handled
// looks again later, rather than giving up on the account for good.
func TestScheduledReactivationWaitsForANewerPendingIncident(t *testing.T) {
	f := newFixture(t, episodeRules)
	ctx := context.Background()
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	first := f.accept(t, "spend-auto", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	f.clock.Advance(time.Hour)
	// Another rule fires just as the reactivation is due; Twilio fails its
	// first read, so it is still pending when the reactivation runs.
	f.api.failNext("accounts.fetch", &twilioapi.Error{Operation: "accounts.fetch", Status: 503, Message: "unavailable"})
	second := f.accept(t, "sms-auto", a, smsCB(a, "sms")).Incident
	f.b.RunDueOnce(ctx)
	reactivateAction := func() store.Action {
		for _, act := range f.actions(t, first.ID) {
			if act.Kind == store.ActionReactivate {
				return act
			}
		}
		t.Fatal("no reactivate action")
		return store.Action{}
	}
	for i := 0; i < 5 && f.status(t, a.SID) != "active"; i++ {
		if act := reactivateAction(); act.State != store.ActionAvailable {
			t.Fatalf("the scheduled reactivation gave up: %+v", act)
		}
		f.clock.Advance(2 * time.Minute)
		f.b.RunDueOnce(ctx)
	}
	if f.status(t, a.SID) != "active" {
		t.Fatalf("not reactivated: %+v; newer incident %+v", reactivateAction(), f.incident(t, second.ID))
	}
	if act := reactivateAction(); act.State != store.ActionDone || act.Outcome != OutcomeReactivated {
		t.Errorf("reactivate action = %+v", act)
	}
	if inc := f.incident(t, second.ID); inc.Outcome != OutcomeAlreadySuspended {
		t.Errorf("newer incident = %+v", inc)
	}
}

// An incident reopened by a new firing may suspend after incidents opened
// later than it: the suspension to undo is the one that ended last, not the
// newest incident.
func TestReactivateASuspensionByAReopenedIncident(t *testing.T) {
	f := newFixture(t, episodeRules)
	f.st.(*store.SQLite).SetClock(f.clock.Now)
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	low := f.accept(t, "sms-daily", a, callbackFor(a, "sms-low", "sms", "count", "50")).Incident
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, low.ID); inc.Outcome != OutcomeSkipped {
		t.Fatalf("first sms incident = %+v", inc)
	}
	f.clock.Advance(time.Minute)
	spend := f.accept(t, "spend-daily", a, spendCB(a, "spend")).Incident
	f.b.RunDueOnce(ctx)
	f.clock.Advance(time.Minute)
	if out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID)); err != nil || out.Incident.ID != spend.ID || len(out.Episode) != 0 {
		t.Fatalf("first reactivation = %d %+v, %v", out.Incident.ID, out.Episode, err)
	}
	f.clock.Advance(time.Minute)
	// The sms rule fires again, over its threshold: its incident is reopened
	// and now suspends the account.
	if r := f.accept(t, "sms-daily", a, smsCB(a, "sms-again")); r.Incident.ID != low.ID {
		t.Fatalf("the new firing opened incident %d, want %d reopened", r.Incident.ID, low.ID)
	}
	f.b.RunDueOnce(ctx)
	if inc := f.incident(t, low.ID); inc.Outcome != OutcomeSuspended || f.status(t, a.SID) != "suspended" {
		t.Fatalf("reopened incident = %+v", inc)
	}
	f.clock.Advance(time.Minute)
	out, err := f.b.Reactivator().Reactivate(ctx, manual(a.SID))
	if err != nil || out.Incident.ID != low.ID || f.status(t, a.SID) != "active" {
		t.Fatalf("second reactivation = %d, %v", out.Incident.ID, err)
	}
}
