package breaker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// recNotifier records what it is asked to send and fails as told.
type recNotifier struct {
	name string
	mu   sync.Mutex
	fail []error
	sent []*notify.Event
	errs int
}

func (n *recNotifier) Name() string { return n.name }
func (n *recNotifier) Type() string { return "test" }
func (n *recNotifier) Send(ctx context.Context, ev *notify.Event, p *notify.Progress) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.fail) > 0 {
		err := n.fail[0]
		n.fail = n.fail[1:]
		n.errs++
		return err
	}
	n.sent = append(n.sent, ev)
	return nil
}

func (n *recNotifier) events() []*notify.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*notify.Event(nil), n.sent...)
}

const operatorRules = `rules:
  - name: spend-daily
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    end_calls: true
    rearm_allowance: "20"
  - name: spend-quiet
    accounts:
      include: ["quiet-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    notify: []
  - name: spend-auto
    accounts:
      include: ["auto-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    notify: [pager]
    reactivate:
      after: 1h
  - name: spend-dry
    accounts:
      include: ["dry-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    dry_run: true
    end_calls: true
`

type opFixture struct {
	*fixture
	chat, pager *recNotifier
}

func newOpFixture(t *testing.T, guard GuardSettings) *opFixture {
	t.Helper()
	f := &opFixture{fixture: newFixture(t, operatorRules), chat: &recNotifier{name: "chat"}, pager: &recNotifier{name: "pager"}}
	f.st.(*store.SQLite).SetClock(f.clock.Now)
	s := f.b.Settings()
	s.Operator = OperatorSettings{Notifiers: []notify.Notifier{f.chat, f.pager}, DefaultNotifiers: []string{"chat", "pager"}, Guard: guard}
	f.b.SetSettings(s)
	return f
}

func (f *opFixture) trip(t *testing.T, rule string, a twilioapi.Account, token string) AcceptResult {
	t.Helper()
	return f.accept(t, rule, a, callbackFor(a, token, "totalprice", "price", "50.12"))
}

// settle runs due actions until none is left due (the clock does not move):
// RunDueOnce claims again until nothing is claimable, so what a finished
// trip made due (notifications, end_calls, pages) runs in the same call.
func (f *opFixture) settle(t *testing.T) {
	t.Helper()
	f.b.RunDueOnce(context.Background())
}

func (f *opFixture) actions(t *testing.T, incident int64) map[store.ActionKind]store.Action {
	t.Helper()
	acts, err := f.st.IncidentActions(context.Background(), []int64{incident})
	if err != nil {
		t.Fatal(err)
	}
	out := map[store.ActionKind]store.Action{}
	for _, a := range acts[incident] {
		out[a.Kind] = a
	}
	return out
}

func TestNotificationsAfterTheTripOncePerNotifier(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	f.chat.fail = []error{errors.New("502 from chat"), errors.New("timeout")}
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	res := f.trip(t, "spend-daily", a, "tok-1")
	if got := f.actions(t, res.Incident.ID); len(got) != 4 || got["end_calls"].ID == 0 || got["notify:chat"].ID == 0 || got["notify:pager"].ID == 0 {
		t.Fatalf("actions = %+v", got)
	}
	// Notifications (and end_calls) wait for the trip's outcome: while the
	// trip is unfinished the queue hands out the trip alone.
	claimed := f.claimAs(t, "probe-host/9")
	if len(claimed) != 1 || claimed[0].Kind != store.ActionTrip {
		t.Fatalf("claimed %+v, want the trip alone", claimed)
	}
	if _, err := f.st.CompleteAction(context.Background(), claimed[0].ID, "probe-host/9",
		store.Completion{State: store.ActionAvailable, NextAttemptAt: f.clock.Now()}); err != nil { // handed back, no attempt counted
		t.Fatal(err)
	}
	f.settle(t)
	if len(f.pager.events()) != 1 || f.pager.events()[0].Incident.Outcome != string(OutcomeSuspended) {
		t.Fatalf("pager got %+v: not the trip's outcome", f.pager.events())
	}
	// chat failed once; its retry is due after the backoff.
	for i := 0; i < 5 && len(f.chat.events()) == 0; i++ {
		f.clock.Advance(2 * time.Minute)
		f.settle(t)
	}
	chat, pager := f.chat.events(), f.pager.events()
	if len(chat) != 1 || len(pager) != 1 || f.chat.errs != 2 {
		t.Fatalf("chat %d (errors %d), pager %d", len(chat), f.chat.errs, len(pager))
	}
	ev := pager[0]
	i := ev.Incident
	if ev.Kind != notify.KindIncident || i.Outcome != string(OutcomeSuspended) || i.AccountSID != a.SID || i.AccountName != "tenant-a" ||
		i.Value != "50.12" || i.Threshold != "50" || i.Rule != "spend-daily" || !i.EndCalls ||
		!strings.Contains(i.Taken, "suspended the subaccount") || i.Reactivate != `usagebreaker reactivate `+a.SID+` --reason "..."` ||
		ev.ID != fmt.Sprintf("prod-incident-%d", res.Incident.ID) || !strings.Contains(ev.Headline, "SUSPENDED tenant-a") {
		t.Errorf("event = %+v, incident %+v", ev, i)
	}
	for kind, want := range map[store.ActionKind]store.Outcome{"notify:chat": OutcomeSent, "notify:pager": OutcomeSent, "end_calls": OutcomeEnded} {
		if got := f.actions(t, res.Incident.ID)[kind]; got.State != store.ActionDone || got.Outcome != want {
			t.Errorf("%s = %+v", kind, got)
		}
	}
	if got := f.actions(t, res.Incident.ID)["notify:chat"].Attempts; got != 3 {
		t.Errorf("chat attempts = %d", got)
	}
	for name, want := range map[[2]string]float64{{"chat", "sent"}: 1, {"chat", "failed"}: 2, {"pager", "sent"}: 1} {
		if v := testutil.ToFloat64(f.m.Notifications.WithLabelValues(name[0], name[1])); v != want {
			t.Errorf("notifications_total%v = %v, want %v", name, v, want)
		}
	}
	// A repeat of the callback changes nothing: no second notification.
	f.trip(t, "spend-daily", a, "tok-1")
	f.settle(t)
	if len(f.chat.events()) != 1 || len(f.pager.events()) != 1 {
		t.Error("a repeat notified again")
	}
}

func TestNotifyListsAndPermanentFailures(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	f.pager.fail = []error{notify.Permanent(errors.New("HTTP 404: no_service"))}
	quiet := f.api.addAccount("quiet-a", "active")
	auto := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	q := f.trip(t, "spend-quiet", quiet, "q")
	if got := f.actions(t, q.Incident.ID); len(got) != 1 {
		t.Errorf("notify: [] still notifies: %+v", got)
	}
	r := f.trip(t, "spend-auto", auto, "r")
	f.settle(t)
	if got := f.actions(t, r.Incident.ID); got["notify:chat"].ID != 0 || got["notify:pager"].State != store.ActionFailed ||
		!strings.Contains(got["notify:pager"].Detail, "no_service") || got["notify:pager"].Attempts != 1 {
		t.Errorf("actions = %+v", got)
	}
	// A notifier removed by a reload: its pending notifications fail, clearly.
	b := f.api.addAccount("tenant-b", "active")
	f.reconcile(t)
	res := f.trip(t, "spend-daily", b, "b")
	s := f.b.Settings()
	s.Operator.Notifiers = s.Operator.Notifiers[:1]
	f.b.SetSettings(s)
	f.settle(t)
	if got := f.actions(t, res.Incident.ID)["notify:pager"]; got.State != store.ActionFailed || !strings.Contains(got.Detail, "no longer configured") {
		t.Errorf("removed notifier: %+v", got)
	}
}

// callsAPI adds in-progress calls to the fake.
type callsAPI struct {
	*fakeAPI
	mu    sync.Mutex
	calls map[string][]string // account -> in-progress call SIDs
	ended []string
	fail  []error
}

func (c *callsAPI) ListInProgressCalls(ctx context.Context, acct string) ([]twilioapi.Call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fail) > 0 {
		err := c.fail[0]
		c.fail = c.fail[1:]
		return nil, err
	}
	var out []twilioapi.Call
	for _, sid := range c.calls[acct] {
		out = append(out, twilioapi.Call{SID: sid, Status: "in-progress"})
	}
	return out, nil
}

func (c *callsAPI) EndCall(ctx context.Context, acct, sid string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var rest []string
	for _, s := range c.calls[acct] {
		if s != sid {
			rest = append(rest, s)
		}
	}
	c.calls[acct] = rest
	c.ended = append(c.ended, sid)
	return nil
}

func TestEndCallsAfterSuspension(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	api := &callsAPI{fakeAPI: f.api, calls: map[string][]string{}, fail: []error{&twilioapi.Error{Operation: "calls.list", Status: 503}}}
	f.b = New(Options{API: api, Store: f.st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Settings: f.b.Settings()})
	a := f.api.addAccount("tenant-a", "active")
	dry := f.api.addAccount("dry-a", "active")
	api.calls[a.SID] = []string{"CA1", "CA2"}
	api.calls[dry.SID] = []string{"CA3"}
	f.reconcile(t)
	res := f.trip(t, "spend-daily", a, "a")
	d := f.trip(t, "spend-dry", dry, "d")
	f.settle(t)
	f.clock.Advance(time.Minute) // the 503's retry
	f.settle(t)
	if got := f.actions(t, res.Incident.ID)["end_calls"]; got.State != store.ActionDone || got.Detail != "ended 2 in-progress call(s)" || got.Attempts != 2 {
		t.Errorf("end_calls = %+v", got)
	}
	if got := f.actions(t, d.Incident.ID)["end_calls"]; got.Outcome != OutcomeSkipped {
		t.Errorf("dry run end_calls = %+v", got)
	}
	if strings.Join(api.ended, ",") != "CA1,CA2" || len(api.calls[dry.SID]) != 1 {
		t.Errorf("ended %v; dry-run account's calls %v", api.ended, api.calls[dry.SID])
	}
	if v := testutil.ToFloat64(f.m.CallsEnded); v != 2 {
		t.Errorf("calls_ended_total = %v", v)
	}
}

func TestGuardHoldsPagesOnceAndReleases(t *testing.T) {
	f := newOpFixture(t, GuardSettings{MaxSuspensions: 2, Window: time.Hour})
	var accts []twilioapi.Account
	for i := 0; i < 5; i++ {
		accts = append(accts, f.api.addAccount(fmt.Sprintf("tenant-%d", i), "active"))
	}
	f.reconcile(t)
	var incs []int64
	for i, a := range accts[:4] {
		incs = append(incs, f.trip(t, "spend-daily", a, fmt.Sprint("t", i)).Incident.ID)
	}
	f.settle(t) // 4 trips at once on 4 workers: the guard admits exactly 2
	if n := f.api.count("accounts.update"); n != 2 {
		t.Fatalf("%d suspensions executed, want 2", n)
	}
	if v := testutil.ToFloat64(f.m.GuardHeld); v != 2 {
		t.Errorf("guard_held = %v", v)
	}
	held := 0
	pages := 0
	for _, id := range incs {
		acts := f.actions(t, id)
		if acts["trip"].State == store.ActionHeld {
			held++
			if acts["notify:chat"].State != store.ActionAvailable {
				t.Errorf("a held incident was notified: %+v", acts["notify:chat"])
			}
		}
		if acts["guard:chat"].ID != 0 {
			pages++
		}
	}
	if held != 2 || pages != 1 {
		t.Errorf("held %d, incidents with pages %d", held, pages)
	}
	guardEvents := func(n *recNotifier) (out []*notify.Event) {
		for _, ev := range n.events() {
			if ev.Kind == notify.KindGuard {
				out = append(out, ev)
			}
		}
		return out
	}
	for _, n := range []*recNotifier{f.chat, f.pager} {
		g := guardEvents(n)
		if len(g) != 1 || g[0].Guard.MaxSuspensions != 2 || g[0].Guard.Window != time.Hour || g[0].Guard.Held != 2 ||
			g[0].Guard.Suspended != 2 || !strings.Contains(g[0].Guard.Release, "/api/v1/guard/release") {
			t.Fatalf("%s guard pages = %+v", n.name, g)
		}
	}

	n, err := f.b.ReleaseHeld(context.Background(), "test")
	if err != nil || n != 2 {
		t.Fatalf("release = %d, %v", n, err)
	}
	f.settle(t)
	if n := f.api.count("accounts.update"); n != 4 {
		t.Fatalf("%d suspensions after release, want 4", n)
	}
	for _, id := range incs {
		if inc := f.incident(t, id); inc.Outcome != OutcomeSuspended {
			t.Errorf("incident %d = %s %s", id, inc.Outcome, inc.Detail)
		}
	}
	if v := testutil.ToFloat64(f.m.GuardHeld); v != 0 {
		t.Errorf("guard_held after release = %v", v)
	}
	if len(f.chat.events()) != 5 { // 4 incidents + 1 page
		t.Errorf("chat got %d events", len(f.chat.events()))
	}

	// Still 4 in the window: the next one is held, and pages again (a new episode).
	f.trip(t, "spend-daily", accts[4], "t4")
	f.settle(t)
	if f.api.count("accounts.update") != 4 || len(guardEvents(f.chat)) != 2 {
		t.Errorf("after release: %d suspensions, %d pages", f.api.count("accounts.update"), len(guardEvents(f.chat)))
	}
	// An hour later the window is clear, but the held one waits for a person.
	f.clock.Advance(61 * time.Minute)
	f.settle(t)
	if f.api.count("accounts.update") != 4 {
		t.Error("a held suspension ran without a release")
	}
}

func TestScheduledReactivation(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	res := f.trip(t, "spend-auto", a, "a")
	f.settle(t)
	re := f.actions(t, res.Incident.ID)["reactivate"]
	if re.ID == 0 || !re.NextAttemptAt.Equal(f.clock.Now().Add(time.Hour)) {
		t.Fatalf("reactivate action = %+v", re)
	}
	if ev := f.pager.events(); len(ev) != 1 || !strings.Contains(ev[0].Incident.AutoReactivate, "(reactivate: after 1h0m0s)") {
		t.Errorf("the notification does not say when it reactivates: %+v", ev)
	}
	if n, _ := f.st.CountPendingActions(context.Background()); n != 0 {
		t.Errorf("a scheduled reactivation counts as pending work: %d", n)
	}
	f.clock.Advance(59 * time.Minute)
	f.settle(t)
	if acct, _ := f.api.FetchAccount(context.Background(), a.SID); acct.Status != "suspended" {
		t.Fatal("reactivated early")
	}
	f.clock.Advance(time.Minute)
	f.settle(t)
	if acct, _ := f.api.FetchAccount(context.Background(), a.SID); acct.Status != "active" {
		t.Fatal("not reactivated on time")
	}
	rs, _ := f.st.Reactivations(context.Background(), []int64{res.Incident.ID})
	if r := rs[res.Incident.ID]; r.Via != store.ViaScheduled || r.Actor != "rule spend-auto" || !strings.Contains(r.Reason, "after 1h") {
		t.Errorf("audit = %+v", r)
	}
	if v := testutil.ToFloat64(f.m.Reactivations.WithLabelValues("scheduled")); v != 1 {
		t.Errorf("reactivations_total{scheduled} = %v", v)
	}
	if got := f.actions(t, res.Incident.ID)["reactivate"]; got.State != store.ActionDone || got.Outcome != OutcomeReactivated {
		t.Errorf("reactivate action = %+v", got)
	}
}

// A scheduled reactivation whose write may still land (Twilio answered
// 503 to a sent request) holds the account, and records the write as its
// own, until it can no longer land: no trip of the account, in this process
// or another, reads or writes it meanwhile. Then it tries again.
func TestScheduledReactivationWriteMayLandHoldsTheAccount(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	ctx := context.Background()
	a := f.api.addAccount("auto-a", "active")
	f.reconcile(t)
	res := f.trip(t, "spend-auto", a, "a")
	f.settle(t)
	f.clock.Advance(time.Hour)
	f.api.failNext("accounts.update", &twilioapi.Error{Operation: "accounts.update", Status: 503, Message: "service unavailable"})
	sent := f.clock.Now()
	f.settle(t)
	hold := sent.Add(f.b.writeLease)
	re := f.actions(t, res.Incident.ID)["reactivate"]
	if re.State != store.ActionAvailable || !re.LeaseUntil.Equal(hold) || !re.NextAttemptAt.Equal(hold) || !re.WriteSentAt.Equal(sent) {
		t.Fatalf("reactivate action after a write that may land = %+v, want held until %s, sent at %s", re, hold, sent)
	}
	if rs, _ := f.st.Reactivations(ctx, []int64{res.Incident.ID}); len(rs) != 0 {
		t.Fatalf("recorded as reactivated: %+v", rs)
	}

	// Another rule fires meanwhile: its trip is recorded, but nobody may
	// claim it while the write may land.
	other := f.trip(t, "spend-daily", a, "b")
	if other.Incident.ID == 0 {
		t.Fatalf("the other rule's firing: %+v", other)
	}
	if acts := f.claimAs(t, "other-host/3"); len(acts) != 0 {
		t.Fatalf("claimed during the reactivation's write lease: %+v", acts)
	}
	f.settle(t)
	if n := f.api.count("accounts.update"); n != 2 { // the suspension, the reactivation that may land
		t.Fatalf("%d status writes during the write lease, want 2", n)
	}

	f.clock.Advance(f.b.writeLease + time.Second)
	f.settle(t)
	if rs, _ := f.st.Reactivations(ctx, []int64{res.Incident.ID}); len(rs) != 1 {
		t.Errorf("not reactivated after the write lease: %+v", rs)
	}
	if got := f.actions(t, res.Incident.ID)["reactivate"]; got.State != store.ActionDone || got.Outcome != OutcomeReactivated {
		t.Errorf("reactivate action = %+v", got)
	}
}

func TestReactivateRefusals(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	dry := f.api.addAccount("dry-a", "active")
	f.reconcile(t)
	req := func(sid string) ReactivateRequest {
		return ReactivateRequest{AccountSID: sid, Reason: "customer called", Actor: "test", Via: store.ViaManual}
	}
	refused := func(name string, r ReactivateRequest, want string) {
		t.Helper()
		_, err := f.b.Reactivator().Reactivate(ctx, r)
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, want) {
			t.Errorf("%s: %v, want refusal containing %q", name, err, want)
		}
	}
	refused("no incident", req(a.SID), "did not suspend it")
	refused("bad SID", req("AC123"), "not an account SID")
	noReason := req(a.SID)
	noReason.Reason = "  "
	refused("no reason", noReason, "reason is required")

	f.trip(t, "spend-dry", dry, "d")
	f.settle(t)
	refused("dry run", req(dry.SID), "did not suspend it: the newest incident")

	res := f.trip(t, "spend-daily", a, "a")
	refused("pending", req(a.SID), "still being handled")
	f.settle(t)
	old := req(a.SID)
	old.IncidentID = res.Incident.ID - 1
	refused("other incident", old, "a newer incident")

	out, err := f.b.Reactivator().Reactivate(ctx, req(a.SID))
	if err != nil || out.Account.Status != "active" || out.WasActive || out.Reactivation.ID == 0 {
		t.Fatalf("reactivate = %+v, %v", out, err)
	}
	refused("twice", req(a.SID), "already reactivated")
	if v := testutil.ToFloat64(f.m.Reactivations.WithLabelValues("manual")); v != 1 {
		t.Errorf("reactivations_total{manual} = %v", v)
	}
}

// After a re-arm, a firing in the same period is a new incident (generation
// 2) while repeats of the first firing still dedupe.
func TestRearmedGenerationTripsAgain(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	first := f.trip(t, "spend-daily", a, "gen1")
	f.settle(t)
	fired := func() { // the account's triggers fired today
		f.api.mu.Lock()
		for i := range f.api.triggers[a.SID] {
			f.api.triggers[a.SID][i].DateFired = "Tue, 24 Nov 2026 10:00:00 +0000"
		}
		f.api.mu.Unlock()
	}
	fired()
	out, err := f.b.Reactivator().Reactivate(ctx, ReactivateRequest{AccountSID: a.SID, Reason: "ok", Actor: "t", Via: store.ViaManual})
	if err != nil || len(out.Rearmed) != 1 || out.Rearmed[0].Generation != 2 || out.Rearmed[0].Allowance != "20" || len(out.Problems) != 0 {
		t.Fatalf("reactivate = %+v, %v", out, err)
	}
	ts := f.api.trig(a.SID)
	if len(ts) != 1 || ts[0].SID != out.Rearmed[0].TriggerSID || ts[0].TriggerValue.String() != "20" {
		t.Fatalf("triggers after re-arm = %+v", ts)
	}
	if r := f.trip(t, "spend-daily", a, "gen1"); !r.Duplicate || r.Incident.ID != first.Incident.ID {
		t.Errorf("a repeat of the first firing = %+v", r)
	}
	second := f.trip(t, "spend-daily", a, "gen2")
	if second.Duplicate || second.Incident.Period != "daily:2026-11-24#2" {
		t.Fatalf("the re-armed trigger's firing = %+v", second)
	}
	if r := f.trip(t, "spend-daily", a, "gen2-other-token"); !r.Duplicate || r.Incident.ID != second.Incident.ID {
		t.Errorf("another firing of generation 2 = %+v", r)
	}
	f.settle(t)
	if inc := f.incident(t, second.Incident.ID); inc.Outcome != OutcomeSuspended {
		t.Errorf("generation 2 = %+v", inc)
	}

	// The reconciler keeps the re-armed trigger (a's status is suspended again:
	// reactivate it to let the reconciler look at it).
	fired()
	if _, err := f.b.Reactivator().Reactivate(ctx, ReactivateRequest{AccountSID: a.SID, Reason: "again", Actor: "t", Via: store.ViaManual}); err != nil {
		t.Fatal(err)
	}
	ex, _ := f.st.RearmFor(ctx, a.SID, "spend-daily", "daily:2026-11-24")
	if ex.Generation != 3 {
		t.Errorf("generation after the second re-arm = %d", ex.Generation)
	}
	before := f.api.writes()
	f.reconcile(t)
	if f.api.writes() != before {
		t.Errorf("the reconciler undid the re-arm: %v", f.api.writeSeq()[len(f.api.writeSeq())-2:])
	}
	// The next day the rule's own threshold comes back.
	f.clock.Advance(24 * time.Hour)
	f.reconcile(t)
	if ts := f.api.trig(a.SID); len(ts) != 1 || ts[0].TriggerValue.String() != "50" {
		t.Errorf("next day triggers = %+v", ts)
	}
	if n, _ := f.st.CountExpiredRearms(ctx, f.clock.Now()); n != 0 {
		t.Errorf("%d exceptions not marked restored", n)
	}
}

func TestReconcileFinishesAnInterruptedRearm(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	ctx := context.Background()
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	// A crash after BeginRearm: the exception has no trigger yet.
	if _, err := f.st.BeginRearm(ctx, a.SID, "spend-daily", "daily:2026-11-24", "20", time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t)
	ts := f.api.trig(a.SID)
	ex, _ := f.st.RearmFor(ctx, a.SID, "spend-daily", "daily:2026-11-24")
	if len(ts) != 1 || ts[0].TriggerValue.String() != "20" || ex.TriggerSID != ts[0].SID || ex.TriggerValue != "20" {
		t.Fatalf("triggers %+v, exception %+v", ts, ex)
	}
	before := f.api.writes()
	f.reconcile(t)
	if f.api.writes() != before {
		t.Error("a second reconcile changed something")
	}
}
