package breaker

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

const approvalRules = `rules:
  - name: spend-veto
    accounts:
      include: ["veto-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    approval: {mode: veto, window: 15m}
  - name: spend-approve
    accounts:
      include: ["approve-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    approval: {mode: approve}
`

type approvalFixture struct {
	*fixture
	chat *recNotifier
}

func newApprovalFixture(t *testing.T, guard GuardSettings) *approvalFixture {
	t.Helper()
	f := &approvalFixture{fixture: newFixture(t, approvalRules), chat: &recNotifier{name: "chat"}}
	s := f.b.Settings()
	s.Operator = OperatorSettings{Notifiers: []notify.Notifier{f.chat}, DefaultNotifiers: []string{"chat"}, Guard: guard}
	f.b.SetSettings(s)
	return f
}

func (f *approvalFixture) fire(t *testing.T, rule string, a twilioapi.Account, token string) int64 {
	t.Helper()
	res := f.accept(t, rule, a, callbackFor(a, token, "totalprice", "price", "60"))
	f.b.RunDueOnce(context.Background())
	return res.Incident.ID
}

func (f *approvalFixture) awaiting(t *testing.T, id int64) {
	t.Helper()
	inc := f.incident(t, id)
	if inc.State != store.StatePending || inc.Outcome != store.OutcomeAwaitingApproval {
		t.Fatalf("incident %d = %s/%s (%s), want pending, awaiting_approval", id, inc.State, inc.Outcome, inc.Detail)
	}
	if n := f.api.count("accounts.update"); n != 0 {
		t.Fatalf("%d status writes while awaiting approval", n)
	}
}

// Veto mode: the incident waits, the notifiers are told once what will
// happen and when, with the commands; when the window ends with no veto,
// it suspends.
func TestApprovalVetoWindowEndsAndActs(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{})
	a := f.api.addAccount("veto-a", "active")
	f.reconcile(t)
	id := f.fire(t, "spend-veto", a, "tok-1")
	f.awaiting(t, id)
	evs := f.chat.events()
	if len(evs) != 1 || evs[0].Incident.Outcome != "awaiting_approval" ||
		!strings.Contains(evs[0].Incident.Taken, "usagebreaker veto "+itoa(id)) ||
		!strings.Contains(evs[0].Incident.Taken, "2026-11-24 10:15:00 UTC") || !strings.Contains(evs[0].Headline, "AWAITING APPROVAL") {
		t.Fatalf("approval notice: %+v", evs)
	}
	f.clock.Advance(14 * time.Minute)
	f.b.RunDueOnce(context.Background())
	f.awaiting(t, id)
	f.clock.Advance(time.Minute)
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, id); inc.Outcome != OutcomeSuspended || f.api.count("accounts.update") != 1 {
		t.Fatalf("after the window: %+v, %d writes", inc, f.api.count("accounts.update"))
	}
	if evs := f.chat.events(); len(evs) != 2 || evs[1].Incident.Outcome != "suspended" {
		t.Fatalf("notices: %d, want the approval notice and the outcome", len(evs))
	}
}

// A veto ends the incident vetoed, with who and why; nothing is written.
func TestApprovalVeto(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{})
	a := f.api.addAccount("veto-a", "active")
	f.reconcile(t)
	id := f.fire(t, "spend-veto", a, "tok-1")
	f.awaiting(t, id)
	if _, err := f.b.Decide(context.Background(), id, store.DecisionVeto, "ops@example", "a planned load test"); err != nil {
		t.Fatal(err)
	}
	f.b.RunDueOnce(context.Background()) // the decision made the trip due now
	inc := f.incident(t, id)
	if inc.State != store.StateDone || inc.Outcome != store.OutcomeVetoed || !strings.Contains(inc.Detail, "ops@example") ||
		!strings.Contains(inc.Detail, "a planned load test") || f.api.count("accounts.update") != 0 {
		t.Fatalf("after the veto: %+v, %d writes", inc, f.api.count("accounts.update"))
	}
	if _, err := f.b.Decide(context.Background(), id, store.DecisionApprove, "x", "y"); err == nil {
		t.Fatal("a decision on a finished incident was taken")
	}
	f.clock.Advance(time.Hour)
	f.b.RunDueOnce(context.Background())
	if f.api.count("accounts.update") != 0 {
		t.Fatal("suspended after the veto")
	}
}

// Approve mode without a window waits for a person however long; an
// approval acts at once.
func TestApprovalApprove(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{})
	a := f.api.addAccount("approve-a", "active")
	f.reconcile(t)
	id := f.fire(t, "spend-approve", a, "tok-1")
	f.awaiting(t, id)
	f.clock.Advance(50 * time.Hour)
	f.b.RunDueOnce(context.Background())
	f.awaiting(t, id)
	if _, err := f.b.Decide(context.Background(), id, store.DecisionApprove, "ops@example", "confirmed fraud"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.Decide(context.Background(), id, store.DecisionVeto, "x", "y"); err == nil {
		t.Fatal("a second decision was taken")
	}
	f.b.RunDueOnce(context.Background())
	if inc := f.incident(t, id); inc.Outcome != OutcomeSuspended || f.api.count("accounts.update") != 1 {
		t.Fatalf("after the approval: %+v, %d writes", inc, f.api.count("accounts.update"))
	}
	got, err := f.st.Approvals(context.Background(), []int64{id})
	if err != nil || got[id].Actor != "ops@example" || got[id].Reason != "confirmed fraud" || got[id].Decision != store.DecisionApprove {
		t.Fatalf("the audit: %+v, %v", got, err)
	}
}

// A window that ends while the daemon is down acts at the next start.
func TestApprovalWindowEndsWhileDown(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{})
	a := f.api.addAccount("veto-a", "active")
	f.reconcile(t)
	id := f.fire(t, "spend-veto", a, "tok-1")
	f.awaiting(t, id)
	f.clock.Advance(time.Hour) // down meanwhile
	// The next process: its start rescues and resumes the queue (and may
	// already run the trip); the window ended while it was down, so the
	// trip is due.
	b2 := f.restart(t, f.api)
	b2.RunDueOnce(context.Background())
	if inc := f.incident(t, id); inc.Outcome != OutcomeSuspended {
		t.Fatalf("incident after the restart = %s/%s (%s), want suspended", inc.State, inc.Outcome, inc.Detail)
	}
	if n := f.api.count("accounts.update"); n != 1 {
		t.Fatalf("%d writes", n)
	}
}

// The guard still applies when an approved suspension finally runs.
func TestApprovalThenGuard(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{MaxSuspensions: 1, Window: time.Hour})
	a := f.api.addAccount("approve-a", "active")
	b := f.api.addAccount("approve-b", "active")
	f.reconcile(t)
	ida := f.fire(t, "spend-approve", a, "tok-a")
	idb := f.fire(t, "spend-approve", b, "tok-b")
	for _, id := range []int64{ida, idb} {
		if _, err := f.b.Decide(context.Background(), id, store.DecisionApprove, "ops", "go"); err != nil {
			t.Fatal(err)
		}
	}
	f.b.RunDueOnce(context.Background())
	held := 0
	for _, id := range []int64{ida, idb} {
		if tr := f.trip(t, id); tr.State == store.ActionHeld {
			held++
		}
	}
	if f.api.count("accounts.update") != 1 || held != 1 {
		t.Fatalf("%d writes, %d held; want 1 and 1", f.api.count("accounts.update"), held)
	}
}

// Only an incident that awaits approval can be decided.
func TestDecideRefusesOtherIncidents(t *testing.T) {
	f := newApprovalFixture(t, GuardSettings{})
	if _, err := f.b.Decide(context.Background(), 99, store.DecisionApprove, "x", "y"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no incident: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
