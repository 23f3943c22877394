package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Reactivation.Via values.
const (
	ViaManual    = "manual"
	ViaScheduled = "scheduled"
)

// ErrExists is returned when a row that may exist only once already does.
var ErrExists = errors.New("already exists")

// Rearm is a re-arm exception: on reactivation, the trigger of Rule on
// AccountSID that had fired in Period was replaced by one allowing Allowance
// more. While Period lasts (until ExpiresAt) the reconciler keeps that trigger
// (TriggerValue) instead of the rule's own threshold, and firings in Period
// belong to generation Generation (incident period "Period#Generation").
type Rearm struct {
	AccountSID string
	Rule       string
	Period     string // the plain period key, e.g. "daily:2026-11-24"
	Generation int    // 2 for the first re-arm in the period, then 3, ...
	Allowance  string // the "+N" offset, without the "+"
	// TriggerSID and TriggerValue are the replacement trigger; both are ""
	// while the re-arm is under way (or was interrupted by a crash).
	TriggerSID   string
	TriggerValue string
	ExpiresAt    time.Time // the end of Period
	RestoredAt   time.Time // zero until a reconcile after ExpiresAt restored the rule's threshold
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// Reactivation is one reactivation of a subaccount the breaker suspended.
type Reactivation struct {
	ID          int64
	IncidentID  int64 // the incident whose suspension was undone
	AccountSID  string
	AccountName string
	Via         string // ViaManual | ViaScheduled
	Actor       string // who: the admin API caller's address (and claimed operator), or the rule's policy
	Reason      string
	Rearmed     int    // triggers re-armed
	Detail      string // what was re-armed, or why nothing was
	CreatedAt   time.Time
}

// OperatorStore is the state of the people-in-the-loop features: re-arm
// exceptions and the reactivation audit. Same concurrency contract as Store.
type OperatorStore interface {
	// BeginRearm starts a re-arm of (account, rule, period): it creates the
	// exception with generation 2, or moves an existing one to the next
	// generation, with no trigger yet. It returns the exception.
	BeginRearm(ctx context.Context, accountSID, rule, period, allowance string, expiresAt time.Time) (Rearm, error)
	// CompleteRearm records the replacement trigger of that generation
	// (ErrNotFound if the exception is at another generation or gone).
	CompleteRearm(ctx context.Context, accountSID, rule, period string, generation int, triggerSID, triggerValue string) error
	// RearmFor returns the exception of (account, rule, period), or ErrNotFound.
	RearmFor(ctx context.Context, accountSID, rule, period string) (Rearm, error)
	// OpenRearms returns an account's exceptions whose period has not ended at now.
	OpenRearms(ctx context.Context, accountSID string, now time.Time) ([]Rearm, error)
	// CountExpiredRearms counts exceptions whose period ended at or before
	// now and that no reconcile has restored yet.
	CountExpiredRearms(ctx context.Context, now time.Time) (int, error)
	// MarkRearmsRestored marks those exceptions restored (at now) and returns how many.
	MarkRearmsRestored(ctx context.Context, now time.Time) (int, error)

	// Decide records a person's decision on incident id and makes its trip
	// action, if it waits in the queue, due at once; ErrExists if the
	// incident was decided before, ErrNotFound if there is no such incident.
	Decide(ctx context.Context, a Approval) (Approval, error)
	// Approvals returns the decision on each incident that has one.
	Approvals(ctx context.Context, incidentIDs []int64) (map[int64]Approval, error)

	// RecordReactivation records a reactivation; ErrExists if the incident
	// was reactivated before. CreatedAt zero means now.
	RecordReactivation(ctx context.Context, r Reactivation) (Reactivation, error)
	// Reactivations returns the reactivation of each incident that has one.
	Reactivations(ctx context.Context, incidentIDs []int64) (map[int64]Reactivation, error)
}

var _ OperatorStore = (*DB)(nil)

// SetClock sets the clock of the times the store stamps itself (updated_at
// of actions, for the guard's window). The daemon gives it its own clock, so
// that a simulated clock moves both together. Call it before use.
func (s *DB) SetClock(now func() time.Time) {
	if now != nil {
		s.now = now
	}
}

// write runs fn in one IMMEDIATE transaction on the write connection.
func (s *DB) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) (err error) {
	if err := s.check(op); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: %s: %w", op, err)
		}
	}()
	if s.pg {
		_, err = s.runTx(ctx, func(_ context.Context, tx *sql.Tx) (any, error) { return nil, fn(tx) })
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err = fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return s.commit(tx)
}

// inList is "(?, ?, ...)" for n values.
func inList(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}

func int64Args(ids []int64) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

func (s *DB) count(ctx context.Context, op, q string, args ...any) (int, error) {
	if err := s.check(op); err != nil {
		return 0, err
	}
	var n int
	if err := s.r.QueryRowContext(ctx, s.q(q), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	return n, nil
}

const rearmCols = `account_sid, rule, period, generation, allowance, trigger_sid, trigger_value,
	expires_at, restored_at, created_at, updated_at`

func scanRearm(row scanner) (Rearm, error) {
	var (
		r                                   Rearm
		expires, restored, created, updated int64
	)
	if err := row.Scan(&r.AccountSID, &r.Rule, &r.Period, &r.Generation, &r.Allowance, &r.TriggerSID,
		&r.TriggerValue, &expires, &restored, &created, &updated); err != nil {
		return Rearm{}, err
	}
	r.ExpiresAt, r.CreatedAt, r.UpdatedAt = fromUnixNano(expires), fromUnixNano(created), fromUnixNano(updated)
	if restored != 0 {
		r.RestoredAt = fromUnixNano(restored)
	}
	return r, nil
}

const rearmUpsertQuery = `INSERT INTO rearms (account_sid, rule, period,
				generation, allowance, expires_at, created_at, updated_at)
			VALUES (?, ?, ?, 2, ?, ?, ?, ?)
			ON CONFLICT (account_sid, rule, period) DO UPDATE
				SET generation = generation + 1, allowance = excluded.allowance, trigger_sid = '',
					trigger_value = '', expires_at = excluded.expires_at, restored_at = 0,
					updated_at = excluded.updated_at
			RETURNING ` + rearmCols

// BeginRearm implements OperatorStore.
func (s *DB) BeginRearm(ctx context.Context, accountSID, rule, period, allowance string, expiresAt time.Time) (r Rearm, err error) {
	if accountSID == "" || rule == "" || period == "" || allowance == "" {
		return Rearm{}, errors.New("store: begin re-arm: empty account, rule, period or allowance")
	}
	s.rearmed.Store(accountSID, struct{}{}) // before the row exists: never missed by RearmFor
	err = s.write(ctx, "begin re-arm", func(tx *sql.Tx) error {
		now, err := unixNano(s.now())
		if err != nil {
			return err
		}
		exp, err := unixNano(expiresAt)
		if err != nil {
			return err
		}
		r, err = scanRearm(tx.QueryRowContext(ctx, s.q(rearmUpsertQuery), accountSID, rule, period, allowance, exp, now, now))
		return err
	})
	return r, err
}

// CompleteRearm implements OperatorStore.
func (s *DB) CompleteRearm(ctx context.Context, accountSID, rule, period string, generation int, triggerSID, triggerValue string) error {
	return s.write(ctx, "complete re-arm", func(tx *sql.Tx) error {
		now, err := unixNano(s.now())
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE rearms SET trigger_sid = ?, trigger_value = ?, updated_at = ?
			WHERE account_sid = ? AND rule = ? AND period = ? AND generation = ?`),
			triggerSID, triggerValue, now, accountSID, rule, period, generation)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// RearmFor implements OperatorStore.
func (s *DB) RearmFor(ctx context.Context, accountSID, rule, period string) (Rearm, error) {
	if err := s.check("re-arm"); err != nil {
		return Rearm{}, err
	}
	if _, ok := s.rearmed.Load(accountSID); !ok && !s.pg { // on Postgres other replicas re-arm too
		return Rearm{}, ErrNotFound // no re-arm ever: no read on the callback's path
	}
	r, err := scanRearm(s.r.QueryRowContext(ctx, s.q(`SELECT `+rearmCols+` FROM rearms
		WHERE account_sid = ? AND rule = ? AND period = ?`), accountSID, rule, period))
	if errors.Is(err, sql.ErrNoRows) {
		return Rearm{}, ErrNotFound
	}
	if err != nil {
		return Rearm{}, fmt.Errorf("store: re-arm: %w", err)
	}
	return r, nil
}

// OpenRearms implements OperatorStore.
func (s *DB) OpenRearms(ctx context.Context, accountSID string, now time.Time) ([]Rearm, error) {
	if err := s.check("open re-arms"); err != nil {
		return nil, err
	}
	at, err := unixNano(now)
	if err != nil {
		return nil, fmt.Errorf("store: open re-arms: %w", err)
	}
	if _, ok := s.rearmed.Load(accountSID); !ok && !s.pg { // as RearmFor
		return nil, nil // no re-arm ever: no read for each account of a reconcile
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+rearmCols+` FROM rearms
		WHERE account_sid = ? AND expires_at > ? ORDER BY rule, period`), accountSID, at)
	if err != nil {
		return nil, fmt.Errorf("store: open re-arms: %w", err)
	}
	defer rows.Close()
	var out []Rearm
	for rows.Next() {
		r, err := scanRearm(rows)
		if err != nil {
			return nil, fmt.Errorf("store: open re-arms: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: open re-arms: %w", err)
	}
	return out, nil
}

// CountExpiredRearms implements OperatorStore.
func (s *DB) CountExpiredRearms(ctx context.Context, now time.Time) (int, error) {
	at, err := unixNano(now)
	if err != nil {
		return 0, fmt.Errorf("store: count expired re-arms: %w", err)
	}
	return s.count(ctx, "count expired re-arms", `SELECT count(*) FROM rearms WHERE restored_at = 0 AND expires_at <= ?`, at)
}

// MarkRearmsRestored implements OperatorStore.
func (s *DB) MarkRearmsRestored(ctx context.Context, now time.Time) (n int, err error) {
	err = s.write(ctx, "mark re-arms restored", func(tx *sql.Tx) error {
		at, err := unixNano(now)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE rearms SET restored_at = ?, updated_at = ?
			WHERE restored_at = 0 AND expires_at <= ?`), at, at, at)
		if err != nil {
			return err
		}
		m, err := res.RowsAffected()
		n = int(m)
		return err
	})
	return n, err
}

const reactivationCols = `id, incident_id, account_sid, account_name, via, actor, reason, rearmed, detail, created_at`

// RecordReactivation implements OperatorStore.
func (s *DB) RecordReactivation(ctx context.Context, r Reactivation) (out Reactivation, err error) {
	if r.Via != ViaManual && r.Via != ViaScheduled {
		return Reactivation{}, fmt.Errorf("store: record reactivation: via %q, want %q or %q", r.Via, ViaManual, ViaScheduled)
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = s.now()
	}
	err = s.write(ctx, fmt.Sprintf("record reactivation of incident %d", r.IncidentID), func(tx *sql.Tx) error {
		at, err := unixNano(r.CreatedAt)
		if err != nil {
			return err
		}
		err = tx.QueryRowContext(ctx, s.q(`INSERT INTO reactivations (incident_id, account_sid, account_name,
				via, actor, reason, rearmed, detail, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
			r.IncidentID, r.AccountSID, r.AccountName, r.Via, r.Actor, r.Reason, r.Rearmed, r.Detail, at).Scan(&r.ID)
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || pgCode(err) == pgUniqueViolation {
			return ErrExists
		}
		return err
	})
	if err != nil {
		return Reactivation{}, err
	}
	r.CreatedAt = fromUnixNano(r.CreatedAt.UnixNano())
	return r, nil
}

// Reactivations implements OperatorStore.
func (s *DB) Reactivations(ctx context.Context, incidentIDs []int64) (map[int64]Reactivation, error) {
	if err := s.check("reactivations"); err != nil {
		return nil, err
	}
	out := map[int64]Reactivation{}
	for len(incidentIDs) > 0 {
		chunk := incidentIDs[:min(len(incidentIDs), 500)]
		incidentIDs = incidentIDs[len(chunk):]
		rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+reactivationCols+` FROM reactivations WHERE incident_id IN `+
			inList(len(chunk))), int64Args(chunk)...)
		if err != nil {
			return nil, fmt.Errorf("store: reactivations: %w", err)
		}
		for rows.Next() {
			var (
				r  Reactivation
				at int64
			)
			if err := rows.Scan(&r.ID, &r.IncidentID, &r.AccountSID, &r.AccountName, &r.Via, &r.Actor,
				&r.Reason, &r.Rearmed, &r.Detail, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: reactivations: %w", err)
			}
			r.CreatedAt = fromUnixNano(at)
			out[r.IncidentID] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("store: reactivations: %w", err)
		}
	}
	return out, nil
}
