package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrClosed is returned by every method of a closed DB.
var ErrClosed = errors.New("store closed")

// Compile-time check that DB implements Store.
var _ Store = (*DB)(nil)

// SQLite is the former name of DB, from when SQLite was its only database.
type SQLite = DB

const (
	defaultListLimit = 100
	maxListLimit     = 1000
	busyTimeoutMS    = 5000
)

// DB is the Store on a SQL database: a SQLite file (Open; modernc.org/sqlite,
// pure Go), or Postgres (OpenPostgres, postgres.go), through the same code.
// What differs between the two is in dialect.go; with SQLite:
//
// It holds two pools on the same file:
//
//   - w, the write pool, has exactly one connection and begins transactions
//     with BEGIN IMMEDIATE (_txlock=immediate). Every write goes through it
//     (RecordFiring by way of the group-committing writer goroutine, see
//     groupcommit.go), so our own writers queue in Go, honouring their ctx, instead
//     of contending for SQLite's write lock: they cannot get SQLITE_BUSY from
//     each other, and the deadlock of two DEFERRED transactions both upgrading
//     from read to write cannot happen. IMMEDIATE takes the write lock at BEGIN,
//     so a read-then-write transaction (RecordFiring looks the token up, then
//     inserts) is serialised as a whole, even against another process on the
//     same file (the CLI, say), which busy_timeout then waits out. SQLite
//     allows one writer at a time anyway, so one connection costs no write
//     throughput.
//   - r, the read pool, has several connections with query_only=1. In WAL mode
//     readers neither block the writer nor are blocked by it, and see every
//     transaction committed before they start.
//
// The pragmas are DSN parameters, so database/sql applies them to every
// connection it opens in either pool, including replacements for connections
// it closed: journal_mode=WAL, synchronous=FULL (the WAL is fsynced at every
// commit: a write that returned nil survives power loss), busy_timeout and
// foreign_keys=1.
type DB struct {
	path string // as given to Open, for messages (a Postgres DSN without its password)
	pg   bool   // Postgres (dialect.go, postgres.go); false: SQLite
	w, r *sql.DB
	now  func() time.Time // updated_at of RetryAction and FinishAction

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// rearmed holds every account SID with a row in rearms (loaded at open;
	// BeginRearm adds to it), so RearmFor, on every callback's path, and
	// OpenRearms, for every account of a reconcile, read the database only
	// for accounts that were ever re-armed. This process
	// is the database's only writer (the daemon holds its lock).
	rearmed sync.Map

	// Background checkpoints (checkpoint.go).
	ck     *sql.DB       // one connection, for checkpoints only
	dirty  atomic.Uint64 // transactions committed
	ckRuns atomic.Uint64 // background checkpoints done (for tests)
	ckNow  chan struct{}
	ckDone chan struct{} // closed when checkpointLoop returns

	// Group commit on Postgres (pgbatch.go).
	firings     pgBatcher[*pgFiringOp]
	marks       pgBatcher[*pgMarkOp]
	completions pgBatcher[*pgCompleteOp]

	// Group commit (groupcommit.go).
	ops        chan *writeOp // unbuffered
	stop       chan struct{} // closed by Close
	writerDone chan struct{} // closed when writeLoop returns

	// Prepared on w (used through tx.StmtContext, which reuses them on the one connection).
	wFiringLookup  *sql.Stmt
	wIncidentByID  *sql.Stmt
	wIncidentUpsrt *sql.Stmt
	wFiringInsert  *sql.Stmt
	wActionInsert  *sql.Stmt
	wLeased        *sql.Stmt
	wClaim         *sql.Stmt
	wMark          *sql.Stmt
	wComplete      *sql.Stmt
	wIncidentNote  *sql.Stmt
	wIncidentEnd   *sql.Stmt
	wSavepoint     *sql.Stmt
	wRelease       *sql.Stmt
	wRollbackTo    *sql.Stmt
	wTripOf        *sql.Stmt
	wTripReopen    *sql.Stmt
	wEndCallsRedo  *sql.Stmt
	wIncidentReopn *sql.Stmt
	wLastWrite     *sql.Stmt // SQLite only: recordFiringFunc reads the same on Postgres

	// Prepared on r.
	rIncident     *sql.Stmt
	rCountPending *sql.Stmt
	rActions      *sql.Stmt
}

const incidentCols = `id, rule, account_sid, account_name, period, source, idempotency_token,
	usage_trigger_sid, usage_category, trigger_by, recurring, trigger_value, current_value,
	date_fired, action, dry_run, state, outcome, detail, firings, created_at, updated_at`

const incidentUpsertQuery = `INSERT INTO incidents (rule, account_sid, account_name, period,
				source, idempotency_token, usage_trigger_sid, usage_category, trigger_by,
				recurring, trigger_value, current_value, date_fired, action, dry_run,
				state, detail, firings, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 1, ?, ?)
			ON CONFLICT (rule, account_sid, period) DO UPDATE
				SET firings = firings + 1, updated_at = max(updated_at, excluded.updated_at)
			RETURNING ` + incidentCols

const actionInsertQuery = `INSERT INTO actions (incident_id, kind, account_sid, state, attempts,
				next_attempt_at, owner, lease_until, created_at, updated_at)
			VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)
			ON CONFLICT (incident_id, kind) DO NOTHING`

const markQuery = `UPDATE actions SET write_sent_at = ?, lease_until = max(lease_until, ?), updated_at = ?
			WHERE id = ? AND state = 'running' AND owner = ? AND attempts = ?`

const actionCols = `id, incident_id, kind, account_sid, state, attempts, next_attempt_at, owner,
	lease_until, write_sent_at, released, rescued, outcome, detail, progress, created_at, updated_at, step_token`

// Open opens (creating if needed) the database at path, creating its parent
// directory with mode 0700 if it is missing, and migrates the schema to the
// current version. ctx bounds the opening and the migration only.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("store: open: empty path")
	}
	s, err := open(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return s, nil
}

func open(ctx context.Context, path string) (_ *DB, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create directory: %w", err)
	}
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		return nil, errors.New("is a directory")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	s := &DB{path: path, now: time.Now}
	defer func() {
		if err != nil {
			s.closeDBs()
		}
	}()

	// The write pool is opened, checked and migrated first: it is the one
	// that may convert a new file to WAL, before any reader exists.
	// temp_store=MEMORY keeps the sub-journals of the group commit's
	// savepoints (groupcommit.go) in memory rather than in temporary files.
	// wal_autocheckpoint=0: checkpoints run in the background (checkpoint.go).
	if s.w, err = sql.Open("sqlite", dsn(abs, "_txlock=immediate", "_pragma=temp_store(MEMORY)", "_pragma=wal_autocheckpoint(0)")); err != nil {
		return nil, err
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := checkConn(ctx, s.w); err != nil {
		return nil, err
	}
	if err := migrate(ctx, s.w); err != nil {
		return nil, explain(err)
	}

	readers := max(4, runtime.GOMAXPROCS(0))
	if s.r, err = sql.Open("sqlite", dsn(abs, "_pragma=query_only(1)")); err != nil {
		return nil, err
	}
	s.r.SetMaxOpenConns(readers)
	s.r.SetMaxIdleConns(readers)
	s.r.SetConnMaxLifetime(0)
	s.r.SetConnMaxIdleTime(0)
	if err := checkConn(ctx, s.r); err != nil {
		return nil, err
	}

	if s.ck, err = sql.Open("sqlite", dsn(abs, "_pragma=wal_autocheckpoint(0)")); err != nil {
		return nil, err
	}
	s.ck.SetMaxOpenConns(1)
	s.ck.SetMaxIdleConns(1)
	s.ck.SetConnMaxLifetime(0)
	s.ck.SetConnMaxIdleTime(0)
	if err := checkConn(ctx, s.ck); err != nil {
		return nil, err
	}

	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	if err := s.loadRearmed(ctx); err != nil {
		return nil, err
	}
	s.ckNow = make(chan struct{}, 1)
	s.ckDone = make(chan struct{})
	s.ops = make(chan *writeOp)
	s.stop = make(chan struct{})
	s.writerDone = make(chan struct{})
	go s.writeLoop()
	go s.checkpointLoop()
	return s, nil
}

// dsn is a file: URI for abs (escaped, so a '?' or '#' in the path is part of
// the name) with the pragmas every connection needs plus extra.
func dsn(abs string, extra ...string) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	q := []string{
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS),
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(FULL)",
		"_pragma=foreign_keys(1)",
	}
	return u.String() + "?" + strings.Join(append(q, extra...), "&")
}

// checkConn opens a connection of db (running the DSN pragmas) and checks that
// they took: SQLite silently keeps the old journal mode where WAL is
// impossible (some network file systems), and our concurrency and durability
// reasoning depends on WAL.
func checkConn(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return explain(err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal_mode is %q, WAL is required (is the file on a network file system?)", mode)
	}
	return nil
}

// explain adds a plain-words cause to the SQLite errors Open is likely to meet.
func explain(err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("not a SQLite database (or encrypted): %w", err)
	case sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("database is corrupt: %w", err)
	case sqlite3.SQLITE_CANTOPEN:
		return fmt.Errorf("cannot open database file: %w", err)
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM:
		return fmt.Errorf("database is not writable: %w", err)
	case sqlite3.SQLITE_BUSY:
		return fmt.Errorf("database is locked by another process: %w", err)
	}
	return err
}

func (s *DB) prepare(ctx context.Context) error {
	stmts := []struct {
		db   *sql.DB
		dst  **sql.Stmt
		text string
	}{
		{s.w, &s.wFiringLookup, `SELECT incident_id FROM firings WHERE idempotency_token = ?`},
		{s.w, &s.wIncidentByID, `SELECT ` + incidentCols + ` FROM incidents WHERE id = ?`},
		{s.w, &s.wIncidentUpsrt, incidentUpsertQuery},
		{s.w, &s.wFiringInsert, `INSERT INTO firings (idempotency_token, incident_id, source,
				rule, account_sid, account_name, period, usage_trigger_sid, usage_category,
				trigger_by, recurring, trigger_value, current_value, date_fired, action,
				dry_run, received_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{s.w, &s.wActionInsert, actionInsertQuery},
		{s.w, &s.wLeased, leasedQuery},
		{s.w, &s.wClaim, claimQuery},
		{s.w, &s.wMark, markQuery},
		{s.w, &s.wComplete, completeQuery},
		{s.w, &s.wIncidentNote, `UPDATE incidents SET detail = ?, updated_at = ? WHERE id = ?`},
		{s.w, &s.wIncidentEnd, `UPDATE incidents SET state = ?, outcome = ?, detail = ?, updated_at = ? WHERE id = ?`},
		{s.w, &s.wTripOf, `SELECT id, state, outcome, detail FROM actions WHERE incident_id = ? AND kind = 'trip'`},
		{s.w, &s.wTripReopen, `UPDATE actions
			SET state = 'available', outcome = '', detail = ?, next_attempt_at = ?, released = 0, updated_at = ?
			WHERE id = ? AND ((state = 'done' AND outcome = 'skipped') OR state = 'failed')`},
		{s.w, &s.wEndCallsRedo, `UPDATE actions
			SET state = 'available', outcome = '', detail = '', next_attempt_at = ?, updated_at = ?
			WHERE incident_id = ? AND kind = 'end_calls' AND state = 'done' AND outcome = 'skipped'`},
		{s.w, &s.wIncidentReopn, `UPDATE incidents
			SET account_name = ?, usage_trigger_sid = ?, usage_category = ?, trigger_by = ?,
				recurring = ?, trigger_value = ?, current_value = ?, date_fired = ?, action = ?,
				dry_run = ?, state = 'pending', outcome = '', detail = ?,
				updated_at = max(updated_at, ?)
			WHERE id = ?
			RETURNING ` + incidentCols},
		{s.w, &s.wSavepoint, `SAVEPOINT firing`},
		{s.w, &s.wRelease, `RELEASE firing`},
		{s.w, &s.wRollbackTo, `ROLLBACK TO firing`},
		{s.w, &s.wLastWrite, lastStatusWriteQuery},

		{s.r, &s.rIncident, `SELECT ` + incidentCols + ` FROM incidents WHERE id = ?`},
		{s.r, &s.rCountPending, `SELECT count(*) FROM actions WHERE state IN ('available', 'running') AND kind <> 'reactivate'`},
		{s.r, &s.rActions, `SELECT ` + actionCols + ` FROM actions WHERE incident_id = ? ORDER BY id`},
	}
	for _, st := range stmts {
		if s.pg && (st.text == claimQuery || st.text == lastStatusWriteQuery) {
			continue // claimPG and recordFiringFunc (postgres.go)
		}
		p, err := st.db.PrepareContext(ctx, s.q(st.text))
		if err != nil {
			return fmt.Errorf("prepare %q: %w", strings.Join(strings.Fields(st.text), " "), err)
		}
		*st.dst = p
	}
	return nil
}

// loadRearmed fills s.rearmed from the rearms table (at open).
func (s *DB) loadRearmed(ctx context.Context) error {
	rows, err := s.r.QueryContext(ctx, `SELECT DISTINCT account_sid FROM rearms`)
	if err != nil {
		return fmt.Errorf("read re-arms: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sid string
		if err := rows.Scan(&sid); err != nil {
			return fmt.Errorf("read re-arms: %w", err)
		}
		s.rearmed.Store(sid, struct{}{})
	}
	return rows.Err()
}

// Close closes the database. In-flight calls finish first; later calls
// return ErrClosed. Closing twice is not an error.
func (s *DB) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.writerDone // the batch in progress, if any, finishes
		<-s.ckDone
		s.closeErr = s.closeDBs()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("store: close %s: %w", s.path, s.closeErr)
		}
	})
	return s.closeErr
}

func (s *DB) closeDBs() error {
	var errs []error
	for _, st := range []*sql.Stmt{
		s.wFiringLookup, s.wIncidentByID, s.wIncidentUpsrt, s.wFiringInsert, s.wActionInsert,
		s.wLeased, s.wClaim, s.wMark, s.wComplete, s.wIncidentNote, s.wIncidentEnd,
		s.wSavepoint, s.wRelease, s.wRollbackTo,
		s.wTripOf, s.wTripReopen, s.wEndCallsRedo, s.wIncidentReopn, s.wLastWrite,
		s.rIncident, s.rCountPending, s.rActions,
	} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	// Readers first: the last connection to close checkpoints the WAL into
	// the database file and removes it, and that is the writer's job.
	if s.r != nil && s.r != s.w { // one pool on Postgres
		errs = append(errs, s.r.Close())
	}
	if s.ck != nil {
		errs = append(errs, s.ck.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	return errors.Join(errs...)
}

func (s *DB) check(op string) error {
	if s.closed.Load() {
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	}
	return nil
}

// RecordFiring implements Store. A zero f.ReceivedAt is taken as now. The
// incident and its actions take f.ReceivedAt as CreatedAt (and the actions as
// NextAttemptAt); a repeat firing (another token, same key) moves the
// incident's UpdatedAt forward to its ReceivedAt, never back. Duplicate kinds
// in f.Actions are created once. A firing with a new token for an incident
// whose trip ended skipped or failed reopens it in the same savepoint
// (reopenTx, RecordResult.Reopened).
//
// Concurrent calls are group-committed by the writer goroutine (groupcommit.go):
// each firing is its own savepoint, so it is atomic on its own, and the batch
// shares one commit (one fsync). Nil is returned only after that commit.
func (s *DB) RecordFiring(ctx context.Context, f Firing) (RecordResult, error) {
	if err := s.check("record firing"); err != nil {
		return RecordResult{}, err
	}
	if err := validateFiring(f); err != nil {
		return RecordResult{}, fmt.Errorf("store: record firing %q: %w", f.IdempotencyToken, err)
	}
	f.AccountName = displayText(f.AccountName) // Twilio's name for the account: shown, never refused
	if f.ReceivedAt.IsZero() {
		f.ReceivedAt = s.now()
	}
	received, err := unixNano(f.ReceivedAt)
	if err != nil {
		return RecordResult{}, fmt.Errorf("store: record firing %q: received_at: %w", f.IdempotencyToken, err)
	}
	var res RecordResult
	if s.pg {
		res, err = s.recordFiringPG(ctx, &f, received) // one round trip (postgres.go)
	} else {
		res, err = submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (RecordResult, error) {
			return s.recordFiringTx(ctx, tx, &f, received)
		})
	}
	if err != nil {
		return RecordResult{}, fmt.Errorf("store: record firing %q: %w", f.IdempotencyToken, err)
	}
	return res, nil
}

// recordFiringTx does RecordFiring's work inside tx on SQLite (Postgres:
// recordFiringPG, the same as a server-side function). f is valid and
// received is f.ReceivedAt in unix nanoseconds.
func (s *DB) recordFiringTx(ctx context.Context, tx *sql.Tx, f *Firing, received int64) (res RecordResult, err error) {
	var incidentID int64
	err = tx.StmtContext(ctx, s.wFiringLookup).QueryRowContext(ctx, f.IdempotencyToken).Scan(&incidentID)
	switch {
	case err == nil:
		res.Incident, err = scanIncident(tx.StmtContext(ctx, s.wIncidentByID).QueryRowContext(ctx, incidentID))
		if err != nil {
			return res, fmt.Errorf("read incident %d: %w", incidentID, err)
		}
		res.DuplicateToken = true
		return res, nil // wrote nothing
	case !errors.Is(err, sql.ErrNoRows):
		return res, fmt.Errorf("look up token: %w", err)
	}

	if f.ApplyRearm {
		if f, err = s.rearmedFiring(ctx, tx, f); err != nil {
			return res, err
		}
	}
	dry := boolInt(f.DryRun)
	res.Incident, err = scanIncident(tx.StmtContext(ctx, s.wIncidentUpsrt).QueryRowContext(ctx,
		f.Rule, f.AccountSID, f.AccountName, f.Period, f.Source, f.IdempotencyToken,
		f.UsageTriggerSID, f.UsageCategory, f.TriggerBy, f.Recurring, f.TriggerValue,
		f.CurrentValue, f.DateFired, f.Action, dry, "", received, received))
	if err != nil {
		return res, fmt.Errorf("upsert incident: %w", err)
	}
	// The upsert adds 1 to an existing row's count, which starts at 1.
	res.NewIncident = res.Incident.Firings == 1

	if _, err = tx.StmtContext(ctx, s.wFiringInsert).ExecContext(ctx,
		f.IdempotencyToken, res.Incident.ID, f.Source, f.Rule, f.AccountSID, f.AccountName,
		f.Period, f.UsageTriggerSID, f.UsageCategory, f.TriggerBy, f.Recurring,
		f.TriggerValue, f.CurrentValue, f.DateFired, f.Action, dry, received); err != nil {
		return res, fmt.Errorf("insert firing: %w", err)
	}

	if !res.NewIncident {
		return s.reopenTx(ctx, tx, f, received, res)
	}
	// The trip is claimed by the recording process unless another action
	// holds the account.
	claim := f.ClaimBy
	if claim != nil {
		leased, err := s.accountLeased(ctx, tx, f.AccountSID, received)
		if err != nil {
			return res, err
		}
		if leased {
			claim = nil
		}
	}
	ins := tx.StmtContext(ctx, s.wActionInsert)
	for _, kind := range f.Actions {
		a := Action{IncidentID: res.Incident.ID, Kind: kind, State: ActionAvailable, NextAttemptAt: f.ReceivedAt,
			CreatedAt: f.ReceivedAt, UpdatedAt: f.ReceivedAt}
		if kind.LocksAccount() {
			a.AccountSID = f.AccountSID
		}
		if kind == ActionTrip && claim != nil && res.Trip.ID == 0 {
			a.State, a.Owner, a.LeaseUntil = ActionRunning, claim.Owner, claim.LeaseUntil
		}
		r, err := ins.ExecContext(ctx, a.IncidentID, a.Kind, a.AccountSID, a.State, received,
			a.Owner, timeCol(a.LeaseUntil), received, received)
		if err != nil {
			return res, fmt.Errorf("insert action %q: %w", kind, err)
		}
		if kind != ActionTrip || res.Trip.ID != 0 {
			continue
		}
		if a.ID, err = r.LastInsertId(); err != nil {
			return res, fmt.Errorf("insert action %q: %w", kind, err)
		}
		res.Trip = a
	}
	if res.Trip.State == ActionRunning {
		var last int64
		if err := tx.StmtContext(ctx, s.wLastWrite).QueryRowContext(ctx, f.AccountSID).Scan(&last); err != nil {
			return res, fmt.Errorf("read the account's last status write: %w", err)
		}
		res.LastStatusWrite = fromTimeCol(last)
	}
	return res, nil
}

// lastStatusWriteQuery is RecordResult.LastStatusWrite: the newest
// write_sent_at of the account's actions (found through its incidents), its
// newest reactivation, or its hold's write (holds.go). recordFiringFunc reads the same on Postgres, the
// actions by their own account_sid (index actions_written).
const lastStatusWriteQuery = `SELECT max(
	coalesce((SELECT max(a.write_sent_at) FROM incidents i JOIN actions a ON a.incident_id = i.id
		WHERE i.account_sid = ?1), 0),
	coalesce((SELECT max(created_at) FROM reactivations WHERE account_sid = ?1), 0),
	coalesce((SELECT write_sent_at FROM account_holds WHERE account_sid = ?1), 0))`

// rearmedFiring is f with the period of its re-arm generation, if a re-arm
// exception exists for its account, rule and period (Firing.ApplyRearm).
// An account never re-armed (the usual case) costs no read.
func (s *DB) rearmedFiring(ctx context.Context, tx *sql.Tx, f *Firing) (*Firing, error) {
	if _, ok := s.rearmed.Load(f.AccountSID); !ok {
		return f, nil
	}
	var gen int
	err := tx.QueryRowContext(ctx, `SELECT generation FROM rearms WHERE account_sid = ? AND rule = ? AND period = ?`,
		f.AccountSID, f.Rule, f.Period).Scan(&gen)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("read re-arm: %w", err)
	}
	g := *f
	g.Period = fmt.Sprintf("%s#%d", f.Period, gen)
	return &g, nil
}

// reopenTx runs for a firing with a new token that attached to an existing
// incident. If the incident's trip action ended skipped or failed, the
// firing is new evidence, not a repeat: a skip was decided on the firing
// that opened the incident (its value, its trigger's category, the rule as
// it was then), and the trip that ended must not swallow every later firing
// of the period. So the trip action is put back to pending, due at the
// firing's ReceivedAt (Attempts kept, so its backoff goes on; Hold cleared:
// a person's release of an earlier hold does not carry over), an end_calls
// action that was skipped because the account was not suspended is pending
// again too, and the incident takes the firing's values and is pending.
// The breaker then verifies the incident afresh, on this firing's values.
//
// Notifications already sent are not repeated (see RecordResult.Reopened).
func (s *DB) reopenTx(ctx context.Context, tx *sql.Tx, f *Firing, received int64, res RecordResult) (RecordResult, error) {
	var (
		tripID                         int64
		state, outcome, detailAsBefore string
	)
	err := tx.StmtContext(ctx, s.wTripOf).QueryRowContext(ctx, res.Incident.ID).Scan(&tripID, &state, &outcome, &detailAsBefore)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return res, nil // an incident without a trip action: nothing to reopen
	case err != nil:
		return res, fmt.Errorf("read trip action: %w", err)
	}
	if !(state == string(ActionDone) && outcome == string(OutcomeSkipped)) && state != string(ActionFailed) {
		return res, nil // pending (it will see this incident), or acted on
	}
	detail := fmt.Sprintf("reopened by a new firing (current value %s); the trip had ended %s: %s",
		f.CurrentValue, outcome, detailAsBefore)
	r, err := tx.StmtContext(ctx, s.wTripReopen).ExecContext(ctx, detail, received, received, tripID)
	if err != nil {
		return res, fmt.Errorf("reopen trip action: %w", err)
	}
	if n, err := r.RowsAffected(); err != nil || n != 1 {
		return res, fmt.Errorf("reopen trip action %d: %d rows changed (%v)", tripID, n, err)
	}
	if _, err := tx.StmtContext(ctx, s.wEndCallsRedo).ExecContext(ctx, received, received, res.Incident.ID); err != nil {
		return res, fmt.Errorf("reopen end_calls action: %w", err)
	}
	inc, err := scanIncident(tx.StmtContext(ctx, s.wIncidentReopn).QueryRowContext(ctx,
		f.AccountName, f.UsageTriggerSID, f.UsageCategory, f.TriggerBy, f.Recurring,
		f.TriggerValue, f.CurrentValue, f.DateFired, f.Action, boolInt(f.DryRun),
		detail, received, res.Incident.ID))
	if err != nil {
		return res, fmt.Errorf("reopen incident: %w", err)
	}
	res.Incident = inc
	res.Reopened = true
	return res, nil
}

// displayText is s with invalid UTF-8 and NUL bytes replaced by U+FFFD,
// which both backends store.
func displayText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func validateFiring(f Firing) error {
	var missing []string
	for _, c := range []struct{ name, v string }{
		{"IdempotencyToken", f.IdempotencyToken},
		{"Rule", f.Rule},
		{"AccountSID", f.AccountSID},
		{"Period", f.Period},
	} {
		if c.v == "" {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("invalid firing: empty %s", strings.Join(missing, ", "))
	}
	for _, c := range []struct{ name, v string }{
		{"IdempotencyToken", f.IdempotencyToken}, {"Rule", f.Rule}, {"AccountSID", f.AccountSID},
		{"Period", f.Period}, {"UsageTriggerSID", f.UsageTriggerSID},
		{"UsageCategory", f.UsageCategory}, {"TriggerBy", f.TriggerBy}, {"Recurring", f.Recurring},
		{"TriggerValue", f.TriggerValue}, {"CurrentValue", f.CurrentValue}, {"DateFired", f.DateFired},
	} {
		// Both backends store the same text: Postgres refuses a NUL and
		// invalid UTF-8.
		if !utf8.ValidString(c.v) || strings.IndexByte(c.v, 0) >= 0 {
			return fmt.Errorf("invalid firing: %s is not text (a NUL byte or invalid UTF-8)", c.name)
		}
	}
	if f.Source != SourceCallback && f.Source != SourcePoll {
		return fmt.Errorf("invalid firing: source %q, want %q or %q", f.Source, SourceCallback, SourcePoll)
	}
	for _, k := range f.Actions {
		if k == "" {
			return errors.New("invalid firing: empty action kind")
		}
	}
	if f.ClaimBy != nil && (f.ClaimBy.Owner == "" || f.ClaimBy.LeaseUntil.IsZero()) {
		return errors.New("invalid firing: a claim without owner or lease")
	}
	return nil
}

// Incident implements Store.
func (s *DB) Incident(ctx context.Context, id int64) (Incident, error) {
	if err := s.check("incident"); err != nil {
		return Incident{}, err
	}
	inc, err := scanIncident(s.rIncident.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Incident{}, fmt.Errorf("store: incident %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Incident{}, fmt.Errorf("store: incident %d: %w", id, err)
	}
	return inc, nil
}

// ListIncidents implements Store: newest CreatedAt first (ties: highest ID
// first). A Limit of 0 or less means 100; more than 1000 means 1000.
func (s *DB) ListIncidents(ctx context.Context, f IncidentFilter) ([]Incident, error) {
	if err := s.check("list incidents"); err != nil {
		return nil, err
	}
	limit := listLimit(f.Limit)
	var (
		where []string
		args  []any
	)
	if f.Rule != "" {
		where, args = append(where, "rule = ?"), append(args, f.Rule)
	}
	if f.AccountSID != "" {
		where, args = append(where, "account_sid = ?"), append(args, f.AccountSID)
	}
	q := "SELECT " + incidentCols + " FROM incidents"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at DESC, id DESC LIMIT ?"
	args = append(args, limit)

	rows, err := s.r.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list incidents: %w", err)
	}
	defer rows.Close()
	out := make([]Incident, 0, min(limit, 64))
	for rows.Next() {
		inc, err := scanIncident(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list incidents: %w", err)
		}
		out = append(out, inc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list incidents: %w", err)
	}
	return out, nil
}

func listLimit(n int) int {
	switch {
	case n <= 0:
		return defaultListLimit
	case n > maxListLimit:
		return maxListLimit
	}
	return n
}

// Actions returns every action of an incident, in creation order (none, not
// ErrNotFound, for an unknown incident). Not part of Store: for
// tests, the status page and the CLI.
func (s *DB) Actions(ctx context.Context, incidentID int64) ([]Action, error) {
	if err := s.check("actions"); err != nil {
		return nil, err
	}
	acts, err := s.queryActions(ctx, s.rActions, incidentID)
	if err != nil {
		return nil, fmt.Errorf("store: actions of incident %d: %w", incidentID, err)
	}
	return acts, nil
}

func (s *DB) queryActions(ctx context.Context, st *sql.Stmt, args ...any) ([]Action, error) {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	return scanActions(rows) // actions.go
}

type scanner interface{ Scan(dest ...any) error }

func scanIncident(row scanner) (Incident, error) {
	var (
		inc              Incident
		dry              int64
		created, updated int64
	)
	err := row.Scan(&inc.ID, &inc.Rule, &inc.AccountSID, &inc.AccountName, &inc.Period,
		&inc.Source, &inc.IdempotencyToken, &inc.UsageTriggerSID, &inc.UsageCategory,
		&inc.TriggerBy, &inc.Recurring, &inc.TriggerValue, &inc.CurrentValue, &inc.DateFired,
		&inc.Action, &dry, &inc.State, &inc.Outcome, &inc.Detail, &inc.Firings, &created, &updated)
	if err != nil {
		return Incident{}, err
	}
	inc.DryRun = dry != 0
	inc.CreatedAt, inc.UpdatedAt = fromUnixNano(created), fromUnixNano(updated)
	return inc, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// Times are stored as INTEGER unix nanoseconds (UTC by definition), which
// round-trip exactly and compare as numbers. That covers the years 1678 to
// 2262; anything outside (the zero time.Time included) is refused rather than
// silently wrapped.
var (
	minTime = time.Unix(0, -1<<63).UTC()
	maxTime = time.Unix(0, 1<<63-1).UTC()
)

func unixNano(t time.Time) (int64, error) {
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fmt.Errorf("time %s out of range", t.Format(time.RFC3339Nano))
	}
	return t.UnixNano(), nil
}

func fromUnixNano(n int64) time.Time { return time.Unix(0, n).UTC() }
