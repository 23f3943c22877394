package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestNoteAction(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	res, err := s.RecordFiring(ctx, Firing{Source: SourceCallback, IdempotencyToken: "tok", Rule: "r", AccountSID: "AC1",
		Period: "daily:2026-11-24", Action: "suspend", ReceivedAt: now, Actions: []string{ActionTrip}})
	if err != nil {
		t.Fatal(err)
	}
	acts, err := s.Actions(ctx, res.Incident.ID)
	if err != nil || len(acts) != 1 {
		t.Fatalf("%+v %v", acts, err)
	}
	later := now.Add(time.Minute)
	if err := s.NoteAction(ctx, acts[0].ID, later, "write sent"); err != nil {
		t.Fatal(err)
	}
	acts, _ = s.Actions(ctx, res.Incident.ID)
	if a := acts[0]; a.Attempts != 0 || a.Detail != "write sent" || !a.NextAttemptAt.Equal(later) || a.State != StatePending {
		t.Fatalf("action = %+v", a)
	}
	if inc, _ := s.Incident(ctx, res.Incident.ID); inc.Detail != "write sent" || inc.State != StatePending {
		t.Fatalf("incident = %+v", inc)
	}
	if due, _ := s.PendingActions(ctx, now, 0); len(due) != 0 {
		t.Fatalf("due before the noted time: %+v", due)
	}
	if err := s.FinishAction(ctx, acts[0].ID, StateDone, "suspended", "ok"); err != nil {
		t.Fatal(err)
	}
	if err := s.NoteAction(ctx, acts[0].ID, later, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("noting a finished action: %v", err)
	}
	if err := s.NoteAction(ctx, 999, later, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("noting a missing action: %v", err)
	}
}
