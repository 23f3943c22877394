package store

import (
	"context"
	"database/sql"
	"errors"
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

func (s *SQLite) noteAction(ctx context.Context, id int64, nextAttemptAt time.Time, detail string) (err error) {
	next, err := unixNano(nextAttemptAt)
	if err != nil {
		return fmt.Errorf("next attempt: %w", err)
	}
	now, err := unixNano(s.now())
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var (
		incidentID int64
		kind       string
	)
	err = tx.QueryRowContext(ctx, `UPDATE actions
			SET detail = ?, next_attempt_at = ?, updated_at = ?
			WHERE id = ? AND state = 'pending'
			RETURNING incident_id, kind`, detail, next, now, id).Scan(&incidentID, &kind)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if kind == ActionTrip {
		if _, err = tx.StmtContext(ctx, s.wIncidentRetry).ExecContext(ctx, detail, now, incidentID); err != nil {
			return err
		}
	}
	return tx.Commit()
}
