package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// The store on Postgres, shared by several replicas.
//
// Claims. An action that locks an account must never be claimed while
// another action of that account holds a lease, and two replicas claiming
// at once see each other's claims only once they commit. So every
// transaction that gives an account a lease (claim_actions, and
// record_firing when it records the trip already claimed: server-side
// functions, one round trip each) first takes a transaction-level advisory
// lock on each account it may claim for, in one order (hashtext's, so two
// claimers cannot deadlock; if Postgres finds a deadlock all the same, the
// statement is retried). The lock is held until commit, and in READ
// COMMITTED each statement of a function sees what was committed before it
// started: the statement that reads an account's leases after taking its
// lock sees the claim of any claimer that held the lock before. The rows
// themselves are taken FOR UPDATE SKIP LOCKED, so two claimers never claim
// one action (account-less actions, notifications, rely on that alone), and
// a row a concurrent transaction changed is re-checked on its newest version.
//
// Round trips. A write on the suspension path is one statement, sent
// outside an explicit transaction (runOne): a firing (record_firing), a
// claim (claim_actions), a write mark, a completion (one statement with
// data-modifying CTEs). Postgres commits each before it answers.
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
	s.firings.run, s.marks.run, s.completions.run = s.recordFirings, s.markBatch, s.completeBatch
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
// is how many have run). Same rules as migrations: append only, except
// that the server-side functions are always created in their current text:
// a migration that changes one drops it and creates it again, so every
// database, whatever version it was migrated from, ends with the same. The first
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
	{
		// The suspension path's writes in one round trip each, and in
		// batches (recordFiringPG, claimPG, pgbatch.go), and an index in the
		// claim's order.
		name: "record_firing(s), complete_actions, claim_actions, actions in claim order",
		stmts: []string{
			recordFiringFunc,
			recordFiringsFunc,
			completeActionsFunc,
			claimActionsFunc,
			// The claim reads the due actions in this order and stops at
			// its limit, instead of reading and sorting every available
			// one (a burst's end_calls wait, available, for their trips).
			`CREATE INDEX actions_claim_order ON actions ((kind <> 'trip'), next_attempt_at, id) WHERE state = 'available'`,
		},
	},
	{
		// record_firing looks up the re-arm exception itself (p_rearm), in
		// the firing's statement: one round trip less per callback; and
		// answers the account's last status write with a claimed trip.
		name: "record_firing applies re-arms, answers the last status write",
		stmts: []string{
			`DROP FUNCTION IF EXISTS record_firings(JSONB)`,
			// Its OUT parameters changed too (o_last_write).
			`DROP FUNCTION IF EXISTS record_firing(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT,
				TEXT, TEXT, TEXT, BIGINT, BIGINT, TEXT[], BOOLEAN[], TEXT, BIGINT)`,
			`DROP FUNCTION IF EXISTS record_firing(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT,
				TEXT, TEXT, TEXT, BIGINT, BIGINT, TEXT[], BOOLEAN[], TEXT, BIGINT, BOOLEAN)`,
			// The actions that sent a status write, by account (record_firing's
			// last status write; they lock their account, so have it). Built
			// in the migration's transaction, not CONCURRENTLY: it blocks
			// writes to actions while it reads the table once.
			`CREATE INDEX actions_written ON actions (account_sid, write_sent_at) WHERE write_sent_at > 0`,
			recordFiringFunc,
			recordFiringsFunc,
		},
	},
	{
		// A replica of the previous version, still running during a
		// rolling upgrade, calls record_firing with 20 arguments and
		// record_firings with firings that have no "rearm": both answer as
		// before (p_rearm defaults to false; it read the re-arm itself).
		// Migration 4 created them without that default.
		name: "record_firing(s) answer the previous version's calls",
		stmts: []string{
			orReplace(recordFiringFunc),
			orReplace(recordFiringsFunc),
		},
	},
	{
		// Holds (holds.go): a manual reactivation takes its account as a
		// claim does; record_firing and claim_actions respect them.
		name: "account holds",
		stmts: []string{
			`CREATE TABLE account_holds (
				account_sid   TEXT   NOT NULL PRIMARY KEY,
				owner         TEXT   NOT NULL,
				held_until    BIGINT NOT NULL,
				write_sent_at BIGINT NOT NULL DEFAULT 0,
				created_at    BIGINT NOT NULL
			)`,
			orReplace(recordFiringFunc),
			orReplace(claimActionsFunc),
		},
	},
}

// orReplace is a CREATE FUNCTION statement as CREATE OR REPLACE FUNCTION:
// the same arguments and results, a new body or new defaults.
func orReplace(create string) string {
	return strings.Replace(create, "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
}

// claimActionsFunc is ClaimActions on Postgres as a server-side function:
// which accounts have due actions, their locks and the claim
// (pgClaimQuery), one round trip instead of five. VOLATILE: the claim's
// statement takes its snapshot after the locks were granted.
var claimActionsFunc = fmt.Sprintf(`CREATE FUNCTION claim_actions(p_owner TEXT, p_lease BIGINT, p_at BIGINT, p_limit BIGINT)
	RETURNS SETOF actions LANGUAGE plpgsql VOLATILE AS $fn$
	DECLARE
		v_due BOOLEAN;
		v_accounts TEXT[];
	BEGIN
		SELECT count(*) > 0, coalesce(array_agg(DISTINCT account_sid) FILTER (WHERE account_sid <> ''), '{}')
			INTO v_due, v_accounts
			FROM (SELECT account_sid FROM actions WHERE state = 'available' AND next_attempt_at <= p_at
				ORDER BY kind <> 'trip', next_attempt_at, id LIMIT 8 * p_limit) d;
		IF NOT v_due THEN
			RETURN;
		END IF;
		PERFORM count(pg_advisory_xact_lock(%d, k))
			FROM (SELECT DISTINCT hashtext(a) AS k FROM unnest(v_accounts) a ORDER BY k) o;
		RETURN QUERY %s;
	END
	$fn$`, lockNSAccount, strings.NewReplacer(
	"$1", "p_owner", "$2", "p_lease", "$3", "p_at", "$4", "p_limit", "$5::TEXT[]", "v_accounts", "$6", "8 * p_limit",
	"RETURNING "+pgActionCols, "RETURNING actions.*").Replace(pgClaimQuery))

// recordFiringFunc is recordFiringTx (sqlite.go) as a server-side function,
// so that a firing costs one round trip instead of eight (BEGIN, the token,
// the incident, the firing, the account's lock, its leases, the actions,
// COMMIT). It runs as one statement, a transaction of its own. It is
// VOLATILE: under READ COMMITTED each statement in it takes a new snapshot,
// so the read of the account's leases after its lock sees every claim made
// before the lock was granted, as in claimPG.
//
// p_kinds are the new incident's action kinds (each once), p_locks whether
// each locks the account; p_owner and p_lease the claim of the trip (an
// empty owner: none); p_rearm is Firing.ApplyRearm (false when left out: the
// previous version's call, which read the re-arm itself). The result: 'duplicate' (the token was recorded: nothing
// written), 'new', 'reopened' or 'repeat' (another firing of an existing
// incident, not reopened); the incident as it is now; the trip created with
// a new incident (0: none), whether it was claimed and, if it was, the
// account's last status write (RecordResult.LastStatusWrite, 0: none).
var recordFiringFunc = fmt.Sprintf(`CREATE FUNCTION record_firing(
		p_token TEXT, p_source TEXT, p_rule TEXT, p_account TEXT, p_account_name TEXT, p_period TEXT,
		p_trigger_sid TEXT, p_category TEXT, p_trigger_by TEXT, p_recurring TEXT, p_trigger_value TEXT,
		p_current_value TEXT, p_date_fired TEXT, p_action TEXT, p_dry_run BIGINT, p_received BIGINT,
		p_kinds TEXT[], p_locks BOOLEAN[], p_owner TEXT, p_lease BIGINT, p_rearm BOOLEAN DEFAULT false,
		OUT o_result TEXT, OUT o_inc incidents, OUT o_trip BIGINT, OUT o_claimed BOOLEAN, OUT o_last_write BIGINT)
	LANGUAGE plpgsql VOLATILE AS $fn$
	DECLARE
		v_period TEXT;
		v_id BIGINT;
		v_state TEXT;
		v_outcome TEXT;
		v_detail TEXT;
		v_n BIGINT;
	BEGIN
		o_trip := 0;
		o_claimed := false;
		o_last_write := 0;
		SELECT incident_id INTO v_id FROM firings WHERE idempotency_token = p_token;
		IF FOUND THEN
			SELECT * INTO o_inc FROM incidents WHERE id = v_id;
			o_result := 'duplicate';
			RETURN;
		END IF;

		-- The account's lock first, before any row lock: firings of several
		-- rules of one account in two replicas' batches then queue on it
		-- instead of locking each other's incidents (claimPG takes it too).
		PERFORM pg_advisory_xact_lock(%[1]d, hashtext(p_account));
		IF p_rearm THEN
			-- Firing.ApplyRearm: after a re-arm, the re-armed generation's period.
			SELECT p_period || '#' || generation INTO v_period FROM rearms
				WHERE account_sid = p_account AND rule = p_rule AND period = p_period;
			IF FOUND THEN
				p_period := v_period;
			END IF;
		END IF;
		INSERT INTO incidents AS i (rule, account_sid, account_name, period, source, idempotency_token,
				usage_trigger_sid, usage_category, trigger_by, recurring, trigger_value, current_value,
				date_fired, action, dry_run, state, detail, firings, created_at, updated_at)
			VALUES (p_rule, p_account, p_account_name, p_period, p_source, p_token, p_trigger_sid,
				p_category, p_trigger_by, p_recurring, p_trigger_value, p_current_value, p_date_fired,
				p_action, p_dry_run, 'pending', '', 1, p_received, p_received)
			ON CONFLICT (rule, account_sid, period) DO UPDATE
				SET firings = i.firings + 1, updated_at = GREATEST(i.updated_at, excluded.updated_at)
			RETURNING * INTO o_inc;
		INSERT INTO firings (idempotency_token, incident_id, source, rule, account_sid, account_name,
				period, usage_trigger_sid, usage_category, trigger_by, recurring, trigger_value,
				current_value, date_fired, action, dry_run, received_at)
			VALUES (p_token, o_inc.id, p_source, p_rule, p_account, p_account_name, p_period,
				p_trigger_sid, p_category, p_trigger_by, p_recurring, p_trigger_value, p_current_value,
				p_date_fired, p_action, p_dry_run, p_received);

		IF o_inc.firings <> 1 THEN
			-- reopenTx: a trip that ended skipped or failed is put back to work.
			o_result := 'repeat';
			SELECT id, state, outcome, detail INTO v_id, v_state, v_outcome, v_detail
				FROM actions WHERE incident_id = o_inc.id AND kind = 'trip';
			IF NOT FOUND OR NOT ((v_state = 'done' AND v_outcome = 'skipped') OR v_state = 'failed') THEN
				RETURN;
			END IF;
			v_detail := format('reopened by a new firing (current value %%s); the trip had ended %%s: %%s',
				p_current_value, v_outcome, v_detail);
			UPDATE actions
				SET state = 'available', outcome = '', detail = v_detail, next_attempt_at = p_received,
					released = 0, updated_at = p_received
				WHERE id = v_id AND ((state = 'done' AND outcome = 'skipped') OR state = 'failed');
			GET DIAGNOSTICS v_n = ROW_COUNT;
			IF v_n <> 1 THEN
				RAISE EXCEPTION 'reopen trip action %%: %% rows changed', v_id, v_n;
			END IF;
			UPDATE actions
				SET state = 'available', outcome = '', detail = '', next_attempt_at = p_received, updated_at = p_received
				WHERE incident_id = o_inc.id AND kind = 'end_calls' AND state = 'done' AND outcome = 'skipped';
			UPDATE incidents
				SET account_name = p_account_name, usage_trigger_sid = p_trigger_sid, usage_category = p_category,
					trigger_by = p_trigger_by, recurring = p_recurring, trigger_value = p_trigger_value,
					current_value = p_current_value, date_fired = p_date_fired, action = p_action,
					dry_run = p_dry_run, state = 'pending', outcome = '', detail = v_detail,
					updated_at = GREATEST(updated_at, p_received)
				WHERE id = o_inc.id
				RETURNING * INTO o_inc;
			o_result := 'reopened';
			RETURN;
		END IF;

		o_result := 'new';
		IF p_owner <> '' THEN
			-- Under the account's lock: the leases of every claim made before it.
			o_claimed := NOT EXISTS (SELECT 1 FROM actions
				WHERE account_sid = p_account AND lease_until > 0 AND lease_until > p_received)
				AND NOT EXISTS (SELECT 1 FROM account_holds WHERE account_sid = p_account AND held_until > p_received);
		END IF;
		WITH ins AS (
			INSERT INTO actions (incident_id, kind, account_sid, state, attempts, next_attempt_at,
					owner, lease_until, created_at, updated_at)
				SELECT o_inc.id, k.kind, CASE WHEN k.locks THEN p_account ELSE '' END,
					CASE WHEN o_claimed AND k.kind = 'trip' THEN 'running' ELSE 'available' END, 0, p_received,
					CASE WHEN o_claimed AND k.kind = 'trip' THEN p_owner ELSE '' END,
					CASE WHEN o_claimed AND k.kind = 'trip' THEN p_lease ELSE 0 END,
					p_received, p_received
				FROM unnest(p_kinds, p_locks) AS k (kind, locks)
				ON CONFLICT (incident_id, kind) DO NOTHING
				RETURNING id, kind)
		SELECT id INTO o_trip FROM ins WHERE kind = 'trip';
		o_trip := coalesce(o_trip, 0);
		o_claimed := o_claimed AND o_trip <> 0;
		IF o_claimed THEN
			-- RecordResult.LastStatusWrite (as lastStatusWriteQuery), through
			-- actions_written: a plan cached while the table was small could
			-- otherwise read all of it.
			SELECT greatest(
				coalesce((SELECT max(write_sent_at) FROM actions
					WHERE account_sid = p_account AND write_sent_at > 0), 0),
				coalesce((SELECT max(created_at) FROM reactivations WHERE account_sid = p_account), 0),
				coalesce((SELECT write_sent_at FROM account_holds WHERE account_sid = p_account), 0))
				INTO o_last_write;
		END IF;
	END
	$fn$`, lockNSAccount)

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
				SELECT 1 FROM actions o WHERE o.account_sid = a.account_sid AND o.lease_until > $3 AND o.id <> a.id)
				AND NOT EXISTS (SELECT 1 FROM account_holds h WHERE h.account_sid = a.account_sid AND h.held_until > $3))
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

// claimPG is ClaimActions' work on Postgres: one call of claim_actions
// (claimActionsFunc), which finds the accounts with due actions, takes
// their locks and claims, in one transaction.
func (s *DB) claimPG(ctx context.Context, owner string, lease, at int64, limit int) ([]Action, error) {
	return oneAs(ctx, s, func(ctx context.Context, q querier) ([]Action, error) {
		rows, err := q.QueryContext(ctx, `SELECT `+actionCols+` FROM claim_actions($1, $2, $3, $4)`, owner, lease, at, limit)
		if err != nil {
			return nil, err
		}
		return scanActions(rows)
	})
}

// pgFiring is a firing as record_firing's arguments (and, in JSON, as an
// element of record_firings' batch).
type pgFiring struct {
	I            int      `json:"i"` // its place in a batch
	Token        string   `json:"token"`
	Source       string   `json:"source"`
	Rule         string   `json:"rule"`
	Account      string   `json:"account"`
	AccountName  string   `json:"account_name"`
	Period       string   `json:"period"`
	TriggerSID   string   `json:"trigger_sid"`
	Category     string   `json:"category"`
	TriggerBy    string   `json:"trigger_by"`
	Recurring    string   `json:"recurring"`
	TriggerValue string   `json:"trigger_value"`
	CurrentValue string   `json:"current_value"`
	DateFired    string   `json:"date_fired"`
	Action       string   `json:"action"`
	DryRun       int64    `json:"dry_run"`
	Received     int64    `json:"received"`
	Kinds        []string `json:"kinds"`
	Locks        []bool   `json:"locks"`
	Owner        string   `json:"owner"`
	Lease        int64    `json:"lease"`
	Rearm        bool     `json:"rearm"`
}

func newPGFiring(f *Firing, received int64) pgFiring {
	p := pgFiring{Token: f.IdempotencyToken, Source: string(f.Source), Rule: f.Rule, Account: f.AccountSID,
		AccountName: f.AccountName, Period: f.Period, TriggerSID: f.UsageTriggerSID, Category: f.UsageCategory,
		TriggerBy: f.TriggerBy, Recurring: f.Recurring, TriggerValue: f.TriggerValue, CurrentValue: f.CurrentValue,
		DateFired: f.DateFired, Action: f.Action, DryRun: boolInt(f.DryRun), Received: received,
		Kinds: []string{}, Locks: []bool{}, Rearm: f.ApplyRearm}
	seen := map[ActionKind]bool{}
	for _, k := range f.Actions {
		if !seen[k] {
			seen[k] = true
			p.Kinds, p.Locks = append(p.Kinds, string(k)), append(p.Locks, k.LocksAccount())
		}
	}
	if f.ClaimBy != nil {
		p.Owner, p.Lease = f.ClaimBy.Owner, timeCol(f.ClaimBy.LeaseUntil)
	}
	return p
}

// recordFiringOne is RecordFiring's work on Postgres for one firing: one
// call of record_firing (recordFiringFunc), one round trip. f is valid and
// received is f.ReceivedAt in unix nanoseconds.
func (s *DB) recordFiringOne(ctx context.Context, f *Firing, received int64) (RecordResult, error) {
	p := newPGFiring(f, received)
	return oneAs(ctx, s, func(ctx context.Context, q querier) (RecordResult, error) {
		var (
			result    string
			tripID    int64
			claimed   bool
			lastWrite int64
		)
		row := q.QueryRowContext(ctx, recordFiringCall, p.Token, p.Source, p.Rule, p.Account,
			p.AccountName, p.Period, p.TriggerSID, p.Category, p.TriggerBy, p.Recurring,
			p.TriggerValue, p.CurrentValue, p.DateFired, p.Action, p.DryRun, p.Received,
			p.Kinds, p.Locks, p.Owner, p.Lease, p.Rearm)
		inc, err := scanIncident(scanFunc(func(dest ...any) error {
			return row.Scan(append([]any{&result, &tripID, &claimed, &lastWrite}, dest...)...)
		}))
		if err != nil {
			return RecordResult{}, err
		}
		return firingResult(f, result, tripID, claimed, lastWrite, inc), nil
	})
}

// firingResult is the RecordResult of f from record_firing's answer.
func firingResult(f *Firing, result string, tripID int64, claimed bool, lastWrite int64, inc Incident) RecordResult {
	res := RecordResult{Incident: inc}
	switch result {
	case "duplicate":
		res.DuplicateToken = true
	case "new":
		res.NewIncident = true
	case "reopened":
		res.Reopened = true
	}
	if tripID != 0 {
		res.Trip = Action{ID: tripID, IncidentID: inc.ID, Kind: ActionTrip, AccountSID: f.AccountSID,
			State: ActionAvailable, NextAttemptAt: f.ReceivedAt, CreatedAt: f.ReceivedAt, UpdatedAt: f.ReceivedAt}
		if claimed {
			res.Trip.State, res.Trip.Owner, res.Trip.LeaseUntil = ActionRunning, f.ClaimBy.Owner, f.ClaimBy.LeaseUntil
			res.LastStatusWrite = fromTimeCol(lastWrite)
		}
	}
	return res
}

// incidentOf is incidentCols as columns of the composite o_inc.
var incidentOf = `(o_inc).` + strings.Join(strings.Split(strings.Join(strings.Fields(incidentCols), " "), ", "), ", (o_inc).")

// recordFiringCall calls record_firing, the incident's columns in incidentCols' order.
var recordFiringCall = `SELECT o_result, o_trip, o_claimed, o_last_write, ` + incidentOf +
	` FROM record_firing($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)`

// scanFunc is a scanner from a function.
type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// pgCompletion is a completion as pgCompleteQuery's arguments (and, in
// JSON, as an element of complete_actions' batch).
type pgCompletion struct {
	I         int      `json:"i"` // its place in a batch
	State     string   `json:"state"`
	Outcome   string   `json:"outcome"`
	Detail    string   `json:"detail"`
	Attempted int64    `json:"attempted"`
	Next      int64    `json:"next"`
	Lease     int64    `json:"lease"`
	Sent      int64    `json:"sent"`
	Progress  string   `json:"progress"`
	Now       int64    `json:"now"`
	ID        int64    `json:"id"`
	Owner     string   `json:"owner"`
	ClearSent bool     `json:"clear_sent"`
	IncState  string   `json:"inc_state"`
	Kinds     []string `json:"kinds"`
	Locks     []bool   `json:"locks"`
	Ats       []int64  `json:"ats"`
}

func (p *pgCompletion) args() []any {
	return []any{p.State, p.Outcome, p.Detail, p.Attempted, p.Next, p.Lease, p.Sent, p.Progress, p.Now,
		p.ID, p.Owner, p.ClearSent, p.IncState, p.Kinds, p.Locks, p.Ats}
}

// completePG is completeTx on Postgres for an attempt that does not end
// held (held takes the guard's lock and may page): the action, its
// incident if it is a trip, and the actions it schedules, in one statement
// (pgCompleteQuery), group-committed with other completions (pgbatch.go).
func (s *DB) completePG(ctx context.Context, id int64, owner string, c Completion) error {
	now, err := unixNano(s.now())
	if err != nil {
		return err
	}
	p := pgCompletion{State: string(c.State), Outcome: string(c.Outcome), Detail: c.Detail, Attempted: boolInt(c.Attempted),
		Next: now, Sent: timeCol(c.WriteSentAt), Progress: c.Progress, Now: now, ID: id, Owner: owner,
		ClearSent: c.ClearWriteSent, Kinds: []string{}, Locks: []bool{}, Ats: []int64{}}
	switch c.State {
	case ActionDone:
		p.IncState = string(StateDone)
	case ActionFailed:
		p.IncState = string(StateFailed)
	case ActionAvailable:
		if p.Next, err = unixNano(c.NextAttemptAt); err != nil {
			return fmt.Errorf("next attempt: %w", err)
		}
		p.Lease = timeCol(c.HoldAccountUntil)
	default:
		return fmt.Errorf("cannot complete an attempt as %q", c.State)
	}
	if c.State == ActionDone || c.State == ActionAvailable {
		for _, sc := range c.Then {
			if sc.Kind == "" {
				return errors.New("scheduled action with an empty kind")
			}
			at, err := unixNano(sc.At)
			if err != nil {
				return fmt.Errorf("scheduled %s: %w", sc.Kind, err)
			}
			p.Kinds, p.Locks, p.Ats = append(p.Kinds, string(sc.Kind)), append(p.Locks, sc.Kind.LocksAccount()), append(p.Ats, at)
		}
	}
	if _, fenced := fenceOf(ctx); fenced {
		return s.completeOne(ctx, &p)
	}
	op := &pgCompleteOp{p: p}
	alone, err := s.completions.do(ctx, op)
	if alone {
		return s.completeOne(ctx, &p)
	}
	return err
}

// completeOne records one completion: one statement.
func (s *DB) completeOne(ctx context.Context, p *pgCompletion) error {
	_, err := oneAs(ctx, s, func(ctx context.Context, q querier) (struct{}, error) {
		var (
			incident sql.NullInt64
			kind     string
		)
		err := q.QueryRowContext(ctx, pgCompleteQuery, p.args()...).Scan(&incident, &kind)
		if errors.Is(err, sql.ErrNoRows) {
			return struct{}{}, ErrNotFound // not running, or claimed by another owner
		}
		return struct{}{}, err
	})
	return err
}

// pgCompleteQuery is completeTx's statements as one: the attempt's end
// (completeQuery's Postgres text), the trip's incident (state $13 when the
// trip finished, else only its outcome and detail) and the scheduled
// actions ($14 kinds, $15 whether each locks the account, $16 when due).
var pgCompleteQuery = `WITH a AS (` + strings.TrimSpace(pgOverrides[completeQuery]) + `
	), i AS (
		UPDATE incidents SET state = CASE WHEN $13::TEXT <> '' THEN $13::TEXT ELSE incidents.state END,
			outcome = $2, detail = $3, updated_at = $9
		FROM a WHERE incidents.id = a.incident_id AND a.kind = 'trip'
	), s AS (
		INSERT INTO actions (incident_id, kind, account_sid, state, attempts, next_attempt_at, created_at, updated_at)
		SELECT inc.id, k.kind, CASE WHEN k.locks THEN inc.account_sid ELSE '' END, 'available', 0, k.at, $9, $9
		FROM a JOIN incidents inc ON inc.id = a.incident_id,
			unnest($14::TEXT[], $15::BOOLEAN[], $16::BIGINT[]) AS k (kind, locks, at)
		ON CONFLICT (incident_id, kind) DO NOTHING
	)
	SELECT incident_id, kind FROM a`

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
