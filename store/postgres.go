package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// The store on Postgres, shared by several replicas.
//
// Claims. An action that locks an account must never be claimed while
// another action of that account holds a lease, and two replicas claiming
// at once see each other's claims only once they commit. So every
// transaction that gives an account a lease (ClaimActions, and RecordFiring
// when it records the trip already claimed) first takes a transaction-level
// advisory lock on each account it may claim for (lockAccounts), in one
// order (so two claimers cannot deadlock; if Postgres finds a deadlock all
// the same, runTx retries). The lock is held until commit, and in READ
// COMMITTED each statement sees what was committed before it started: the
// statement that reads an account's leases after taking its lock sees the
// claim of any claimer that held the lock before. The rows themselves are
// taken FOR UPDATE SKIP LOCKED, so two claimers never claim one action
// (account-less actions, notifications, rely on that alone), and a row a
// concurrent transaction changed is re-checked on its newest version.
//
// Fencing. An action's claim is its owner (a process incarnation: the
// replica's name and a random part) and its lease; MarkWriteSent and
// CompleteAction change a running action only for its owner and only while
// its lease lasts, so a stale owner's writes are refused once another could
// have taken the action over. The loops that run on one replica at a time
// (reconcile, poll) hold a row of leader_leases (Lead); its epoch grows by one
// each time the lease changes hands, and every write such a loop makes runs
// with WithFence: its transaction first locks the lease row FOR SHARE and
// checks that holder and epoch are still the caller's and the lease has not
// expired (by the database's clock), so it commits before any takeover or
// not at all.

// Advisory lock keys (the two-int form; the first is the namespace).
const (
	lockNSMigrate = 0x7562 // "ub": schema migrations
	lockNSAccount = 0x7563 // an account's claims: (ns, hashtext(account_sid))
	lockNSGuard   = 0x7564 // the guard's holds
)

// pgPoolSize is how many connections a replica opens at most.
var pgPoolSize = 16 // 48 drained a burst slower on 2 cores (232 against 274 suspensions/s)

// OpenPostgres opens the store on the Postgres database of dsn (a URL or
// key=value DSN, see pgx) and migrates its schema, in the DSN's search_path.
// Replicas opening it at once migrate it once. ctx bounds the opening and
// the migration only.
func OpenPostgres(ctx context.Context, dsn string) (*DB, error) {
	name := redactDSN(dsn)
	s, err := openPostgres(ctx, dsn, name)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres %s: %w", name, err)
	}
	return s, nil
}

func openPostgres(ctx context.Context, dsn, name string) (_ *DB, err error) {
	s := &DB{path: name, pg: true, now: time.Now}
	defer func() {
		if err != nil {
			s.closeDBs()
		}
	}()
	if s.w, err = sql.Open("pgx", dsn); err != nil {
		return nil, err
	}
	s.w.SetMaxOpenConns(pgPoolSize)
	s.w.SetMaxIdleConns(pgPoolSize)
	s.w.SetConnMaxIdleTime(5 * time.Minute)
	s.w.SetConnMaxLifetime(time.Hour)
	s.r = s.w
	if err := s.w.PingContext(ctx); err != nil {
		return nil, err
	}
	if err := migratePostgres(ctx, s.w); err != nil {
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	s.stop = make(chan struct{})
	s.writerDone = make(chan struct{})
	s.ckDone = make(chan struct{})
	close(s.writerDone) // no writer goroutine: each write is its own transaction
	close(s.ckDone)     // no checkpoints: Postgres does its own
	return s, nil
}

// Postgres reports whether the store is on Postgres, shared with other replicas.
func (s *DB) Postgres() bool { return s.pg }

// Ping checks that the database answers.
func (s *DB) Ping(ctx context.Context) error {
	if err := s.check("ping"); err != nil {
		return err
	}
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// redactDSN is dsn without its password, for messages.
func redactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		return u.Redacted()
	}
	var out []string
	for _, f := range strings.Fields(dsn) {
		if strings.HasPrefix(f, "password=") {
			f = "password=xxxxx"
		}
		out = append(out, f)
	}
	return strings.Join(out, " ")
}

// pgMigrations are the Postgres schema's versions (schema_version.version
// is how many have run). Same rules as migrations: append only. The first
// is the SQLite schema at its version 3, in Postgres' types: times and
// booleans BIGINT, ids identity columns, plus the leader leases.
var pgMigrations = []migration{
	{
		name: "incidents, firings, actions, re-arms, reactivations, leader leases",
		stmts: []string{
			`CREATE TABLE incidents (
				id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
				rule              TEXT   NOT NULL,
				account_sid       TEXT   NOT NULL,
				account_name      TEXT   NOT NULL DEFAULT '',
				period            TEXT   NOT NULL,
				source            TEXT   NOT NULL,
				idempotency_token TEXT   NOT NULL,
				usage_trigger_sid TEXT   NOT NULL DEFAULT '',
				usage_category    TEXT   NOT NULL DEFAULT '',
				trigger_by        TEXT   NOT NULL DEFAULT '',
				recurring         TEXT   NOT NULL DEFAULT '',
				trigger_value     TEXT   NOT NULL DEFAULT '',
				current_value     TEXT   NOT NULL DEFAULT '',
				date_fired        TEXT   NOT NULL DEFAULT '',
				action            TEXT   NOT NULL DEFAULT '',
				dry_run           BIGINT NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
				state             TEXT   NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
				outcome           TEXT   NOT NULL DEFAULT '',
				detail            TEXT   NOT NULL DEFAULT '',
				firings           BIGINT NOT NULL DEFAULT 1,
				created_at        BIGINT NOT NULL,
				updated_at        BIGINT NOT NULL,
				UNIQUE (rule, account_sid, period)
			)`,
			`CREATE INDEX incidents_created ON incidents (created_at DESC, id DESC)`,
			`CREATE INDEX incidents_rule_created ON incidents (rule, created_at DESC, id DESC)`,
			`CREATE INDEX incidents_account_created ON incidents (account_sid, created_at DESC, id DESC)`,
			`CREATE TABLE firings (
				idempotency_token TEXT   NOT NULL PRIMARY KEY,
				incident_id       BIGINT NOT NULL REFERENCES incidents (id),
				source            TEXT   NOT NULL,
				rule              TEXT   NOT NULL,
				account_sid       TEXT   NOT NULL,
				account_name      TEXT   NOT NULL DEFAULT '',
				period            TEXT   NOT NULL,
				usage_trigger_sid TEXT   NOT NULL DEFAULT '',
				usage_category    TEXT   NOT NULL DEFAULT '',
				trigger_by        TEXT   NOT NULL DEFAULT '',
				recurring         TEXT   NOT NULL DEFAULT '',
				trigger_value     TEXT   NOT NULL DEFAULT '',
				current_value     TEXT   NOT NULL DEFAULT '',
				date_fired        TEXT   NOT NULL DEFAULT '',
				action            TEXT   NOT NULL DEFAULT '',
				dry_run           BIGINT NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
				received_at       BIGINT NOT NULL
			)`,
			`CREATE INDEX firings_incident ON firings (incident_id, received_at)`,
			`CREATE TABLE actions (
				id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
				incident_id     BIGINT NOT NULL REFERENCES incidents (id),
				kind            TEXT   NOT NULL CHECK (kind <> ''),
				account_sid     TEXT   NOT NULL DEFAULT '',
				state           TEXT   NOT NULL CHECK (state IN ('available', 'running', 'held', 'done', 'failed')),
				attempts        BIGINT NOT NULL DEFAULT 0,
				next_attempt_at BIGINT NOT NULL,
				owner           TEXT   NOT NULL DEFAULT '',
				lease_until     BIGINT NOT NULL DEFAULT 0,
				write_sent_at   BIGINT NOT NULL DEFAULT 0,
				released        BIGINT NOT NULL DEFAULT 0 CHECK (released IN (0, 1)),
				rescued         BIGINT NOT NULL DEFAULT 0 CHECK (rescued IN (0, 1)),
				outcome         TEXT   NOT NULL DEFAULT '',
				detail          TEXT   NOT NULL DEFAULT '',
				progress        TEXT   NOT NULL DEFAULT '',
				created_at      BIGINT NOT NULL,
				updated_at      BIGINT NOT NULL,
				-- 1 while a running trip's attempt holds a place under the guard (AdmitSuspension)
				guard_admitted  BIGINT NOT NULL DEFAULT 0 CHECK (guard_admitted IN (0, 1)),
				UNIQUE (incident_id, kind),
				CHECK ((state = 'running') = (owner <> ''))
			)`,
			`CREATE INDEX actions_due ON actions (next_attempt_at, id) WHERE state = 'available'`,
			`CREATE INDEX actions_leased ON actions (account_sid, lease_until) WHERE lease_until > 0`,
			`CREATE INDEX actions_running ON actions (lease_until) WHERE state = 'running'`,
			`CREATE INDEX actions_held ON actions (id) WHERE state = 'held'`,
			`CREATE INDEX actions_suspended ON actions (updated_at) WHERE kind = 'trip' AND outcome = 'suspended'`,
			`CREATE TABLE rearms (
				account_sid   TEXT   NOT NULL,
				rule          TEXT   NOT NULL,
				period        TEXT   NOT NULL,
				generation    BIGINT NOT NULL CHECK (generation >= 2),
				allowance     TEXT   NOT NULL,
				trigger_sid   TEXT   NOT NULL DEFAULT '',
				trigger_value TEXT   NOT NULL DEFAULT '',
				expires_at    BIGINT NOT NULL,
				restored_at   BIGINT NOT NULL DEFAULT 0,
				created_at    BIGINT NOT NULL,
				updated_at    BIGINT NOT NULL,
				PRIMARY KEY (account_sid, rule, period)
			)`,
			`CREATE INDEX rearms_open ON rearms (expires_at) WHERE restored_at = 0`,
			`CREATE TABLE reactivations (
				id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
				incident_id  BIGINT NOT NULL UNIQUE REFERENCES incidents (id),
				account_sid  TEXT   NOT NULL,
				account_name TEXT   NOT NULL DEFAULT '',
				via          TEXT   NOT NULL CHECK (via IN ('manual', 'scheduled')),
				actor        TEXT   NOT NULL,
				reason       TEXT   NOT NULL,
				rearmed      BIGINT NOT NULL DEFAULT 0,
				detail       TEXT   NOT NULL DEFAULT '',
				created_at   BIGINT NOT NULL
			)`,
			`CREATE INDEX reactivations_account ON reactivations (account_sid, created_at DESC)`,
			// One row per loop that runs on one replica at a time. The
			// epoch grows by one each time the lease changes hands; times
			// are the database's clock, so the replicas' clocks do not matter.
			`CREATE TABLE leader_leases (
				loop       TEXT        NOT NULL PRIMARY KEY,
				holder     TEXT        NOT NULL,
				epoch      BIGINT      NOT NULL,
				expires_at TIMESTAMPTZ NOT NULL
			)`,
		},
	},
	{
		// As SQLite's migrations 4 and 5: approvals, and velocity rules'
		// step firings with the actions that belong to a step firing.
		name: "approvals, velocity steps",
		stmts: []string{
			`CREATE TABLE approvals (
				incident_id BIGINT NOT NULL PRIMARY KEY REFERENCES incidents (id),
				decision    TEXT   NOT NULL CHECK (decision IN ('approve', 'veto')),
				actor       TEXT   NOT NULL,
				reason      TEXT   NOT NULL,
				created_at  BIGINT NOT NULL
			)`,
			`CREATE TABLE velocity_steps (
				idempotency_token TEXT   NOT NULL PRIMARY KEY,
				rule              TEXT   NOT NULL,
				account_sid       TEXT   NOT NULL,
				account_name      TEXT   NOT NULL DEFAULT '',
				usage_trigger_sid TEXT   NOT NULL DEFAULT '',
				usage_category    TEXT   NOT NULL DEFAULT '',
				trigger_by        TEXT   NOT NULL DEFAULT '',
				trigger_value     TEXT   NOT NULL DEFAULT '',
				current_value     TEXT   NOT NULL DEFAULT '',
				date_fired        TEXT   NOT NULL DEFAULT '',
				fired_at          BIGINT NOT NULL,
				received_at       BIGINT NOT NULL,
				stale             BIGINT NOT NULL DEFAULT 0 CHECK (stale IN (0, 1))
			)`,
			`CREATE INDEX velocity_steps_account ON velocity_steps (rule, account_sid, fired_at)`,
			`ALTER TABLE actions ALTER COLUMN incident_id DROP NOT NULL`,
			`ALTER TABLE actions ADD COLUMN step_token TEXT NOT NULL DEFAULT ''`,
			`ALTER TABLE actions ADD CONSTRAINT actions_incident_or_step CHECK ((incident_id IS NULL) = (step_token <> ''))`,
			`CREATE UNIQUE INDEX actions_step ON actions (step_token, kind) WHERE step_token <> ''`,
		},
	},
}

// migratePostgres brings the schema to len(pgMigrations) in one transaction
// under an advisory transaction lock, so replicas that start together
// migrate once: the others wait, then find the schema current.
func migratePostgres(ctx context.Context, db *sql.DB) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockNSMigrate); err != nil {
		return fmt.Errorf("lock for migration: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
			app     TEXT   NOT NULL PRIMARY KEY CHECK (app = 'usagebreaker'),
			version BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	var version int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version WHERE app = 'usagebreaker'`).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var tables int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables
			WHERE table_schema = current_schema() AND table_name IN ('incidents', 'actions', 'firings')`).Scan(&tables); err != nil {
			return fmt.Errorf("read schema: %w", err)
		}
		if tables != 0 {
			return errors.New("the schema has usagebreaker's tables but no schema version")
		}
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case version > len(pgMigrations):
		return fmt.Errorf("schema version %d is newer than this build knows (%d): downgrade is not supported", version, len(pgMigrations))
	case version == len(pgMigrations):
		return tx.Commit()
	}
	for i := version; i < len(pgMigrations); i++ {
		for _, stmt := range pgMigrations[i].stmts {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d (%s): %w", i+1, pgMigrations[i].name, err)
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (app, version) VALUES ('usagebreaker', $1)
		ON CONFLICT (app) DO UPDATE SET version = excluded.version`, len(pgMigrations)); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	return tx.Commit()
}

// lockAccounts takes the advisory transaction lock of each account, in key
// order. Collisions of the hash only serialise two accounts' claims.
func lockAccounts(ctx context.Context, tx *sql.Tx, accounts []string) error {
	if len(accounts) == 0 {
		return nil
	}
	if len(accounts) == 1 {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockNSAccount, accounts[0]); err != nil {
			return fmt.Errorf("lock account: %w", err)
		}
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT count(pg_advisory_xact_lock($1, k))
		FROM (SELECT DISTINCT hashtext(a) AS k FROM unnest($2::TEXT[]) a ORDER BY k) o`, lockNSAccount, accounts); err != nil {
		return fmt.Errorf("lock accounts: %w", err)
	}
	return nil
}

// lockGuard serialises the guard's holds across replicas.
func lockGuard(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockNSGuard); err != nil {
		return fmt.Errorf("lock guard: %w", err)
	}
	return nil
}

// pgClaimQuery is claimQuery on Postgres, for the accounts $5 the
// transaction has locked (and actions of no account): the candidates are
// locked FOR UPDATE SKIP LOCKED (Postgres allows no window function in that
// SELECT, so the one-per-account pick is a second step), and the UPDATE
// checks the state again.
var pgClaimQuery = `WITH cand AS (
		SELECT a.id, a.account_sid, a.kind, a.next_attempt_at
		FROM actions a
		WHERE a.state = 'available' AND a.next_attempt_at <= $3
			AND (a.account_sid = '' OR a.account_sid = ANY ($5::TEXT[]))
			AND NOT ((a.kind = 'end_calls' OR a.kind LIKE 'notify:%') AND EXISTS (
				SELECT 1 FROM actions t WHERE t.incident_id = a.incident_id AND t.kind = 'trip'
					AND t.state NOT IN ('done', 'failed')))
			AND (a.account_sid = '' OR NOT EXISTS (
				SELECT 1 FROM actions o WHERE o.account_sid = a.account_sid AND o.lease_until > $3 AND o.id <> a.id))
		ORDER BY a.kind <> 'trip', a.next_attempt_at, a.id
		LIMIT $6
		FOR UPDATE OF a SKIP LOCKED
	), pick AS (
		SELECT id FROM (
			SELECT id, kind, next_attempt_at,
				row_number() OVER (
					PARTITION BY CASE WHEN account_sid = '' THEN 'action ' || id ELSE account_sid END
					ORDER BY kind <> 'trip', next_attempt_at, id) AS nth
			FROM cand) c
		WHERE nth = 1
		ORDER BY kind <> 'trip', next_attempt_at, id
		LIMIT $4
	)
	UPDATE actions SET state = 'running', owner = $1, lease_until = $2, updated_at = $3
	FROM pick WHERE actions.id = pick.id AND actions.state = 'available'
	RETURNING ` + pgActionCols

// pgActionCols is actionCols qualified (UPDATE ... FROM has two tables).
var pgActionCols = "actions." + strings.Join(strings.Split(strings.Join(strings.Fields(actionCols), " "), ", "), ", actions.")

// claimPG is ClaimActions' work on Postgres: which accounts have due
// actions (outside a transaction: most looks find nothing, and the claim
// checks everything again), then, in one transaction, their locks and the
// claim.
func (s *DB) claimPG(ctx context.Context, owner string, lease, at int64, limit int) ([]Action, error) {
	rows, err := s.w.QueryContext(ctx, `SELECT DISTINCT account_sid FROM (
			SELECT account_sid FROM actions WHERE state = 'available' AND next_attempt_at <= $1
			ORDER BY kind <> 'trip', next_attempt_at, id LIMIT $2) d`, at, 8*limit)
	if err != nil {
		return nil, fmt.Errorf("due accounts: %w", err)
	}
	accounts := []string{}
	due := false
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			rows.Close()
			return nil, fmt.Errorf("due accounts: %w", err)
		}
		due = true
		if a != "" {
			accounts = append(accounts, a)
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return nil, fmt.Errorf("due accounts: %w", err)
	}
	rows.Close()
	if !due {
		return nil, nil
	}
	sort.Strings(accounts)
	return submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) ([]Action, error) {
		if err := lockAccounts(ctx, tx, accounts); err != nil {
			return nil, err
		}
		rows, err := tx.QueryContext(ctx, pgClaimQuery, owner, lease, at, limit, accounts, 8*limit)
		if err != nil {
			return nil, err
		}
		return scanActions(rows)
	})
}

// insertActionsPG creates a new incident's actions in one statement (one
// round trip): f.Actions, each kind once, the first trip claimed by claim
// if set. It returns the trip as stored (zero ID: none).
func insertActionsPG(ctx context.Context, tx *sql.Tx, f *Firing, incidentID int64, claim *Claim, received int64) (Action, error) {
	var (
		trip Action
		vals []string
		args []any
		seen = map[ActionKind]bool{}
	)
	for _, kind := range f.Actions {
		if seen[kind] {
			continue
		}
		seen[kind] = true
		a := Action{IncidentID: incidentID, Kind: kind, State: ActionAvailable, NextAttemptAt: f.ReceivedAt,
			CreatedAt: f.ReceivedAt, UpdatedAt: f.ReceivedAt}
		if kind.LocksAccount() {
			a.AccountSID = f.AccountSID
		}
		if kind == ActionTrip {
			if claim != nil {
				a.State, a.Owner, a.LeaseUntil = ActionRunning, claim.Owner, claim.LeaseUntil
			}
			trip = a
		}
		n := len(args)
		vals = append(vals, fmt.Sprintf("($%d, $%d, $%d, $%d, 0, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8, n+9))
		args = append(args, a.IncidentID, string(a.Kind), a.AccountSID, string(a.State), received, a.Owner, timeCol(a.LeaseUntil), received, received)
	}
	if len(vals) == 0 {
		return trip, nil
	}
	rows, err := tx.QueryContext(ctx, `INSERT INTO actions (incident_id, kind, account_sid, state, attempts,
			next_attempt_at, owner, lease_until, created_at, updated_at)
		VALUES `+strings.Join(vals, ", ")+`
		ON CONFLICT (incident_id, kind) DO NOTHING
		RETURNING id, kind`, args...)
	if err != nil {
		return Action{}, fmt.Errorf("insert actions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id   int64
			kind string
		)
		if err := rows.Scan(&id, &kind); err != nil {
			return Action{}, fmt.Errorf("insert actions: %w", err)
		}
		if ActionKind(kind) == ActionTrip {
			trip.ID = id
		}
	}
	if err := rows.Err(); err != nil {
		return Action{}, fmt.Errorf("insert actions: %w", err)
	}
	if trip.ID == 0 {
		return Action{}, nil // no trip among the kinds (or it existed)
	}
	return trip, nil
}

// AdmitSuspension is the blast-radius guard's admission on a store shared
// by several replicas: running trip action id of owner may suspend now
// unless a suspension is held, or the suspensions recorded since since plus
// those admitted and still running (on any replica) reach max. Admission is
// serialised across replicas (an advisory transaction lock) and recorded on
// the action, so it counts for every replica until the attempt completes
// (the completion clears it, in the transaction that records the
// suspension: never counted twice, never missed). It returns whether it
// admitted, and the counts it decided on.
func (s *DB) AdmitSuspension(ctx context.Context, id int64, owner string, since, now time.Time, max int) (ok bool, suspended, held int, err error) {
	if !s.pg {
		return false, 0, 0, errors.New("store: admit suspension: only on Postgres")
	}
	from, err := unixNano(since)
	if err != nil {
		return false, 0, 0, fmt.Errorf("store: admit suspension: %w", err)
	}
	at, err := unixNano(now)
	if err != nil {
		return false, 0, 0, fmt.Errorf("store: admit suspension: %w", err)
	}
	type admission struct {
		ok              bool
		suspended, held int
	}
	a, err := submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (admission, error) {
		var a admission
		if err := lockGuard(ctx, tx); err != nil {
			return a, err
		}
		var inFlight int
		if err := tx.QueryRowContext(ctx, `SELECT
				count(*) FILTER (WHERE state = 'held'),
				count(*) FILTER (WHERE kind = 'trip' AND outcome = 'suspended' AND updated_at >= $1),
				count(*) FILTER (WHERE kind = 'trip' AND state = 'running' AND guard_admitted = 1 AND lease_until > $2 AND id <> $3)
			FROM actions WHERE state = 'held' OR (kind = 'trip' AND (outcome = 'suspended' OR state = 'running'))`,
			from, at, id).Scan(&a.held, &a.suspended, &inFlight); err != nil {
			return a, err
		}
		a.suspended += inFlight
		if a.held > 0 || a.suspended >= max {
			return a, nil
		}
		r, err := tx.ExecContext(ctx, `UPDATE actions SET guard_admitted = 1
			WHERE id = $1 AND state = 'running' AND owner = $2 AND lease_until > $3`, id, owner, at)
		if err != nil {
			return a, err
		}
		if n, err := r.RowsAffected(); err != nil || n == 0 {
			return a, ErrNotFound // the claim was lost
		}
		a.ok = true
		return a, nil
	})
	if err != nil {
		return false, 0, 0, fmt.Errorf("store: admit suspension of action %d: %w", id, err)
	}
	return a.ok, a.suspended, a.held, nil
}

// ErrFenced is returned by a write made with WithFence when the caller no
// longer holds the loop's lease at that epoch: nothing was written.
var ErrFenced = errors.New("leader lease lost: the write was refused")

// Fence is a leader's lease of a loop at an epoch (Lead).
type Fence struct {
	Loop   string
	Holder string
	Epoch  int64
}

type fenceKey struct{}

// WithFence makes every store write made with ctx check, in its
// transaction, that f is still the loop's lease (on Postgres; SQLite has one
// process, always the leader). A write that finds it lost returns ErrFenced.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

func fenceOf(ctx context.Context) (Fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(Fence)
	return f, ok
}

// checkFence locks f's lease row FOR SHARE (a takeover waits until tx ends)
// and checks that it is still f and unexpired.
func (s *DB) checkFence(ctx context.Context, tx *sql.Tx, f Fence) error {
	var ok bool
	err := tx.QueryRowContext(ctx, `SELECT expires_at > clock_timestamp() FROM leader_leases
		WHERE loop = $1 AND holder = $2 AND epoch = $3 FOR SHARE`, f.Loop, f.Holder, f.Epoch).Scan(&ok)
	if errors.Is(err, sql.ErrNoRows) || err == nil && !ok {
		return fmt.Errorf("%s (epoch %d of %s): %w", f.Loop, f.Epoch, f.Holder, ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("check the %s lease: %w", f.Loop, err)
	}
	return nil
}

// Lead takes or renews holder's lease of loop for ttl, by the database's
// clock. It returns the lease's epoch and true when holder has it: renewed
// (same epoch) if holder had it and it had not expired, taken (epoch + 1)
// if it was free or expired. False when another holder's lease is live.
// On SQLite it always succeeds with epoch 1: the process is alone.
func (s *DB) Lead(ctx context.Context, loop, holder string, ttl time.Duration) (Fence, bool, error) {
	f := Fence{Loop: loop, Holder: holder, Epoch: 1}
	if !s.pg {
		return f, true, s.check("lead")
	}
	if err := s.check("lead"); err != nil {
		return Fence{}, false, err
	}
	err := s.w.QueryRowContext(ctx, `INSERT INTO leader_leases AS l (loop, holder, epoch, expires_at)
		VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 microsecond')
		ON CONFLICT (loop) DO UPDATE SET
			holder = excluded.holder,
			epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > clock_timestamp() THEN l.epoch ELSE l.epoch + 1 END,
			expires_at = excluded.expires_at
		WHERE l.holder = excluded.holder OR l.expires_at <= clock_timestamp()
		RETURNING epoch`, loop, holder, ttl.Microseconds()).Scan(&f.Epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return Fence{}, false, nil
	}
	if err != nil {
		return Fence{}, false, fmt.Errorf("store: lead %s: %w", loop, err)
	}
	return f, true, nil
}

// Resign ends f's lease now, if it is still f, so another replica takes the
// loop over without waiting for it to expire.
func (s *DB) Resign(ctx context.Context, f Fence) error {
	if !s.pg {
		return nil
	}
	if _, err := s.w.ExecContext(ctx, `UPDATE leader_leases SET expires_at = clock_timestamp()
		WHERE loop = $1 AND holder = $2 AND epoch = $3`, f.Loop, f.Holder, f.Epoch); err != nil {
		return fmt.Errorf("store: resign %s: %w", f.Loop, err)
	}
	return nil
}

// Leader returns the loop's current lease (holder and epoch) and whether it
// is live, for the admin API and tests.
func (s *DB) Leader(ctx context.Context, loop string) (Fence, bool, error) {
	if !s.pg {
		return Fence{}, false, nil
	}
	f := Fence{Loop: loop}
	var live bool
	err := s.w.QueryRowContext(ctx, `SELECT holder, epoch, expires_at > clock_timestamp() FROM leader_leases WHERE loop = $1`, loop).
		Scan(&f.Holder, &f.Epoch, &live)
	if errors.Is(err, sql.ErrNoRows) {
		return Fence{}, false, nil
	}
	if err != nil {
		return Fence{}, false, fmt.Errorf("store: leader of %s: %w", loop, err)
	}
	return f, live, nil
}
