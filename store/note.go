package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// NoteAction implements Store.
func (s *SQLite) NoteAction(ctx context.Context, id int64, nextAttemptAt time.Time, detail string) error {
	if err := s.check("note action"); err != nil {
		return err
	}
	if err := s.noteAction(ctx, id, nextAttemptAt, detail); err != nil {
		return fmt.Errorf("store: note action %d: %w", id, err)
	}
	return nil
}

func (s *SQLite) noteAction(ctx context.Context, id int64, nextAttemptAt time.Time, detail string) error {
	// Like a retry, but the attempt is not counted.
	return s.updatePending(ctx, nextAttemptAt, func(tx *sql.Tx, next, now int64) *sql.Row {
		return tx.QueryRowContext(ctx, `UPDATE actions
			SET detail = ?, next_attempt_at = ?, updated_at = ?
			WHERE id = ? AND state = 'pending'
			RETURNING incident_id, kind`, detail, next, now, id)
	}, detail)
}
