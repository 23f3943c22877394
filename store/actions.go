package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"
)

// The action engine's queue (ActionStore). Claims, write marks, completions
// and rescues are group-committed (groupcommit.go) like firings; releases and
// reads run on their own.

// leasedQuery: does another action hold a lease on the account at now, or
// a hold (holds.go)? (lease_until > 0 lets the planner use the partial
// index actions_leased.)
const leasedQuery = `SELECT EXISTS (SELECT 1 FROM actions WHERE account_sid = ?1 AND lease_until > 0 AND lease_until > ?2)
	OR EXISTS (SELECT 1 FROM account_holds WHERE account_sid = ?1 AND held_until > ?2)`

// claimQuery claims, for owner ?1 until ?2, up to ?4 available actions due at
// ?3: at most one per account (the first by the order below), none of an
// account another action or a hold (holds.go) holds a lease on, and no end_calls or notify:*
// action while its incident's trip is unfinished (they report or follow its
// outcome). Trip actions go first, so a burst's suspensions are not queued
// behind the notifications of the incidents before them.
//
// Plan: a range of the partial index actions_due (only due available
// actions are read), a probe of actions_leased per candidate with an
// account, and a sort of the candidates.
const claimQuery = `UPDATE actions SET state = 'running', owner = ?1, lease_until = ?2, updated_at = ?3
	WHERE id IN (
		SELECT id FROM (
			SELECT a.id, a.kind, a.next_attempt_at,
				row_number() OVER (
					PARTITION BY CASE WHEN a.account_sid = '' THEN 'action ' || a.id ELSE a.account_sid END
					ORDER BY a.kind <> 'trip', a.next_attempt_at, a.id) AS nth
			FROM actions a
			WHERE a.state = 'available' AND a.next_attempt_at <= ?3
				AND NOT ((a.kind = 'end_calls' OR a.kind LIKE 'notify:%') AND EXISTS (
					SELECT 1 FROM actions t WHERE t.incident_id = a.incident_id AND t.kind = 'trip'
						AND t.state NOT IN ('done', 'failed')))
				AND (a.account_sid = '' OR NOT EXISTS (
					SELECT 1 FROM actions o WHERE o.account_sid = a.account_sid AND o.lease_until > 0 AND o.lease_until > ?3
						AND o.id <> a.id) AND NOT EXISTS (
					SELECT 1 FROM account_holds h WHERE h.account_sid = a.account_sid AND h.held_until > ?3)))
		WHERE nth = 1
		ORDER BY kind <> 'trip', next_attempt_at, id
		LIMIT ?4)
	RETURNING ` + actionCols

// completeQuery ends owner ?11's attempt at running action ?10.
const completeQuery = `UPDATE actions SET state = ?1, outcome = ?2, detail = ?3, attempts = attempts + ?4,
		next_attempt_at = ?5, owner = '', lease_until = ?6,
		write_sent_at = CASE WHEN ?7 > 0 THEN ?7 WHEN ?12 THEN 0 ELSE write_sent_at END, progress = ?8, updated_at = ?9
	WHERE id = ?10 AND state = 'running' AND owner = ?11
	RETURNING incident_id, kind`

// timeCol stores an optional time: 0 for the zero time.
func timeCol(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromTimeCol reads an optional time.
func fromTimeCol(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return fromUnixNano(n)
}

func (s *DB) accountLeased(ctx context.Context, tx *sql.Tx, accountSID string, now int64) (bool, error) {
	var leased bool
	if err := tx.StmtContext(ctx, s.wLeased).QueryRowContext(ctx, accountSID, now).Scan(&leased); err != nil {
		return false, fmt.Errorf("read the account's leases: %w", err)
	}
	return leased, nil
}

// ClaimActions implements ActionStore. A limit of 0 or less means 100.
func (s *DB) ClaimActions(ctx context.Context, c Claim, now time.Time, limit int) ([]Action, error) {
	if err := s.check("claim actions"); err != nil {
		return nil, err
	}
	if c.Owner == "" {
		return nil, errors.New("store: claim actions: no owner")
	}
	if limit <= 0 {
		limit = 100
	}
	at, err := unixNano(now)
	if err != nil {
		return nil, fmt.Errorf("store: claim actions: %w", err)
	}
	lease, err := unixNano(c.LeaseUntil)
	if err != nil {
		return nil, fmt.Errorf("store: claim actions: lease: %w", err)
	}
	var acts []Action
	if s.pg {
		acts, err = s.claimPG(ctx, c.Owner, lease, at, limit) // postgres.go
	} else {
		acts, err = submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) ([]Action, error) {
			rows, err := tx.StmtContext(ctx, s.wClaim).QueryContext(ctx, c.Owner, lease, at, limit)
			if err != nil {
				return nil, err
			}
			return scanActions(rows)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("store: claim actions: %w", err)
	}
	// RETURNING has no order.
	sort.Slice(acts, func(i, j int) bool {
		a, b := acts[i], acts[j]
		if (a.Kind == ActionTrip) != (b.Kind == ActionTrip) {
			return a.Kind == ActionTrip
		}
		if !a.NextAttemptAt.Equal(b.NextAttemptAt) {
			return a.NextAttemptAt.Before(b.NextAttemptAt)
		}
		return a.ID < b.ID
	})
	return acts, nil
}

// MarkWriteSent implements ActionStore.
func (s *DB) MarkWriteSent(ctx context.Context, id int64, owner string, attempt int, at, leaseUntil time.Time) error {
	if err := s.check("mark write sent"); err != nil {
		return err
	}
	sent, err := unixNano(at)
	if err != nil {
		return fmt.Errorf("store: mark write sent of action %d: %w", id, err)
	}
	lease, err := unixNano(leaseUntil)
	if err != nil {
		return fmt.Errorf("store: mark write sent of action %d: lease: %w", id, err)
	}
	if s.pg {
		err = s.markPG(ctx, &pgMarkOp{id: id, owner: owner, attempt: attempt, sent: sent, lease: lease}) // pgbatch.go
	} else {
		_, err = submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (struct{}, error) {
			return marked(tx.StmtContext(ctx, s.wMark).ExecContext(ctx, sent, lease, sent, id, owner, attempt))
		})
	}
	if err != nil {
		return fmt.Errorf("store: mark write sent of action %d: %w", id, err)
	}
	return nil
}

// marked is a write mark's outcome from its UPDATE's.
func marked(r sql.Result, err error) (struct{}, error) {
	if err != nil {
		return struct{}{}, err
	}
	if n, err := r.RowsAffected(); err != nil || n == 0 {
		return struct{}{}, ErrNotFound // finished, or claimed by another owner
	}
	return struct{}{}, nil
}

// CompleteAction implements ActionStore.
func (s *DB) CompleteAction(ctx context.Context, id int64, owner string, c Completion) (Completed, error) {
	if err := s.check("complete action"); err != nil {
		return Completed{}, err
	}
	var done Completed
	var err error
	if s.pg && c.State != ActionHeld {
		err = s.completePG(ctx, id, owner, c) // one round trip (postgres.go)
	} else {
		done, err = submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (Completed, error) {
			return s.completeTx(ctx, tx, id, owner, c)
		})
	}
	if err != nil {
		return Completed{}, fmt.Errorf("store: complete action %d (%s): %w", id, c.State, err)
	}
	return done, nil
}

func (s *DB) completeTx(ctx context.Context, tx *sql.Tx, id int64, owner string, c Completion) (Completed, error) {
	var out Completed
	now, err := unixNano(s.now())
	if err != nil {
		return out, err
	}
	next, lease := now, int64(0)
	switch c.State {
	case ActionDone, ActionFailed, ActionHeld:
	case ActionAvailable:
		if next, err = unixNano(c.NextAttemptAt); err != nil {
			return out, fmt.Errorf("next attempt: %w", err)
		}
		lease = timeCol(c.HoldAccountUntil)
	default:
		return out, fmt.Errorf("cannot complete an attempt as %q", c.State)
	}
	others := 0
	if c.State == ActionHeld {
		if s.pg {
			// One page per episode across replicas holding at once.
			if err := lockGuard(ctx, tx); err != nil {
				return out, err
			}
		}
		if err := tx.QueryRowContext(ctx, s.q(`SELECT count(*) FROM actions WHERE state = 'held' AND id <> ?`), id).Scan(&others); err != nil {
			return out, err
		}
	}
	var (
		incident sql.NullInt64 // NULL for a step firing's action
		kind     ActionKind
	)
	err = tx.StmtContext(ctx, s.wComplete).QueryRowContext(ctx, c.State, c.Outcome, c.Detail, boolInt(c.Attempted),
		next, lease, timeCol(c.WriteSentAt), c.Progress, now, id, owner, c.ClearWriteSent).Scan(&incident, &kind)
	incidentID := incident.Int64
	if errors.Is(err, sql.ErrNoRows) {
		return out, ErrNotFound // not running, or claimed by another owner
	}
	if err != nil {
		return out, err
	}
	if kind == ActionTrip {
		if c.State.Finished() {
			st := StateDone
			if c.State == ActionFailed {
				st = StateFailed
			}
			_, err = tx.StmtContext(ctx, s.wIncidentEnd).ExecContext(ctx, st, c.Outcome, c.Detail, now, incidentID)
		} else {
			// An unfinished trip's outcome, if it has one, shows on the
			// incident (awaiting_approval).
			_, err = tx.ExecContext(ctx, s.q(`UPDATE incidents SET detail = ?, outcome = ?, updated_at = ? WHERE id = ?`),
				c.Detail, c.Outcome, now, incidentID)
		}
		if err != nil {
			return out, fmt.Errorf("update incident %d: %w", incidentID, err)
		}
	}
	then := c.Then
	if c.State != ActionDone && c.State != ActionAvailable {
		then = nil
	}
	if err := s.insertScheduled(ctx, tx, incidentID, then, now); err != nil {
		return out, err
	}
	if c.State == ActionHeld && others == 0 && len(c.Pages) > 0 {
		// A new episode pages again, also on an incident paged in an
		// earlier one (a reopened trip): its page is sent anew.
		for _, k := range c.Pages {
			if _, err := tx.ExecContext(ctx, s.q(pageUpsertQuery), incidentID, k, now); err != nil {
				return out, fmt.Errorf("insert page %q: %w", k, err)
			}
		}
		out.Paged = true
	}
	return out, nil
}

// pageUpsertQuery creates a guard page, or makes one sent in an earlier
// episode available again.
const pageUpsertQuery = `INSERT INTO actions (incident_id, kind, account_sid, state, attempts,
		next_attempt_at, created_at, updated_at)
	VALUES (?1, ?2, '', 'available', 0, ?3, ?3, ?3)
	ON CONFLICT (incident_id, kind) DO UPDATE SET state = 'available', attempts = 0, next_attempt_at = ?3,
		outcome = '', detail = '', progress = '', updated_at = ?3
	WHERE actions.state IN ('done', 'failed')`

// insertScheduled creates actions for an incident (kinds it has already are
// left as they are).
func (s *DB) insertScheduled(ctx context.Context, tx *sql.Tx, incidentID int64, then []Scheduled, now int64) error {
	for _, sc := range then {
		if sc.Kind == "" {
			return errors.New("scheduled action with an empty kind")
		}
		at, err := unixNano(sc.At)
		if err != nil {
			return fmt.Errorf("scheduled %s: %w", sc.Kind, err)
		}
		if _, err := tx.ExecContext(ctx, s.q(insertScheduledQuery),
			incidentID, sc.Kind, sc.Kind.LocksAccount(), at, now, now, incidentID); err != nil {
			return fmt.Errorf("insert action %q: %w", sc.Kind, err)
		}
	}
	return nil
}

const insertScheduledQuery = `INSERT INTO actions (incident_id, kind, account_sid, state, attempts,
				next_attempt_at, created_at, updated_at)
			SELECT ?, ?, CASE WHEN ? THEN account_sid ELSE '' END, 'available', 0, ?, ?, ?
			FROM incidents WHERE id = ?
			ON CONFLICT (incident_id, kind) DO NOTHING`

const rescueSelectQuery = `SELECT ` + actionCols + ` FROM actions
			WHERE state = 'running' AND (?1 OR lease_until <= ?2)`

// RescueActions implements ActionStore.
func (s *DB) RescueActions(ctx context.Context, now time.Time, writeLease time.Duration, all bool) ([]Action, error) {
	if err := s.check("rescue actions"); err != nil {
		return nil, err
	}
	at, err := unixNano(now)
	if err != nil {
		return nil, fmt.Errorf("store: rescue actions: %w", err)
	}
	hold, err := unixNano(now.Add(writeLease))
	if err != nil {
		return nil, fmt.Errorf("store: rescue actions: %w", err)
	}
	acts, err := submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) ([]Action, error) {
		rows, err := tx.QueryContext(ctx, s.q(rescueSelectQuery), all, at)
		if err != nil {
			return nil, err
		}
		acts, err := scanActions(rows)
		if err != nil {
			return nil, err
		}
		for _, a := range acts {
			next, lease := at, int64(0)
			detail := fmt.Sprintf("claimed by %s, which stopped before finishing it; handed back", a.Owner)
			if a.AccountSID != "" {
				next, lease = hold, hold
				detail += "; the account is held until a status write it may have sent can no longer land"
			}
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE actions SET state = 'available', owner = '', next_attempt_at = ?,
					lease_until = ?, rescued = 1, detail = ?, updated_at = ?
				WHERE id = ? AND state = 'running' AND owner = ?`), next, lease, detail, at, a.ID, a.Owner); err != nil {
				return nil, fmt.Errorf("hand back action %d: %w", a.ID, err)
			}
			if a.Kind == ActionTrip {
				if _, err := tx.StmtContext(ctx, s.wIncidentNote).ExecContext(ctx, detail, at, a.IncidentID); err != nil {
					return nil, fmt.Errorf("update incident %d: %w", a.IncidentID, err)
				}
			}
		}
		if all {
			// The holds of stopped processes (holds.go) end too: at once,
			// or a write lease from now if they had sent a write.
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE account_holds SET owner = '',
					held_until = CASE WHEN write_sent_at = 0 THEN ? WHEN held_until > ? THEN ? ELSE held_until END
				WHERE held_until > ?`), at, hold, hold, at); err != nil {
				return nil, fmt.Errorf("end holds: %w", err)
			}
		}
		return acts, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: rescue actions: %w", err)
	}
	return acts, nil
}

// ResumeAvailable implements ActionStore.
func (s *DB) ResumeAvailable(ctx context.Context, now time.Time) (int, error) {
	at, err := unixNano(now)
	if err != nil {
		return 0, fmt.Errorf("store: resume actions: %w", err)
	}
	n, err := submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (int, error) {
		r, err := tx.ExecContext(ctx, s.q(`UPDATE actions SET next_attempt_at = ?1
			WHERE state = 'available' AND next_attempt_at > ?1 AND kind <> 'reactivate' AND lease_until <= ?1`), at)
		if err != nil {
			return 0, err
		}
		m, err := r.RowsAffected()
		return int(m), err
	})
	if err != nil {
		return 0, fmt.Errorf("store: resume actions: %w", err)
	}
	return n, nil
}

// ReleaseHeld implements ActionStore.
func (s *DB) ReleaseHeld(ctx context.Context, now time.Time, detail string) (n int, err error) {
	at, err := unixNano(now)
	if err != nil {
		return 0, fmt.Errorf("store: release held: %w", err)
	}
	err = s.write(ctx, "release held", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE incidents SET detail = ?, updated_at = ?
			WHERE id IN (SELECT incident_id FROM actions WHERE state = 'held')`), detail, at); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE actions SET state = 'available', released = 1, next_attempt_at = ?,
				detail = ?, updated_at = ?
			WHERE state = 'held'`), at, detail, at)
		if err != nil {
			return err
		}
		m, err := res.RowsAffected()
		n = int(m)
		return err
	})
	return n, err
}

// CountHeld implements ActionStore.
func (s *DB) CountHeld(ctx context.Context) (int, error) {
	return s.count(ctx, "count held actions", `SELECT count(*) FROM actions WHERE state = 'held'`)
}

// CountSuspensions implements ActionStore.
func (s *DB) CountSuspensions(ctx context.Context, since time.Time) (int, error) {
	at, err := unixNano(since)
	if err != nil {
		return 0, fmt.Errorf("store: count suspensions: %w", err)
	}
	return s.count(ctx, "count suspensions", `SELECT count(*) FROM actions
		WHERE kind = 'trip' AND outcome = 'suspended' AND updated_at >= ?`, at)
}

// SuspendedSince implements ActionStore.
func (s *DB) SuspendedSince(ctx context.Context, accountSID string, exceptIncident int64, since time.Time) (bool, error) {
	at, err := unixNano(since)
	if err != nil {
		return false, fmt.Errorf("store: suspended since: %w", err)
	}
	n, err := s.count(ctx, "suspended since", `SELECT count(*) FROM actions
		WHERE kind = 'trip' AND outcome = 'suspended' AND updated_at >= ? AND account_sid = ? AND incident_id <> ?`,
		at, accountSID, exceptIncident)
	return n > 0, err
}

// CountPendingActions implements ActionStore.
func (s *DB) CountPendingActions(ctx context.Context) (int, error) {
	if err := s.check("count pending actions"); err != nil {
		return 0, err
	}
	var n int
	if err := s.rCountPending.QueryRowContext(ctx).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count pending actions: %w", err)
	}
	return n, nil
}

// IncidentActions implements ActionStore.
func (s *DB) IncidentActions(ctx context.Context, incidentIDs []int64) (map[int64][]Action, error) {
	if err := s.check("incident actions"); err != nil {
		return nil, err
	}
	out := map[int64][]Action{}
	for len(incidentIDs) > 0 {
		chunk := incidentIDs[:min(len(incidentIDs), 500)]
		incidentIDs = incidentIDs[len(chunk):]
		rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+actionCols+` FROM actions WHERE incident_id IN `+
			inList(len(chunk))+` ORDER BY id`), int64Args(chunk)...)
		if err != nil {
			return nil, fmt.Errorf("store: incident actions: %w", err)
		}
		acts, err := scanActions(rows)
		if err != nil {
			return nil, fmt.Errorf("store: incident actions: %w", err)
		}
		for _, a := range acts {
			out[a.IncidentID] = append(out[a.IncidentID], a)
		}
	}
	return out, nil
}

func scanActions(rows *sql.Rows) ([]Action, error) {
	defer rows.Close()
	var out []Action
	for rows.Next() {
		var (
			a                 Action
			incident          sql.NullInt64 // NULL for a step firing's action
			next, lease, sent int64
			released, rescued int64
			created, updated  int64
		)
		if err := rows.Scan(&a.ID, &incident, &a.Kind, &a.AccountSID, &a.State, &a.Attempts, &next,
			&a.Owner, &lease, &sent, &released, &rescued, &a.Outcome, &a.Detail, &a.Progress, &created, &updated, &a.Step); err != nil {
			return nil, err
		}
		a.IncidentID = incident.Int64
		a.NextAttemptAt, a.CreatedAt, a.UpdatedAt = fromUnixNano(next), fromUnixNano(created), fromUnixNano(updated)
		a.LeaseUntil, a.WriteSentAt, a.Released, a.Rescued = fromTimeCol(lease), fromTimeCol(sent), released != 0, rescued != 0
		out = append(out, a)
	}
	return out, rows.Err()
}
