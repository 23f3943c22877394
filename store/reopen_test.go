package store

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// snapshot is everything RecordFiring may change about an incident.
type snapshot struct {
	Incident Incident
	Actions  []Action
	Firings  int
}

// openFixed is openTest with the store's own clock (updated_at of finished
// actions) fixed at t0, before every firing of these tests.
func openFixed(t *testing.T) *SQLite {
	t.Helper()
	s, _ := openTest(t)
	s.SetClock(func() time.Time { return t0 })
	return s
}

func snap(t *testing.T, s *SQLite, id int64) snapshot {
	t.Helper()
	return snapshot{incident(t, s, id), actionsOf(t, s, id), countRows(t, s, "firings")}
}

// skippedIncident records the $50 firing of the scenario (trip, end_calls and
// a notification) and ends it as the breaker does when a reload raised the
// threshold before the trip ran: trip skipped, end_calls skipped (not
// suspended), the notification sent.
func skippedIncident(t *testing.T, s *SQLite) RecordResult {
	t.Helper()
	f := firing("tok-50", "r", "AC1", "daily:2026-11-24", t0)
	f.TriggerValue, f.CurrentValue = "50", "50.12"
	f.Actions = []ActionKind{ActionTrip, ActionEndCalls, NotifyKind("ops")}
	res := record(t, s, f)
	id := res.Incident.ID
	why := "current value 50.12 is below the rule's threshold 100"
	complete(t, s, actionOf(t, s, id, ActionTrip).ID, Completion{State: ActionDone, Outcome: OutcomeSkipped, Detail: why, Attempted: true})
	complete(t, s, actionOf(t, s, id, ActionEndCalls).ID, Completion{State: ActionDone, Outcome: OutcomeSkipped, Detail: "not suspended", Attempted: true})
	complete(t, s, actionOf(t, s, id, NotifyKind("ops")).ID, Completion{State: ActionDone, Outcome: OutcomeSent, Attempted: true})
	if inc := incident(t, s, id); inc.State != StateDone || inc.Outcome != "skipped" || inc.Detail != why {
		t.Fatalf("set-up: incident = %+v", inc)
	}
	return res
}

// The $100 trigger fires later the same day with a new token: the incident
// is put back to work on that firing's values.
func TestRecordFiringReopensSkippedTrip(t *testing.T) {
	s := openFixed(t)
	ctx := context.Background()
	first := skippedIncident(t, s)
	id := first.Incident.ID
	before := snap(t, s, id)
	tripBefore := actionOf(t, s, id, ActionTrip)

	at := t0.Add(5 * time.Hour)
	f := firing("tok-100", "r", "AC1", "daily:2026-11-24", at)
	f.AccountName = "renamed"
	f.UsageTriggerSID = "UTnew"
	f.TriggerValue, f.CurrentValue = "100", "100.40"
	f.DateFired = "Tue, 24 Nov 2026 15:00:00 +0000"
	f.Actions = []ActionKind{ActionTrip, NotifyKind("other")} // ignored: the incident exists
	res := record(t, s, f)
	if !res.Reopened || res.NewIncident || res.DuplicateToken {
		t.Fatalf("result = %+v, want Reopened only", res)
	}
	want := before.Incident
	want.AccountName, want.UsageTriggerSID = "renamed", "UTnew"
	want.TriggerValue, want.CurrentValue, want.DateFired = "100", "100.40", f.DateFired
	want.State, want.Outcome = StatePending, ""
	want.Detail = "reopened by a new firing (current value 100.40); the trip had ended skipped: current value 50.12 is below the rule's threshold 100"
	want.Firings = 2
	want.UpdatedAt = at
	if res.Incident != want {
		t.Errorf("reopened incident\n got %+v\nwant %+v", res.Incident, want)
	}
	if got := incident(t, s, id); got != want {
		t.Errorf("stored incident\n got %+v\nwant %+v", got, want)
	}
	if got, w := string(want.Source)+"/"+want.IdempotencyToken, string(SourceCallback)+"/tok-50"; got != w {
		t.Errorf("source/token = %s, want the first firing's %s", got, w)
	}

	trip := actionOf(t, s, id, ActionTrip)
	if trip.State != ActionAvailable || trip.Outcome != "" || !trip.NextAttemptAt.Equal(at) || tripBefore.Attempts != 1 ||
		trip.Attempts != tripBefore.Attempts || trip.Detail != want.Detail || trip.Released || trip.Owner != "" || !trip.LeaseUntil.IsZero() {
		t.Errorf("trip action = %+v", trip)
	}
	if ec := actionOf(t, s, id, ActionEndCalls); ec.State != ActionAvailable || ec.Outcome != "" || ec.Detail != "" || !ec.NextAttemptAt.Equal(at) {
		t.Errorf("end_calls action = %+v", ec)
	}
	if n := actionOf(t, s, id, NotifyKind("ops")); n.State != ActionDone || n.Outcome != OutcomeSent {
		t.Errorf("notify action = %+v, want it left as sent", n)
	}
	if got := kinds(actionsOf(t, s, id)); !reflect.DeepEqual(got, []ActionKind{ActionTrip, ActionEndCalls, NotifyKind("ops")}) {
		t.Errorf("actions %v: none created", got)
	}

	// The trip is due at once and first; end_calls waits for it again.
	if n := pending(t, s); n != 2 {
		t.Errorf("CountPendingActions = %d, want 2", n)
	}
	if acts := claim(t, s, "w", at.Add(time.Hour), at, 0); len(acts) != 1 || acts[0].ID != trip.ID {
		t.Errorf("claimed = %+v, want the trip only", acts)
	}

	// Repeats of either token change nothing, now or later.
	after := snap(t, s, id)
	for _, tok := range []string{"tok-100", "tok-50"} {
		g := f
		g.IdempotencyToken = tok
		g.ReceivedAt = at.Add(time.Hour)
		if r := record(t, s, g); !r.DuplicateToken || r.Reopened || r.NewIncident {
			t.Errorf("repeat of %s = %+v", tok, r)
		}
		if got := snap(t, s, id); !reflect.DeepEqual(got, after) {
			t.Errorf("repeat of %s changed\n %+v\nto %+v", tok, after, got)
		}
	}
	// A third token while the trip runs again just attaches.
	g := f
	g.IdempotencyToken, g.CurrentValue, g.ReceivedAt = "tok-3", "130", at.Add(time.Minute)
	if r := record(t, s, g); r.Reopened || r.NewIncident || r.DuplicateToken || r.Incident.Firings != 3 || r.Incident.CurrentValue != "100.40" {
		t.Errorf("firing while pending = %+v", r)
	}

	// Ended skipped again, the next new token reopens it again, attempts still counted.
	if _, err := s.CompleteAction(ctx, trip.ID, "w", Completion{State: ActionDone, Outcome: OutcomeSkipped, Detail: "again", Attempted: true}); err != nil {
		t.Fatal(err)
	}
	g.IdempotencyToken, g.ReceivedAt = "tok-4", at.Add(2*time.Minute)
	if r := record(t, s, g); !r.Reopened || r.Incident.CurrentValue != "130" {
		t.Errorf("second reopen = %+v", r)
	}
	if trip := actionOf(t, s, id, ActionTrip); trip.State != ActionAvailable || trip.Attempts != tripBefore.Attempts+1 {
		t.Errorf("trip after the second reopen = %+v", trip)
	}
}

// A suspension that failed for good is tried again by a later firing; a
// release by a person does not carry over to it; its attempts and the time
// of its last write are kept.
func TestRecordFiringReopensFailedTrip(t *testing.T) {
	s := openFixed(t)
	ctx := context.Background()
	res := record(t, s, firing("tok1", "r", "AC1", "p", t0))
	trip := actionOf(t, s, res.Incident.ID, ActionTrip)
	complete(t, s, trip.ID, Completion{State: ActionHeld, Detail: "held"})
	if _, err := s.ReleaseHeld(ctx, t0, "released"); err != nil {
		t.Fatal(err)
	}
	complete(t, s, trip.ID, Completion{State: ActionAvailable, NextAttemptAt: t0, Detail: "503", Attempted: true, WriteSentAt: t0})
	complete(t, s, trip.ID, Completion{State: ActionFailed, Outcome: OutcomeFailed, Detail: "error 20008: cannot suspend", Attempted: true})
	if a := actionOf(t, s, res.Incident.ID, ActionTrip); !a.Released {
		t.Fatalf("set-up: %+v", a)
	}
	at := t0.Add(time.Hour)
	r := record(t, s, firing("tok2", "r", "AC1", "p", at))
	if !r.Reopened || r.Incident.State != StatePending || r.Incident.Outcome != "" ||
		!strings.Contains(r.Incident.Detail, "the trip had ended failed: error 20008") || r.Trip.ID != 0 {
		t.Fatalf("result = %+v", r)
	}
	got := actionOf(t, s, res.Incident.ID, ActionTrip)
	if got.State != ActionAvailable || got.Attempts != 2 || got.Released || !got.NextAttemptAt.Equal(at) || !got.WriteSentAt.Equal(t0) {
		t.Errorf("trip action = %+v", got)
	}
	if acts := claim(t, s, "w", at.Add(time.Hour), at, 0); len(acts) != 1 || acts[0].ID != trip.ID {
		t.Errorf("claimed = %+v", acts)
	}
	// A notification not sent yet waits for the new outcome.
	if n := actionOf(t, s, res.Incident.ID, NotifyKind("ops")); n.State != ActionAvailable {
		t.Errorf("notify = %+v", n)
	}
}

// Any other end of the trip, or a trip still to finish (available, running
// or held), keeps the old behaviour: a new token attaches and changes only
// Firings and UpdatedAt.
func TestRecordFiringDoesNotReopen(t *testing.T) {
	for _, end := range []struct {
		state   ActionState
		outcome Outcome
	}{
		{ActionAvailable, ""},
		{ActionRunning, ""},
		{ActionHeld, ""},
		{ActionDone, OutcomeSuspended},
		{ActionDone, OutcomeAlreadySuspended},
		{ActionDone, OutcomeDryRun},
		{ActionDone, OutcomeNotified},
	} {
		t.Run(string(end.state)+"/"+string(end.outcome), func(t *testing.T) {
			s := openFixed(t)
			f := firing("tok1", "r", "AC1", "p", t0)
			f.Actions = []ActionKind{ActionTrip, ActionEndCalls}
			res := record(t, s, f)
			id := res.Incident.ID
			switch end.state {
			case ActionRunning:
				take(t, s, res.Trip.ID, testOwner)
			case ActionHeld:
				complete(t, s, res.Trip.ID, Completion{State: ActionHeld, Detail: "held"})
			case ActionDone:
				for _, k := range []ActionKind{ActionTrip, ActionEndCalls} {
					outcome := end.outcome
					if k == ActionEndCalls {
						outcome = OutcomeSkipped
					}
					complete(t, s, actionOf(t, s, id, k).ID, Completion{State: end.state, Outcome: outcome, Detail: "x"})
				}
			}
			before := snap(t, s, id)
			g := firing("tok2", "r", "AC1", "p", t0.Add(time.Hour))
			g.CurrentValue = "999"
			r := record(t, s, g)
			if r.Reopened || r.NewIncident || r.DuplicateToken {
				t.Fatalf("result = %+v", r)
			}
			want := before
			want.Incident.Firings = 2
			want.Incident.UpdatedAt = t0.Add(time.Hour)
			want.Firings = 2
			if got := snap(t, s, id); !reflect.DeepEqual(got, want) {
				t.Errorf("changed more than Firings and UpdatedAt:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// Concurrent firings with new tokens (group-committed into batches) reopen
// the incident exactly once; the others attach to the reopened incident.
func TestRecordFiringReopenConcurrent(t *testing.T) {
	s := openFixed(t)
	id := skippedIncident(t, s).Incident.ID
	const n = 40
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		reopened int
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			f := firing(fmt.Sprint("tok-new-", i%(n/2)), "r", "AC1", "daily:2026-11-24", t0.Add(time.Hour))
			res, err := s.RecordFiring(context.Background(), f)
			if err != nil {
				t.Error(err)
				return
			}
			if res.Reopened {
				mu.Lock()
				reopened++
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if reopened != 1 {
		t.Errorf("%d firings reopened the incident, want 1", reopened)
	}
	if inc := incident(t, s, id); inc.State != StatePending || inc.Firings != 1+n/2 {
		t.Errorf("incident = %+v", inc)
	}
	if trip := actionOf(t, s, id, ActionTrip); trip.State != ActionAvailable {
		t.Errorf("trip = %+v", trip)
	}
}

// In one batch: the reopen survives a later firing's failure (its own
// savepoint), and the later firings see the reopened incident.
func TestBatchReopen(t *testing.T) {
	s := openFixed(t)
	id := skippedIncident(t, s).Incident.ID
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []ActionKind{ActionTrip, ""}
	at := t0.Add(time.Hour)
	batch := []*writeOp{
		recordOp(t, s, firing("tok-x", "r", "AC1", "daily:2026-11-24", at)),
		recordOp(t, s, bad),
		recordOp(t, s, firing("tok-y", "r", "AC1", "daily:2026-11-24", at)),
		recordOp(t, s, firing("tok-x", "r", "AC1", "daily:2026-11-24", at)),
	}
	s.runBatch(batch)
	if r := recorded(batch[0]); batch[0].err != nil || !r.Reopened {
		t.Errorf("first: %+v, %v", r, batch[0].err)
	}
	if batch[1].err == nil {
		t.Error("bad firing: no error")
	}
	if r := recorded(batch[2]); batch[2].err != nil || r.Reopened || r.Incident.Firings != 3 || r.Incident.State != StatePending {
		t.Errorf("second new token: %+v, %v", r, batch[2].err)
	}
	if r := recorded(batch[3]); batch[3].err != nil || !r.DuplicateToken || r.Reopened {
		t.Errorf("repeat: %+v, %v", r, batch[3].err)
	}
	if trip := actionOf(t, s, id, ActionTrip); trip.State != ActionAvailable || !trip.NextAttemptAt.Equal(at) {
		t.Errorf("trip = %+v", trip)
	}
}

// In a mass event the notifications of the incidents opened so far are due
// before a newer incident's trip; the trip must still come first, so the
// workers start the suspension before they start on notifications.
func TestClaimActionsTripsBeforeNotifications(t *testing.T) {
	s := openFixed(t)
	ctx := context.Background()
	var olds []int64
	for i := 0; i < 30; i++ {
		f := firing(fmt.Sprint("old-", i), "r", fmt.Sprint("AC-old-", i), "p", t0.Add(time.Duration(i)*time.Second))
		f.Actions = []ActionKind{ActionTrip, ActionEndCalls, NotifyKind("ops"), NotifyKind("sms")}
		id := record(t, s, f).Incident.ID
		olds = append(olds, id)
		complete(t, s, actionOf(t, s, id, ActionTrip).ID, Completion{State: ActionDone, Outcome: OutcomeSuspended})
	}
	// A trip that failed an attempt and is due again later than the
	// notifications, a held trip (with the guard's page) and a newer trip.
	retried := record(t, s, firing("retried", "r", "AC-retried", "p", t0.Add(time.Minute))).Incident.ID
	complete(t, s, actionOf(t, s, retried, ActionTrip).ID, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(9 * time.Minute), Detail: "503", Attempted: true})
	held := record(t, s, firing("held", "r", "AC-held", "p", t0.Add(2*time.Minute))).Incident.ID
	if done := complete(t, s, actionOf(t, s, held, ActionTrip).ID, Completion{State: ActionHeld, Detail: "held",
		Pages: []ActionKind{GuardPageKind("ops")}}); !done.Paged {
		t.Fatal("set-up: no page")
	}
	newer := record(t, s, firing("new", "r", "AC-new", "p", t0.Add(10*time.Minute))).Incident.ID
	now := t0.Add(10 * time.Minute)

	got := kas(claim(t, s, "w", now.Add(time.Hour), now, 4))
	// Before: the first old incident's end_calls and notifications (t0),
	// every follow-up and the guard's page, then the trips (t0+9m, t0+10m).
	want := []ka{{retried, ActionTrip}, {newer, ActionTrip}, {olds[0], ActionEndCalls}, {olds[0], NotifyKind("ops")}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClaimActions(limit 4)\n got %v\nwant %v", got, want)
	}

	// All the others: the held trip is not there until released, and then
	// it is first; then the rest oldest first.
	if _, err := s.ReleaseHeld(ctx, now, "released"); err != nil {
		t.Fatal(err)
	}
	all := claim(t, s, "w", now.Add(time.Hour), now, 0)
	if len(all) != 1+1+30*3-2 {
		t.Fatalf("%d claimed, want %d", len(all), 1+1+30*3-2)
	}
	if all[0].IncidentID != held || all[0].Kind != ActionTrip {
		t.Errorf("first claimed %+v, want the released trip", all[0])
	}
	for i, a := range all[1:] {
		if a.Kind == ActionTrip {
			t.Fatalf("trip action after other kinds: %v", kinds(all))
		}
		if p := all[i]; i > 0 && (a.NextAttemptAt.Before(p.NextAttemptAt) || (a.NextAttemptAt.Equal(p.NextAttemptAt) && a.ID < p.ID)) {
			t.Errorf("out of order at %d: %+v after %+v", i+1, a, p)
		}
	}
}
