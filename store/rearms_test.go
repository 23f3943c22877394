package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func kinds(acts []Action) []ActionKind {
	out := []ActionKind{}
	for _, a := range acts {
		out = append(out, a.Kind)
	}
	return out
}
func TestProgressAndIncidentActions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	a := record(t, s, firing("a", "r", "AC1", "p", t0))
	b := record(t, s, firing("b", "r", "AC2", "p", t0))
	n := actionOf(t, s, a.Incident.ID, NotifyKind("ops"))
	// A notification that reached some recipients before it must try again.
	complete(t, s, n.ID, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Minute), Attempted: true,
		Detail: "sms: 1 of 2 sent", Progress: "+15550001"})
	got, err := s.IncidentActions(ctx, []int64{a.Incident.ID, b.Incident.ID, 999})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[a.Incident.ID]) != 2 || len(got[b.Incident.ID]) != 2 {
		t.Fatalf("IncidentActions = %+v", got)
	}
	if p := got[a.Incident.ID][1]; p.Kind != NotifyKind("ops") || p.Progress != "+15550001" || p.Attempts != 1 {
		t.Errorf("progress = %+v", p)
	}
	if !reflect.DeepEqual(got[b.Incident.ID], actionsOf(t, s, b.Incident.ID)) {
		t.Errorf("IncidentActions differs from Actions: %+v", got[b.Incident.ID])
	}
	// The claim hands the progress back to the next attempt (once the trip is done).
	complete(t, s, a.Trip.ID, Completion{State: ActionDone, Outcome: OutcomeSuspended})
	acts := claim(t, s, "w", t0.Add(time.Hour), t0.Add(time.Minute), 0)
	var again Action
	for _, x := range acts {
		if x.ID == n.ID {
			again = x
		}
	}
	if again.Progress != "+15550001" {
		t.Errorf("claimed notification = %+v", again)
	}
	if got, err := s.IncidentActions(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("IncidentActions(nil) = %+v, %v", got, err)
	}
}
func TestGuardHoldAndRelease(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	var incs []int64
	for i := 0; i < 3; i++ {
		incs = append(incs, record(t, s, firing(fmt.Sprint("t", i), "r", fmt.Sprint("AC", i), "p", t0)).Incident.ID)
	}
	pages := []ActionKind{GuardPageKind("ops"), GuardPageKind("sms")}
	hold := Completion{State: ActionHeld, Detail: "held by the guard", Pages: pages}
	if done := complete(t, s, actionOf(t, s, incs[0], ActionTrip).ID, hold); !done.Paged {
		t.Fatalf("first hold did not page")
	}
	trip1 := actionOf(t, s, incs[1], ActionTrip).ID
	if done := complete(t, s, trip1, hold); done.Paged {
		t.Fatalf("second hold paged")
	}
	if _, err := s.CompleteAction(ctx, trip1, testOwner, hold); !errors.Is(err, ErrNotFound) {
		t.Errorf("holding a held action: %v", err)
	}
	if n, _ := s.CountHeld(ctx); n != 2 {
		t.Errorf("CountHeld = %d", n)
	}
	if got := kinds(actionsOf(t, s, incs[0])); !reflect.DeepEqual(got, []ActionKind{ActionTrip, NotifyKind("ops"), GuardPageKind("ops"), GuardPageKind("sms")}) {
		t.Errorf("paging incident's actions: %v", got)
	}
	if len(actionsOf(t, s, incs[1])) != 2 {
		t.Errorf("second held incident got pages too")
	}
	if inc := incident(t, s, incs[0]); inc.State != StatePending || inc.Detail != "held by the guard" {
		t.Errorf("held incident = %+v", inc)
	}
	held := actionOf(t, s, incs[0], ActionTrip)
	if held.State != ActionHeld || held.Owner != "" || !held.LeaseUntil.IsZero() || held.Released {
		t.Errorf("held action = %+v", held)
	}
	// Held trips are never claimed (nor the notifications waiting for them); the pages are.
	acts := claim(t, s, "w", t0.Add(2000*time.Hour), t0.Add(1000*time.Hour), 0)
	if got := kinds(acts); !reflect.DeepEqual(got, []ActionKind{ActionTrip, GuardPageKind("ops"), GuardPageKind("sms")}) {
		t.Errorf("claimed while held: %v", got)
	}
	if n := pending(t, s); n != 6 { // incs[2]'s trip+notify, 2 notifies of held incidents, 2 pages
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
	if !a.Released || !a.NextAttemptAt.Equal(t0.Add(time.Hour)) || a.State != ActionAvailable || a.Detail != "released" {
		t.Errorf("released action = %+v", a)
	}
	if inc := incident(t, s, incs[1]); inc.Detail != "released" || inc.State != StatePending {
		t.Errorf("released incident = %+v", inc)
	}
	if n, _ := s.ReleaseHeld(ctx, t0, "again"); n != 0 {
		t.Errorf("second release = %d", n)
	}
	// The released trip is claimed and stays released through a retry.
	acts = claim(t, s, "w", t0.Add(2*time.Hour), t0.Add(time.Hour), 0)
	if got := kas(acts); !reflect.DeepEqual(got, []ka{{incs[0], ActionTrip}, {incs[1], ActionTrip}}) {
		t.Fatalf("claimed after release: %v", got)
	}
	if !acts[0].Released {
		t.Errorf("claimed released action = %+v", acts[0])
	}
	if _, err := s.CompleteAction(ctx, acts[0].ID, "w", Completion{State: ActionAvailable, NextAttemptAt: t0, Attempted: true}); err != nil {
		t.Fatal(err)
	}
	if a := actionByID(t, s, acts[0].ID); !a.Released {
		t.Errorf("retry lost the release: %+v", a)
	}
	// After a release, the next hold pages again (a new episode).
	inc := record(t, s, firing("t9", "r", "AC9", "p", t0)).Incident.ID
	if done := complete(t, s, actionOf(t, s, inc, ActionTrip).ID, hold); !done.Paged {
		t.Error("a hold after a release did not page")
	}
	// A hold without pages pages nobody.
	inc = record(t, s, firing("t10", "r", "AC10", "p", t0)).Incident.ID
	if n, _ := s.ReleaseHeld(ctx, t0, "r"); n != 1 {
		t.Fatalf("release = %d", n)
	}
	if done := complete(t, s, actionOf(t, s, inc, ActionTrip).ID, Completion{State: ActionHeld}); done.Paged {
		t.Error("a hold without pages paged")
	}
}
func TestCountSuspensions(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	clock := t0
	s.SetClock(func() time.Time { return clock })
	var incs []int64
	for i := 0; i < 4; i++ {
		inc := record(t, s, firing(fmt.Sprint("t", i), "r", fmt.Sprint("AC", i%3), fmt.Sprint("p", i), t0)).Incident.ID
		incs = append(incs, inc)
		outcome := OutcomeSuspended
		if i == 3 {
			outcome = OutcomeAlreadySuspended
		}
		clock = t0.Add(time.Duration(i) * 20 * time.Minute)
		complete(t, s, actionOf(t, s, inc, ActionTrip).ID, Completion{State: ActionDone, Outcome: outcome})
	}
	// A notification's outcome is not a suspension.
	complete(t, s, actionOf(t, s, incs[0], NotifyKind("ops")).ID, Completion{State: ActionDone, Outcome: OutcomeSuspended})
	for _, c := range []struct {
		since time.Time
		want  int
	}{{t0, 3}, {t0.Add(time.Minute), 2}, {t0.Add(40 * time.Minute), 1}, {t0.Add(41 * time.Minute), 0}} {
		if n, err := s.CountSuspensions(ctx, c.since); err != nil || n != c.want {
			t.Errorf("since %s: %d, %v; want %d", c.since, n, err, c.want)
		}
	}
	// Incidents 0 (AC0, t0) and 3 (AC0, already suspended), 1 (AC1, t0+20m), 2 (AC2, t0+40m).
	for _, c := range []struct {
		account string
		except  int64
		since   time.Time
		want    bool
	}{
		{"AC0", 0, t0, true},
		{"AC0", incs[0], t0, false}, // its own suspension does not count; the other one was "already"
		{"AC0", incs[3], t0, true},
		{"AC0", 0, t0.Add(time.Nanosecond), false},
		{"AC1", incs[0], t0.Add(20 * time.Minute), true},
		{"AC1", incs[1], t0, false},
		{"AC2", 0, t0.Add(41 * time.Minute), false},
		{"AC9", 0, t0, false},
	} {
		if got, err := s.SuspendedSince(ctx, c.account, c.except, c.since); err != nil || got != c.want {
			t.Errorf("SuspendedSince(%s, except %d, %s) = %v, %v; want %v", c.account, c.except, c.since, got, err, c.want)
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
