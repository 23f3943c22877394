package store

import (
	"context"
	"database/sql"
	"fmt"
)

// Decide implements OperatorStore.
func (s *SQLite) Decide(ctx context.Context, a Approval) (Approval, error) {
	if a.Decision != DecisionApprove && a.Decision != DecisionVeto {
		return Approval{}, fmt.Errorf("store: decide incident %d: decision %q, want %q or %q", a.IncidentID, a.Decision, DecisionApprove, DecisionVeto)
	}
	if a.CreatedAt.IsZero() {
		a.CreatedAt = s.now()
	}
	at, err := unixNano(a.CreatedAt)
	if err != nil {
		return Approval{}, fmt.Errorf("store: decide incident %d: %w", a.IncidentID, err)
	}
	err = s.write(ctx, fmt.Sprintf("decide incident %d", a.IncidentID), func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT count(*) FROM incidents WHERE id = ?`), a.IncidentID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return ErrNotFound
		}
		r, err := tx.ExecContext(ctx, s.q(`INSERT INTO approvals (incident_id, decision, actor, reason, created_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident_id) DO NOTHING`), a.IncidentID, a.Decision, a.Actor, a.Reason, at)
		if err != nil {
			return err
		}
		if n, err := r.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrExists
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE actions SET next_attempt_at = ?, updated_at = ?
			WHERE incident_id = ? AND kind = 'trip' AND state = 'available' AND next_attempt_at > ?`), at, at, a.IncidentID, at)
		return err
	})
	if err != nil {
		return Approval{}, err
	}
	return a, nil
}

// Approvals implements OperatorStore.
func (s *SQLite) Approvals(ctx context.Context, incidentIDs []int64) (map[int64]Approval, error) {
	if err := s.check("approvals"); err != nil {
		return nil, err
	}
	out := map[int64]Approval{}
	for len(incidentIDs) > 0 {
		chunk := incidentIDs[:min(len(incidentIDs), 500)]
		incidentIDs = incidentIDs[len(chunk):]
		rows, err := s.r.QueryContext(ctx, s.q(`SELECT incident_id, decision, actor, reason, created_at FROM approvals
			WHERE incident_id IN `+inList(len(chunk))), int64Args(chunk)...)
		if err != nil {
			return nil, fmt.Errorf("store: approvals: %w", err)
		}
		for rows.Next() {
			var (
				a  Approval
				at int64
			)
			if err := rows.Scan(&a.IncidentID, &a.Decision, &a.Actor, &a.Reason, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: approvals: %w", err)
			}
			a.CreatedAt = fromUnixNano(at)
			out[a.IncidentID] = a
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("store: approvals: %w", err)
		}
	}
	return out, nil
}
