package store

import (
	"context"
	"reflect"
	"testing"
	"time"
)

// A claimed trip is created with the claim's due time and detail, is returned
// as stored, and is left alone by executor passes until the claim is due.
// The incident's other actions are due at once (and, as always, wait for the
// trip's outcome).
func TestRecordFiringClaimsTheTrip(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	until := t0.Add(time.Minute)
	f := firing("IT1", "r", "AC1", "daily:2026-11-24", t0)
	f.Claim = &Claim{NextAttemptAt: until, Detail: "claimed by the receiving process"}
	res := record(t, s, f)
	if !res.NewIncident || res.Trip.ID == 0 {
		t.Fatalf("want a new incident and its trip, got %+v", res)
	}
	stored := actionOf(t, s, res.Incident.ID, ActionTrip)
	if !reflect.DeepEqual(stored, res.Trip) {
		t.Fatalf("returned trip differs from the stored one:\n got  %+v\n want %+v", res.Trip, stored)
	}
	if !stored.NextAttemptAt.Equal(until) || stored.Detail != "claimed by the receiving process" || stored.State != StatePending {
		t.Fatalf("claimed trip stored as %+v", stored)
	}
	if n := actionOf(t, s, res.Incident.ID, "notify:ops"); !n.NextAttemptAt.Equal(t0) || n.Detail != "" {
		t.Fatalf("the notification must be due at once, unclaimed: %+v", n)
	}
	due, err := s.PendingActions(ctx, until.Add(-time.Nanosecond), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 0 {
		t.Fatalf("before the claim is due nothing is handed out: %+v", due)
	}
	due, err = s.PendingActions(ctx, until, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].ID != res.Trip.ID {
		t.Fatalf("once due the claimed trip is handed out: %+v", due)
	}

	// A repeat (same token) or another firing of the incident creates no trip.
	if res := record(t, s, f); res.Trip.ID != 0 || !res.DuplicateToken {
		t.Fatalf("repeat: %+v", res)
	}
	g := firing("IT2", "r", "AC1", "daily:2026-11-24", t0.Add(time.Second))
	g.Claim = f.Claim
	if res := record(t, s, g); res.Trip.ID != 0 || res.NewIncident {
		t.Fatalf("second firing of the incident: %+v", res)
	}
	if got := actionOf(t, s, res.Incident.ID, ActionTrip); !reflect.DeepEqual(got, stored) {
		t.Fatalf("a later claim changed the trip: %+v", got)
	}
}

// Without a claim the trip is due at once and still returned.
func TestRecordFiringReturnsUnclaimedTrip(t *testing.T) {
	s, _ := openTest(t)
	res := record(t, s, firing("IT1", "r", "AC1", "daily:2026-11-24", t0))
	if res.Trip.ID == 0 || !res.Trip.NextAttemptAt.Equal(t0) || res.Trip.Detail != "" {
		t.Fatalf("trip %+v", res.Trip)
	}
	if got := actionOf(t, s, res.Incident.ID, ActionTrip); !reflect.DeepEqual(got, res.Trip) {
		t.Fatalf("returned %+v, stored %+v", res.Trip, got)
	}
}

func TestRecordFiringRejectsClaimWithoutDueTime(t *testing.T) {
	s, _ := openTest(t)
	f := firing("IT1", "r", "AC1", "daily:2026-11-24", t0)
	f.Claim = &Claim{Detail: "x"}
	_, err := s.RecordFiring(context.Background(), f)
	if err == nil || err.Error() != `store: record firing "IT1": invalid firing: a claim without NextAttemptAt` {
		t.Fatalf("err = %v", err)
	}
}
