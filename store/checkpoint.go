package store

import (
	"context"
	"database/sql"
	"time"
)

// Checkpoints run in the background, never inside a commit.
//
// SQLite's default is an automatic checkpoint by the connection whose commit
// takes the WAL past 1000 pages: that commit then also copies the WAL into
// the database file and fsyncs it, which made about one callback in a
// hundred wait several times as long as the others (the whole p99 of the
// callback-to-suspension path). So the write connection runs with
// wal_autocheckpoint=0, and checkpointLoop, on a connection of its own, runs
// a PASSIVE checkpoint (it never blocks the writer or the readers, and copies
// only what is committed) every checkpointEvery while there are writes, and
// after every checkpointBatches group commits under load, which bounds the
// WAL's growth. The last connection to close checkpoints what is left.
const (
	checkpointEvery   = time.Second
	checkpointBatches = 128
)

// commit commits tx and tells the checkpointer.
func (s *DB) commit(tx *sql.Tx) error {
	if err := tx.Commit(); err != nil {
		return err
	}
	s.wrote()
	return nil
}

// wrote tells the checkpointer that a transaction was committed.
func (s *DB) wrote() {
	if s.dirty.Add(1)%checkpointBatches == 0 {
		select {
		case s.ckNow <- struct{}{}:
		default:
		}
	}
}

func (s *DB) checkpointLoop() {
	defer close(s.ckDone)
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	var done uint64 // s.dirty at the last checkpoint
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		case <-s.ckNow:
		}
		n := s.dirty.Load()
		if n == done {
			continue
		}
		if err := checkpoint(context.Background(), s.ck); err != nil {
			continue // busy or failing: the next round tries again; Close checkpoints too
		}
		s.ckRuns.Add(1)
		done = n
	}
}

func checkpoint(ctx context.Context, db *sql.DB) error {
	var busy, log, copied int
	return db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &log, &copied)
}
