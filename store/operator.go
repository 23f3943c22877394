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

// Action kinds besides ActionTrip. Each is one row per incident
// (UNIQUE(incident_id, kind)), run by the breaker's executor.
const (
	// KindNotifyPrefix + notifier name: tell that notifier about the incident,
	// once, after the trip action finished.
	KindNotifyPrefix = "notify:"
	// KindGuardPrefix + notifier name: the one page a notifier gets when the
	// guard starts holding suspensions (attached to the first held incident).
	KindGuardPrefix = "guard:"
	// ActionEndCalls ends the subaccount's in-progress calls after the trip
	// action suspended it.
	ActionEndCalls = "end_calls"
	// ActionReactivate is a scheduled reactivation (a rule's reactivate
	// policy); its NextAttemptAt is when it is due.
	ActionReactivate = "reactivate"
)

// Action.Hold values.
const (
	HoldNone     = 0
	HoldHeld     = 1 // the guard holds this trip: it is not run until released
	HoldReleased = 2 // released by a person: it runs past the guard
)

// Reactivation.Via values.
const (
	ViaManual    = "manual"
	ViaScheduled = "scheduled"
)

// ErrExists is returned when a row that may exist only once already does.
var ErrExists = errors.New("already exists")

// Scheduled is an action to create with FinishActionThen, due at At.
type Scheduled struct {
	Kind string
	At   time.Time
}

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
// exceptions, the reactivation audit, the guard's holds and multi-part
// progress. Same concurrency contract as Store.
type OperatorStore interface {
	// FinishActionThen is FinishAction that also creates the given actions for
	// the same incident in the same transaction (kinds already present are
	// left as they are).
	FinishActionThen(ctx context.Context, id int64, state, outcome, detail string, then []Scheduled) error
	// SetActionProgress records what a pending multi-part action already did.
	SetActionProgress(ctx context.Context, id int64, progress string) error
	// IncidentActions returns the actions of each incident, in creation order.
	IncidentActions(ctx context.Context, incidentIDs []int64) (map[int64][]Action, error)

	// HoldAction parks a pending trip action for the guard (Hold=HoldHeld; it
	// is not returned by PendingActions until released) and puts detail on
	// its incident. If no other action was held, it also creates a pending
	// action of each kind in pages for the same incident and reports paged.
	HoldAction(ctx context.Context, id int64, detail string, pages []string) (paged bool, err error)
	// ReleaseHeld makes every held action due now, marked HoldReleased, and
	// returns how many there were.
	ReleaseHeld(ctx context.Context, now time.Time, detail string) (int, error)
	// CountHeld counts the actions the guard holds.
	CountHeld(ctx context.Context) (int, error)
	// CountSuspensions counts trip actions that finished with outcome
	// "suspended" at or after since.
	CountSuspensions(ctx context.Context, since time.Time) (int, error)

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

	// RecordReactivation records a reactivation; ErrExists if the incident
	// was reactivated before. CreatedAt zero means now.
	RecordReactivation(ctx context.Context, r Reactivation) (Reactivation, error)
	// Reactivations returns the reactivation of each incident that has one.
	Reactivations(ctx context.Context, incidentIDs []int64) (map[int64]Reactivation, error)
}

var _ OperatorStore = (*SQLite)(nil)

// SetClock sets the clock of the times the store stamps itself (updated_at
// of actions, for the guard's window). The daemon gives it its own clock, so
// that a simulated clock moves both together. Call it before use.
func (s *SQLite) SetClock(now func() time.Time) {
	if now != nil {
		s.now = now
	}
}

// write runs fn in one IMMEDIATE transaction on the write connection.
func (s *SQLite) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) (err error) {
	if err := s.check(op); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: %s: %w", op, err)
		}
	}()
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

func insertScheduled(ctx context.Context, tx *sql.Tx, incidentID int64, then []Scheduled, now int64) error {
	for _, sc := range then {
		if sc.Kind == "" {
			return errors.New("scheduled action with an empty kind")
		}
		at, err := unixNano(sc.At)
		if err != nil {
			return fmt.Errorf("scheduled %s: %w", sc.Kind, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO actions (incident_id, kind, state, attempts,
				next_attempt_at, created_at, updated_at)
			VALUES (?, ?, 'pending', 0, ?, ?, ?)
			ON CONFLICT (incident_id, kind) DO NOTHING`, incidentID, sc.Kind, at, now, now); err != nil {
			return fmt.Errorf("insert action %q: %w", sc.Kind, err)
		}
	}
	return nil
}

// FinishActionThen implements OperatorStore.
func (s *SQLite) FinishActionThen(ctx context.Context, id int64, state, outcome, detail string, then []Scheduled) error {
	if err := s.check("finish action"); err != nil {
		return err
	}
	if err := s.finishAction(ctx, id, state, outcome, detail, then); err != nil {
		return fmt.Errorf("store: finish action %d: %w", id, err)
	}
	return nil
}

// SetActionProgress implements OperatorStore (ErrNotFound unless pending).
func (s *SQLite) SetActionProgress(ctx context.Context, id int64, progress string) error {
	return s.write(ctx, fmt.Sprintf("set progress of action %d", id), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE actions SET progress = ? WHERE id = ? AND state = 'pending'`, progress, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
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

// IncidentActions implements OperatorStore.
func (s *SQLite) IncidentActions(ctx context.Context, incidentIDs []int64) (map[int64][]Action, error) {
	if err := s.check("incident actions"); err != nil {
		return nil, err
	}
	out := map[int64][]Action{}
	for len(incidentIDs) > 0 {
		chunk := incidentIDs[:min(len(incidentIDs), 500)]
		incidentIDs = incidentIDs[len(chunk):]
		rows, err := s.r.QueryContext(ctx, `SELECT `+actionCols+` FROM actions WHERE incident_id IN `+
			inList(len(chunk))+` ORDER BY id`, int64Args(chunk)...)
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
			a                      Action
			next, created, updated int64
		)
		if err := rows.Scan(&a.ID, &a.IncidentID, &a.Kind, &a.State, &a.Attempts, &next,
			&a.Outcome, &a.Detail, &created, &updated, &a.Hold, &a.Progress); err != nil {
			return nil, err
		}
		a.NextAttemptAt, a.CreatedAt, a.UpdatedAt = fromUnixNano(next), fromUnixNano(created), fromUnixNano(updated)
		out = append(out, a)
	}
	return out, rows.Err()
}

// HoldAction implements OperatorStore. Only a pending trip action that is
// not held or released can be held (else ErrNotFound).
func (s *SQLite) HoldAction(ctx context.Context, id int64, detail string, pages []string) (paged bool, err error) {
	err = s.write(ctx, fmt.Sprintf("hold action %d", id), func(tx *sql.Tx) error {
		now, err := unixNano(s.now())
		if err != nil {
			return err
		}
		var others int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM actions WHERE hold = 1 AND id <> ?`, id).Scan(&others); err != nil {
			return err
		}
		var incidentID int64
		err = tx.QueryRowContext(ctx, `UPDATE actions
			SET hold = 1, next_attempt_at = ?, detail = ?, updated_at = ?
			WHERE id = ? AND state = 'pending' AND kind = 'trip' AND hold = 0
			RETURNING incident_id`, int64(1<<63-1), detail, now, id).Scan(&incidentID)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE incidents SET detail = ?, updated_at = ? WHERE id = ?`, detail, now, incidentID); err != nil {
			return err
		}
		if others == 0 && len(pages) > 0 {
			sc := make([]Scheduled, len(pages))
			for i, k := range pages {
				sc[i] = Scheduled{Kind: k, At: fromUnixNano(now)}
			}
			if err := insertScheduled(ctx, tx, incidentID, sc, now); err != nil {
				return err
			}
			paged = true
		}
		return nil
	})
	return paged, err
}

// ReleaseHeld implements OperatorStore; detail goes on each released incident.
func (s *SQLite) ReleaseHeld(ctx context.Context, now time.Time, detail string) (n int, err error) {
	err = s.write(ctx, "release held actions", func(tx *sql.Tx) error {
		at, err := unixNano(now)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE incidents SET detail = ?, updated_at = ?
			WHERE id IN (SELECT incident_id FROM actions WHERE hold = 1 AND state = 'pending')`, detail, at); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE actions SET hold = 2, next_attempt_at = ?, detail = ?, updated_at = ?
			WHERE hold = 1 AND state = 'pending'`, at, detail, at)
		if err != nil {
			return err
		}
		m, err := res.RowsAffected()
		n = int(m)
		return err
	})
	return n, err
}

// CountHeld implements OperatorStore.
func (s *SQLite) CountHeld(ctx context.Context) (int, error) {
	return s.count(ctx, "count held actions", `SELECT count(*) FROM actions WHERE hold = 1 AND state = 'pending'`)
}

// CountSuspensions implements OperatorStore.
func (s *SQLite) CountSuspensions(ctx context.Context, since time.Time) (int, error) {
	at, err := unixNano(since)
	if err != nil {
		return 0, fmt.Errorf("store: count suspensions: %w", err)
	}
	return s.count(ctx, "count suspensions", `SELECT count(*) FROM actions
		WHERE kind = 'trip' AND outcome = 'suspended' AND updated_at >= ?`, at)
}

func (s *SQLite) count(ctx context.Context, op, q string, args ...any) (int, error) {
	if err := s.check(op); err != nil {
		return 0, err
	}
	var n int
	if err := s.r.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
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

// BeginRearm implements OperatorStore.
func (s *SQLite) BeginRearm(ctx context.Context, accountSID, rule, period, allowance string, expiresAt time.Time) (r Rearm, err error) {
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
		r, err = scanRearm(tx.QueryRowContext(ctx, `INSERT INTO rearms (account_sid, rule, period,
				generation, allowance, expires_at, created_at, updated_at)
			VALUES (?, ?, ?, 2, ?, ?, ?, ?)
			ON CONFLICT (account_sid, rule, period) DO UPDATE
				SET generation = generation + 1, allowance = excluded.allowance, trigger_sid = '',
					trigger_value = '', expires_at = excluded.expires_at, restored_at = 0,
					updated_at = excluded.updated_at
			RETURNING `+rearmCols, accountSID, rule, period, allowance, exp, now, now))
		return err
	})
	return r, err
}

// CompleteRearm implements OperatorStore.
func (s *SQLite) CompleteRearm(ctx context.Context, accountSID, rule, period string, generation int, triggerSID, triggerValue string) error {
	return s.write(ctx, "complete re-arm", func(tx *sql.Tx) error {
		now, err := unixNano(s.now())
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE rearms SET trigger_sid = ?, trigger_value = ?, updated_at = ?
			WHERE account_sid = ? AND rule = ? AND period = ? AND generation = ?`,
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
func (s *SQLite) RearmFor(ctx context.Context, accountSID, rule, period string) (Rearm, error) {
	if err := s.check("re-arm"); err != nil {
		return Rearm{}, err
	}
	if _, ok := s.rearmed.Load(accountSID); !ok {
		return Rearm{}, ErrNotFound // no re-arm ever: no read on the callback's path
	}
	r, err := scanRearm(s.r.QueryRowContext(ctx, `SELECT `+rearmCols+` FROM rearms
		WHERE account_sid = ? AND rule = ? AND period = ?`, accountSID, rule, period))
	if errors.Is(err, sql.ErrNoRows) {
		return Rearm{}, ErrNotFound
	}
	if err != nil {
		return Rearm{}, fmt.Errorf("store: re-arm: %w", err)
	}
	return r, nil
}

// OpenRearms implements OperatorStore.
func (s *SQLite) OpenRearms(ctx context.Context, accountSID string, now time.Time) ([]Rearm, error) {
	if err := s.check("open re-arms"); err != nil {
		return nil, err
	}
	at, err := unixNano(now)
	if err != nil {
		return nil, fmt.Errorf("store: open re-arms: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+rearmCols+` FROM rearms
		WHERE account_sid = ? AND expires_at > ? ORDER BY rule, period`, accountSID, at)
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
func (s *SQLite) CountExpiredRearms(ctx context.Context, now time.Time) (int, error) {
	at, err := unixNano(now)
	if err != nil {
		return 0, fmt.Errorf("store: count expired re-arms: %w", err)
	}
	return s.count(ctx, "count expired re-arms", `SELECT count(*) FROM rearms WHERE restored_at = 0 AND expires_at <= ?`, at)
}

// MarkRearmsRestored implements OperatorStore.
func (s *SQLite) MarkRearmsRestored(ctx context.Context, now time.Time) (n int, err error) {
	err = s.write(ctx, "mark re-arms restored", func(tx *sql.Tx) error {
		at, err := unixNano(now)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE rearms SET restored_at = ?, updated_at = ?
			WHERE restored_at = 0 AND expires_at <= ?`, at, at, at)
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
func (s *SQLite) RecordReactivation(ctx context.Context, r Reactivation) (out Reactivation, err error) {
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
		err = tx.QueryRowContext(ctx, `INSERT INTO reactivations (incident_id, account_sid, account_name,
				via, actor, reason, rearmed, detail, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			r.IncidentID, r.AccountSID, r.AccountName, r.Via, r.Actor, r.Reason, r.Rearmed, r.Detail, at).Scan(&r.ID)
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
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
func (s *SQLite) Reactivations(ctx context.Context, incidentIDs []int64) (map[int64]Reactivation, error) {
	if err := s.check("reactivations"); err != nil {
		return nil, err
	}
	out := map[int64]Reactivation{}
	for len(incidentIDs) > 0 {
		chunk := incidentIDs[:min(len(incidentIDs), 500)]
		incidentIDs = incidentIDs[len(chunk):]
		rows, err := s.r.QueryContext(ctx, `SELECT `+reactivationCols+` FROM reactivations WHERE incident_id IN `+
			inList(len(chunk)), int64Args(chunk)...)
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
