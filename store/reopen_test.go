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
	ctx := context.Background()
	f := firing("tok-50", "r", "AC1", "daily:2026-11-24", t0)
	f.TriggerValue, f.CurrentValue = "50", "50.12"
	f.Actions = []string{ActionTrip, ActionEndCalls, "notify:ops"}
	res := record(t, s, f)
	id := res.Incident.ID
	why := "current value 50.12 is below the rule's threshold 100"
	if err := s.FinishAction(ctx, actionOf(t, s, id, ActionTrip).ID, StateDone, "skipped", why); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishAction(ctx, actionOf(t, s, id, ActionEndCalls).ID, StateDone, "skipped", "not suspended"); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishAction(ctx, actionOf(t, s, id, "notify:ops").ID, StateDone, "sent", ""); err != nil {
		t.Fatal(err)
	}
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
	f.Actions = []string{ActionTrip, "notify:other"} // ignored: the incident exists
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
	if got, w := want.Source+"/"+want.IdempotencyToken, SourceCallback+"/tok-50"; got != w {
		t.Errorf("source/token = %s, want the first firing's %s", got, w)
	}

	trip := actionOf(t, s, id, ActionTrip)
	if trip.State != StatePending || trip.Outcome != "" || !trip.NextAttemptAt.Equal(at) ||
		trip.Attempts != tripBefore.Attempts || trip.Detail != want.Detail || trip.Hold != HoldNone {
		t.Errorf("trip action = %+v", trip)
	}
	if ec := actionOf(t, s, id, ActionEndCalls); ec.State != StatePending || ec.Outcome != "" || ec.Detail != "" || !ec.NextAttemptAt.Equal(at) {
		t.Errorf("end_calls action = %+v", ec)
	}
	if n := actionOf(t, s, id, "notify:ops"); n.State != StateDone || n.Outcome != "sent" {
		t.Errorf("notify action = %+v, want it left as sent", n)
	}
	if got := kinds(actionsOf(t, s, id)); !reflect.DeepEqual(got, []string{ActionTrip, ActionEndCalls, "notify:ops"}) {
		t.Errorf("actions %v: none created", got)
	}

	// The trip is due at once and first; end_calls waits for it again.
	acts, err := s.PendingActions(ctx, at, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 1 || acts[0].ID != trip.ID {
		t.Errorf("pending = %+v, want the trip only", acts)
	}
	if n, _ := s.CountPendingActions(ctx); n != 2 {
		t.Errorf("CountPendingActions = %d, want 2", n)
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
	// A third token while the trip is pending again just attaches.
	g := f
	g.IdempotencyToken, g.CurrentValue, g.ReceivedAt = "tok-3", "130", at.Add(time.Minute)
	if r := record(t, s, g); r.Reopened || r.NewIncident || r.DuplicateToken || r.Incident.Firings != 3 || r.Incident.CurrentValue != "100.40" {
		t.Errorf("firing while pending = %+v", r)
	}

	// Ended skipped again, the next new token reopens it again, attempts still counted.
	if err := s.FinishAction(ctx, trip.ID, StateDone, "skipped", "again"); err != nil {
		t.Fatal(err)
	}
	g.IdempotencyToken, g.ReceivedAt = "tok-4", at.Add(2*time.Minute)
	if r := record(t, s, g); !r.Reopened || r.Incident.CurrentValue != "130" {
		t.Errorf("second reopen = %+v", r)
	}
	if trip := actionOf(t, s, id, ActionTrip); trip.State != StatePending || trip.Attempts != tripBefore.Attempts+1 {
		t.Errorf("trip after the second reopen = %+v", trip)
	}
}

// A suspension that failed for good is tried again by a later firing; a hold
// released by a person does not carry over to it.
func TestRecordFiringReopensFailedTrip(t *testing.T) {
	s := openFixed(t)
	ctx := context.Background()
	res := record(t, s, firing("tok1", "r", "AC1", "p", t0))
	trip := actionOf(t, s, res.Incident.ID, ActionTrip)
	if _, err := s.HoldAction(ctx, trip.ID, "held", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseHeld(ctx, t0, "released"); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryAction(ctx, trip.ID, t0, "503"); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishAction(ctx, trip.ID, StateFailed, "failed", "error 20008: cannot suspend"); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Hour)
	r := record(t, s, firing("tok2", "r", "AC1", "p", at))
	if !r.Reopened || r.Incident.State != StatePending || r.Incident.Outcome != "" ||
		!strings.Contains(r.Incident.Detail, "the trip had ended failed: error 20008") {
		t.Fatalf("result = %+v", r)
	}
	got := actionOf(t, s, res.Incident.ID, ActionTrip)
	if got.State != StatePending || got.Attempts != 2 || got.Hold != HoldNone || !got.NextAttemptAt.Equal(at) {
		t.Errorf("trip action = %+v", got)
	}
	if acts, _ := s.PendingActions(ctx, at, 0); len(acts) != 1 || acts[0].ID != trip.ID {
		t.Errorf("pending = %+v", acts)
	}
	// A notification not sent yet waits for the new outcome.
	if n := actionOf(t, s, res.Incident.ID, "notify:ops"); n.State != StatePending {
		t.Errorf("notify = %+v", n)
	}
}

// Any other end of the trip, or a trip still pending, keeps the old
// behaviour: a new token attaches and changes only Firings and UpdatedAt.
func TestRecordFiringDoesNotReopen(t *testing.T) {
	for _, end := range []struct{ state, outcome string }{
		{StatePending, ""},
		{StateDone, "suspended"},
		{StateDone, "already_suspended"},
		{StateDone, "dry_run"},
		{StateDone, "notified"},
	} {
		t.Run(end.state+"/"+end.outcome, func(t *testing.T) {
			s := openFixed(t)
			f := firing("tok1", "r", "AC1", "p", t0)
			f.Actions = []string{ActionTrip, ActionEndCalls}
			res := record(t, s, f)
			id := res.Incident.ID
			if end.state != StatePending {
				for _, k := range []string{ActionTrip, ActionEndCalls} {
					outcome := end.outcome
					if k == ActionEndCalls {
						outcome = "skipped"
					}
					if err := s.FinishAction(context.Background(), actionOf(t, s, id, k).ID, end.state, outcome, "x"); err != nil {
						t.Fatal(err)
					}
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
	if trip := actionOf(t, s, id, ActionTrip); trip.State != StatePending {
		t.Errorf("trip = %+v", trip)
	}
}

// In one batch: the reopen survives a later firing's failure (its own
// savepoint), and the later firings see the reopened incident.
func TestBatchReopen(t *testing.T) {
	s := openFixed(t)
	id := skippedIncident(t, s).Incident.ID
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []string{ActionTrip, ""}
	at := t0.Add(time.Hour)
	batch := []*recordReq{
		newReq(t, firing("tok-x", "r", "AC1", "daily:2026-11-24", at)),
		newReq(t, bad),
		newReq(t, firing("tok-y", "r", "AC1", "daily:2026-11-24", at)),
		newReq(t, firing("tok-x", "r", "AC1", "daily:2026-11-24", at)),
	}
	s.runBatch(batch)
	if r := batch[0]; r.err != nil || !r.res.Reopened {
		t.Errorf("first: %+v, %v", r.res, r.err)
	}
	if batch[1].err == nil {
		t.Error("bad firing: no error")
	}
	if r := batch[2]; r.err != nil || r.res.Reopened || r.res.Incident.Firings != 3 || r.res.Incident.State != StatePending {
		t.Errorf("second new token: %+v, %v", r.res, r.err)
	}
	if r := batch[3]; r.err != nil || !r.res.DuplicateToken || r.res.Reopened {
		t.Errorf("repeat: %+v, %v", r.res, r.err)
	}
	if trip := actionOf(t, s, id, ActionTrip); trip.State != StatePending || !trip.NextAttemptAt.Equal(at) {
		t.Errorf("trip = %+v", trip)
	}
}

// In a mass event the notifications of the incidents opened so far are due
// before a newer incident's trip; the trip must still come first, so the
// workers start the suspension before they start on notifications.
func TestPendingActionsTripsBeforeNotifications(t *testing.T) {
	s := openFixed(t)
	ctx := context.Background()
	var olds []int64
	for i := 0; i < 30; i++ {
		f := firing(fmt.Sprint("old-", i), "r", fmt.Sprint("AC-old-", i), "p", t0.Add(time.Duration(i)*time.Second))
		f.Actions = []string{ActionTrip, ActionEndCalls, "notify:ops", "notify:sms"}
		id := record(t, s, f).Incident.ID
		olds = append(olds, id)
		if err := s.FinishAction(ctx, actionOf(t, s, id, ActionTrip).ID, StateDone, "suspended", ""); err != nil {
			t.Fatal(err)
		}
	}
	// A trip that failed an attempt and is due again later than the
	// notifications, a held trip and a released one.
	retried := record(t, s, firing("retried", "r", "AC-retried", "p", t0.Add(time.Minute))).Incident.ID
	if err := s.RetryAction(ctx, actionOf(t, s, retried, ActionTrip).ID, t0.Add(9*time.Minute), "503"); err != nil {
		t.Fatal(err)
	}
	held := record(t, s, firing("held", "r", "AC-held", "p", t0.Add(2*time.Minute))).Incident.ID
	if _, err := s.HoldAction(ctx, actionOf(t, s, held, ActionTrip).ID, "held", []string{"guard:ops"}); err != nil {
		t.Fatal(err)
	}
	newer := record(t, s, firing("new", "r", "AC-new", "p", t0.Add(10*time.Minute))).Incident.ID
	now := t0.Add(10 * time.Minute)

	acts, err := s.PendingActions(ctx, now, 4)
	if err != nil {
		t.Fatal(err)
	}
	type ka struct {
		incident int64
		kind     string
	}
	var got []ka
	for _, a := range acts {
		got = append(got, ka{a.IncidentID, a.Kind})
	}
	// Before: the first old incident's end_calls and notifications (t0),
	// every follow-up and the guard's page, then the trips (t0+9m, t0+10m).
	want := []ka{{retried, ActionTrip}, {newer, ActionTrip}, {olds[0], ActionEndCalls}, {olds[0], "notify:ops"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PendingActions(limit 4)\n got %v\nwant %v", got, want)
	}

	// All of them: the two trips, then the rest oldest first; the held
	// trip is not there until released, and then it is first among equals.
	if _, err := s.ReleaseHeld(ctx, now, "released"); err != nil {
		t.Fatal(err)
	}
	all, err := s.PendingActions(ctx, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3+1+30*3 {
		t.Fatalf("%d pending actions, want %d", len(all), 3+1+30*3)
	}
	trips := 0
	for i, a := range all {
		if a.Kind == ActionTrip {
			if i != trips {
				t.Fatalf("trip action at %d after other kinds: %v", i, kinds(all))
			}
			trips++
		}
		if i > 0 && (a.Kind == ActionTrip) == (all[i-1].Kind == ActionTrip) {
			p := all[i-1]
			if a.NextAttemptAt.Before(p.NextAttemptAt) || (a.NextAttemptAt.Equal(p.NextAttemptAt) && a.ID < p.ID) {
				t.Errorf("out of order at %d: %+v after %+v", i, a, p)
			}
		}
	}
	if trips != 3 {
		t.Errorf("%d trips, want 3", trips)
	}
}

// The partial index actions_pending still serves PendingActions: a range
// search on next_attempt_at, not a scan of every action ever run.
func TestPendingQueryPlan(t *testing.T) {
	s, _ := openTest(t)
	rows, err := s.r.Query("EXPLAIN QUERY PLAN "+pendingQuery, int64(0), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var (
			id, parent, notused int
			detail              string
		)
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	if !strings.Contains(text, "SEARCH actions USING INDEX actions_pending (next_attempt_at<?)") || strings.Contains(text, "SCAN actions") {
		t.Errorf("query plan:\n%s", text)
	}
	t.Logf("query plan:\n%s", text)
}
