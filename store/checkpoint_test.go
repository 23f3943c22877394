package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// The write connection never checkpoints: a commit pays for its own fsync
// only. The background checkpointer copies the WAL into the database after
// checkpointBatches commits, without being asked.
func TestCheckpointsRunInTheBackground(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	var auto int
	if err := s.w.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&auto); err != nil {
		t.Fatal(err)
	}
	if auto != 0 {
		t.Fatalf("the write connection checkpoints every %d pages", auto)
	}
	for i := 0; i < checkpointBatches; i++ {
		record(t, s, firing(fmt.Sprintf("T%d", i), "r", fmt.Sprintf("AC%d", i), "daily:2026-11-24", t0))
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.ckRuns.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no background checkpoint after %d commits", checkpointBatches)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// It copied everything: a checkpoint now has nothing left to do.
	var busy, log, done int
	if err := s.ck.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &log, &done); err != nil {
		t.Fatal(err)
	}
	if busy != 0 || log != done {
		t.Fatalf("after the background checkpoint: busy %d, %d frames in the WAL, %d checkpointed", busy, log, done)
	}
}

// RearmFor and OpenRearms answer from memory for accounts never re-armed (on
// every callback's path and for every account of a reconcile), and a re-arm
// is found again after a restart.
func TestRearmForAfterReopen(t *testing.T) {
	s, path := openTest(t)
	ctx := context.Background()
	if _, err := s.BeginRearm(ctx, "AC1", "r", "daily:2026-11-24", "50", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r, err := s2.RearmFor(ctx, "AC1", "r", "daily:2026-11-24")
	if err != nil || r.Generation != 2 {
		t.Fatalf("RearmFor after reopen = %+v, %v", r, err)
	}
	if _, err := s2.RearmFor(ctx, "AC2", "r", "daily:2026-11-24"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RearmFor of an account never re-armed: %v", err)
	}
	if _, err := s2.RearmFor(ctx, "AC1", "r", "daily:2026-11-25"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RearmFor of another period: %v", err)
	}
	open, err := s2.OpenRearms(ctx, "AC1", t0)
	if err != nil || len(open) != 1 || open[0].Rule != "r" || open[0].Generation != 2 {
		t.Fatalf("OpenRearms after reopen = %+v, %v", open, err)
	}
	if open, err := s2.OpenRearms(ctx, "AC2", t0); err != nil || len(open) != 0 {
		t.Fatalf("OpenRearms of an account never re-armed = %+v, %v", open, err)
	}
}
