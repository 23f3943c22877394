package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func kinds(acts []Action) []string {
	out := []string{}
	for _, a := range acts {
		out = append(out, a.Kind)
	}
	return out
}

// Notify and end_calls actions wait for their incident's trip action; the
// others (trip, guard pages, reactivate) do not.
func TestPendingActionsWaitForTheTrip(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	f := firing("tok", "r", "AC1", "p", t0)
	f.Actions = []string{ActionTrip, ActionEndCalls, "notify:ops", "notify:sms", "guard:ops"}
	res := record(t, s, f)
	acts, err := s.PendingActions(ctx, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(acts); !reflect.DeepEqual(got, []string{ActionTrip, "guard:ops"}) {
		t.Fatalf("while the trip is pending: %v", got)
	}
	if n, _ := s.CountPendingActions(ctx); n != 5 {
		t.Errorf("CountPendingActions = %d, want 5", n)
	}
	trip := actionOf(t, s, res.Incident.ID, ActionTrip)
	if err := s.FinishAction(ctx, trip.ID, StateDone, "suspended", ""); err != nil {
		t.Fatal(err)
	}
	acts, _ = s.PendingActions(ctx, t0, 0)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{ActionEndCalls, "notify:ops", "notify:sms", "guard:ops"}) {
		t.Fatalf("after the trip: %v", got)
	}
}

func TestFinishActionThenSchedules(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	res := record(t, s, firing("tok", "r", "AC1", "p", t0))
	trip := actionOf(t, s, res.Incident.ID, ActionTrip)
	due := t0.Add(24 * time.Hour)
	if err := s.FinishActionThen(ctx, trip.ID, StateDone, "suspended", "value 100 >= 50",
		[]Scheduled{{Kind: ActionReactivate, At: due}}); err != nil {
		t.Fatal(err)
	}
	inc := incident(t, s, res.Incident.ID)
	if inc.State != StateDone || inc.Outcome != "suspended" {
		t.Fatalf("incident = %+v", inc)
	}
	re := actionOf(t, s, res.Incident.ID, ActionReactivate)
	if re.State != StatePending || !re.NextAttemptAt.Equal(due) {
		t.Fatalf("reactivate action = %+v", re)
	}
	// Scheduled reactivations wait for their time and are not counted as pending work.
	if acts, _ := s.PendingActions(ctx, due.Add(-time.Second), 0); len(acts) != 1 || acts[0].Kind != "notify:ops" {
		t.Errorf("before due: %+v", acts)
	}
	if acts, _ := s.PendingActions(ctx, due, 0); len(acts) != 2 {
		t.Errorf("at due: %+v", acts)
	}
	if n, _ := s.CountPendingActions(ctx); n != 1 {
		t.Errorf("CountPendingActions = %d, want 1 (the notify)", n)
	}
	// Finishing again is refused and schedules nothing.
	if err := s.FinishActionThen(ctx, trip.ID, StateDone, "x", "", []Scheduled{{Kind: "other", At: due}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("second finish: %v", err)
	}
	if len(actionsOf(t, s, res.Incident.ID)) != 3 {
		t.Errorf("actions: %+v", actionsOf(t, s, res.Incident.ID))
	}
	if err := s.FinishActionThen(ctx, re.ID, StateDone, "x", "", []Scheduled{{Kind: "", At: due}}); err == nil {
		t.Error("an empty kind was accepted")
	}
	if a := actionOf(t, s, res.Incident.ID, ActionReactivate); a.State != StatePending {
		t.Errorf("a failed FinishActionThen finished the action: %+v", a)
	}
}

func TestProgressAndIncidentActions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	a := record(t, s, firing("a", "r", "AC1", "p", t0))
	b := record(t, s, firing("b", "r", "AC2", "p", t0))
	n := actionOf(t, s, a.Incident.ID, "notify:ops")
	if err := s.SetActionProgress(ctx, n.ID, "+15550001"); err != nil {
		t.Fatal(err)
	}
	got, err := s.IncidentActions(ctx, []int64{a.Incident.ID, b.Incident.ID, 999})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[a.Incident.ID]) != 2 || len(got[b.Incident.ID]) != 2 {
		t.Fatalf("IncidentActions = %+v", got)
	}
	if p := got[a.Incident.ID][1]; p.Kind != "notify:ops" || p.Progress != "+15550001" {
		t.Errorf("progress = %+v", p)
	}
	if err := s.FinishAction(ctx, n.ID, StateDone, "sent", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetActionProgress(ctx, n.ID, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("progress of a finished action: %v", err)
	}
}

func TestGuardHoldAndRelease(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	var incs []int64
	for i := 0; i < 3; i++ {
		incs = append(incs, record(t, s, firing(fmt.Sprint("t", i), "r", fmt.Sprint("AC", i), "p", t0)).Incident.ID)
	}
	pages := []string{"guard:ops", "guard:sms"}
	paged, err := s.HoldAction(ctx, actionOf(t, s, incs[0], ActionTrip).ID, "held by the guard", pages)
	if err != nil || !paged {
		t.Fatalf("first hold: paged %v, %v", paged, err)
	}
	paged, err = s.HoldAction(ctx, actionOf(t, s, incs[1], ActionTrip).ID, "held by the guard", pages)
	if err != nil || paged {
		t.Fatalf("second hold: paged %v, %v", paged, err)
	}
	if _, err := s.HoldAction(ctx, actionOf(t, s, incs[1], ActionTrip).ID, "again", pages); !errors.Is(err, ErrNotFound) {
		t.Errorf("holding a held action: %v", err)
	}
	if _, err := s.HoldAction(ctx, actionOf(t, s, incs[2], "notify:ops").ID, "x", pages); !errors.Is(err, ErrNotFound) {
		t.Errorf("holding a notify action: %v", err)
	}
	if n, _ := s.CountHeld(ctx); n != 2 {
		t.Errorf("CountHeld = %d", n)
	}
	if got := kinds(actionsOf(t, s, incs[0])); !reflect.DeepEqual(got, []string{ActionTrip, "notify:ops", "guard:ops", "guard:sms"}) {
		t.Errorf("paging incident's actions: %v", got)
	}
	if len(actionsOf(t, s, incs[1])) != 2 {
		t.Errorf("second held incident got pages too")
	}
	if inc := incident(t, s, incs[0]); inc.State != StatePending || inc.Detail != "held by the guard" {
		t.Errorf("held incident = %+v", inc)
	}
	// Held trips are never due; the pages are.
	acts, _ := s.PendingActions(ctx, t0.Add(1000*time.Hour), 0)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{ActionTrip, "guard:ops", "guard:sms"}) {
		t.Errorf("due while held: %v", got)
	}
	if n, _ := s.CountPendingActions(ctx); n != 6 { // incs[2]'s trip+notify, 2 notifies of held incidents, 2 pages
		t.Errorf("CountPendingActions = %d, want 6", n)
	}

	n, err := s.ReleaseHeld(ctx, t0.Add(time.Hour), "released")
	if err != nil || n != 2 {
		t.Fatalf("ReleaseHeld = %d, %v", n, err)
	}
	if n, _ := s.CountHeld(ctx); n != 0 {
		t.Errorf("CountHeld after release = %d", n)
	}
	a := actionOf(t, s, incs[0], ActionTrip)
	if a.Hold != HoldReleased || !a.NextAttemptAt.Equal(t0.Add(time.Hour)) || a.State != StatePending {
		t.Errorf("released action = %+v", a)
	}
	if n, _ := s.ReleaseHeld(ctx, t0, "again"); n != 0 {
		t.Errorf("second release = %d", n)
	}
	// After a release, the next hold pages again (a new episode).
	f := firing("t9", "r", "AC9", "p", t0)
	inc := record(t, s, f).Incident.ID
	if paged, _ := s.HoldAction(ctx, actionOf(t, s, inc, ActionTrip).ID, "held", pages); !paged {
		t.Error("a hold after a release did not page")
	}
}

func TestCountSuspensions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	clock := t0
	s.SetClock(func() time.Time { return clock })
	for i := 0; i < 4; i++ {
		inc := record(t, s, firing(fmt.Sprint("t", i), "r", fmt.Sprint("AC", i), "p", t0)).Incident.ID
		outcome := "suspended"
		if i == 3 {
			outcome = "already_suspended"
		}
		clock = t0.Add(time.Duration(i) * 20 * time.Minute)
		if err := s.FinishAction(ctx, actionOf(t, s, inc, ActionTrip).ID, StateDone, outcome, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		since time.Time
		want  int
	}{{t0, 3}, {t0.Add(time.Minute), 2}, {t0.Add(40 * time.Minute), 1}, {t0.Add(41 * time.Minute), 0}} {
		if n, err := s.CountSuspensions(ctx, c.since); err != nil || n != c.want {
			t.Errorf("since %s: %d, %v; want %d", c.since, n, err, c.want)
		}
	}
}

func TestRearmLifecycle(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	end := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	if _, err := s.RearmFor(ctx, "AC1", "r", "daily:2026-11-24"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RearmFor before: %v", err)
	}
	r, err := s.BeginRearm(ctx, "AC1", "r", "daily:2026-11-24", "50", end)
	if err != nil || r.Generation != 2 || r.TriggerSID != "" || !r.ExpiresAt.Equal(end) {
		t.Fatalf("BeginRearm = %+v, %v", r, err)
	}
	if err := s.CompleteRearm(ctx, "AC1", "r", "daily:2026-11-24", 2, "UT1", "150.5"); err != nil {
		t.Fatal(err)
	}
	if err := s.CompleteRearm(ctx, "AC1", "r", "daily:2026-11-24", 3, "UT1", "1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("completing another generation: %v", err)
	}
	got, err := s.RearmFor(ctx, "AC1", "r", "daily:2026-11-24")
	if err != nil || got.Generation != 2 || got.TriggerSID != "UT1" || got.TriggerValue != "150.5" || got.Allowance != "50" {
		t.Fatalf("RearmFor = %+v, %v", got, err)
	}
	r, err = s.BeginRearm(ctx, "AC1", "r", "daily:2026-11-24", "60", end)
	if err != nil || r.Generation != 3 || r.TriggerSID != "" || r.Allowance != "60" {
		t.Fatalf("second BeginRearm = %+v, %v", r, err)
	}
	if _, err := s.BeginRearm(ctx, "AC1", "other", "monthly:2026-11", "5", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BeginRearm(ctx, "AC2", "r", "daily:2026-11-24", "5", end); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BeginRearm(ctx, "AC1", "", "p", "5", end); err == nil {
		t.Error("an empty rule was accepted")
	}

	open, err := s.OpenRearms(ctx, "AC1", end.Add(-time.Second))
	if err != nil || len(open) != 2 || open[0].Rule != "other" || open[1].Rule != "r" {
		t.Fatalf("OpenRearms = %+v, %v", open, err)
	}
	if open, _ := s.OpenRearms(ctx, "AC1", end); len(open) != 1 || open[0].Rule != "other" {
		t.Errorf("OpenRearms at the end of the day = %+v", open)
	}
	if n, _ := s.CountExpiredRearms(ctx, end.Add(-time.Second)); n != 0 {
		t.Errorf("expired before the end = %d", n)
	}
	if n, _ := s.CountExpiredRearms(ctx, end); n != 2 {
		t.Errorf("expired at the end = %d", n)
	}
	if n, err := s.MarkRearmsRestored(ctx, end); err != nil || n != 2 {
		t.Errorf("MarkRearmsRestored = %d, %v", n, err)
	}
	if n, _ := s.CountExpiredRearms(ctx, end.Add(time.Hour)); n != 0 {
		t.Errorf("expired after restore = %d", n)
	}
	// The exception stays for the record (and for late firings of its generation).
	if got, err := s.RearmFor(ctx, "AC1", "r", "daily:2026-11-24"); err != nil || got.RestoredAt.IsZero() || got.Generation != 3 {
		t.Errorf("restored exception = %+v, %v", got, err)
	}
}

func TestReactivations(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	a := record(t, s, firing("a", "r", "AC1", "p", t0)).Incident.ID
	b := record(t, s, firing("b", "r", "AC2", "p", t0)).Incident.ID
	r, err := s.RecordReactivation(ctx, Reactivation{IncidentID: a, AccountSID: "AC1", AccountName: "tenant",
		Via: ViaManual, Actor: "127.0.0.1:5000", Reason: "customer called", Rearmed: 1, Detail: "r", CreatedAt: t0})
	if err != nil || r.ID == 0 || !r.CreatedAt.Equal(t0) {
		t.Fatalf("RecordReactivation = %+v, %v", r, err)
	}
	if _, err := s.RecordReactivation(ctx, Reactivation{IncidentID: a, AccountSID: "AC1", Via: ViaScheduled, Actor: "x", Reason: "y"}); !errors.Is(err, ErrExists) {
		t.Errorf("second reactivation of an incident: %v", err)
	}
	if _, err := s.RecordReactivation(ctx, Reactivation{IncidentID: b, Via: "cron", Actor: "x", Reason: "y"}); err == nil {
		t.Error("a bad via was accepted")
	}
	if _, err := s.RecordReactivation(ctx, Reactivation{IncidentID: 999, AccountSID: "AC9", Via: ViaManual, Actor: "x", Reason: "y"}); err == nil {
		t.Error("a reactivation of no incident was accepted")
	}
	got, err := s.Reactivations(ctx, []int64{a, b})
	if err != nil || len(got) != 1 || got[a].Reason != "customer called" || got[a].Actor != "127.0.0.1:5000" || got[a].Via != ViaManual {
		t.Fatalf("Reactivations = %+v, %v", got, err)
	}
}
