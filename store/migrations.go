package store

import (
	"context"
	"database/sql"
	"fmt"
)

// applicationID marks the file as a usagebreaker database ("ubrk") in the
// SQLite header (PRAGMA application_id), so Open refuses another program's
// database instead of adding tables to it.
const applicationID = 0x7562726b

// A migration moves the schema from version i to i+1 (i is its index in
// migrations). Each runs inside the one transaction that also sets
// PRAGMA user_version, so a crash leaves the old version or the new one.
//
// Append only: never edit or reorder a step that has shipped. A later issue
// adds a table by appending a step (e.g. {"notifications", []string{"CREATE
// TABLE notifications (...) STRICT"}}).
type migration struct {
	name  string
	stmts []string
}

// Times are INTEGER unix nanoseconds, UTC (see unixNano/fromUnixNano).
// Text columns the callback may omit are NOT NULL DEFAULT ”: the Go types
// have no NULL.
var migrations = []migration{
	{
		name: "firings, incidents, actions",
		stmts: []string{
			`CREATE TABLE incidents (
				id                INTEGER PRIMARY KEY,
				rule              TEXT    NOT NULL,
				account_sid       TEXT    NOT NULL,
				account_name      TEXT    NOT NULL DEFAULT '',
				period            TEXT    NOT NULL,
				source            TEXT    NOT NULL,
				idempotency_token TEXT    NOT NULL,
				usage_trigger_sid TEXT    NOT NULL DEFAULT '',
				usage_category    TEXT    NOT NULL DEFAULT '',
				trigger_by        TEXT    NOT NULL DEFAULT '',
				recurring         TEXT    NOT NULL DEFAULT '',
				trigger_value     TEXT    NOT NULL DEFAULT '',
				current_value     TEXT    NOT NULL DEFAULT '',
				date_fired        TEXT    NOT NULL DEFAULT '',
				action            TEXT    NOT NULL DEFAULT '',
				dry_run           INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
				state             TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
				outcome           TEXT    NOT NULL DEFAULT '',
				detail            TEXT    NOT NULL DEFAULT '',
				firings           INTEGER NOT NULL DEFAULT 1,
				created_at        INTEGER NOT NULL,
				updated_at        INTEGER NOT NULL,
				UNIQUE (rule, account_sid, period)
			) STRICT`,
			// ListIncidents: newest first, optionally by rule or account.
			`CREATE INDEX incidents_created ON incidents (created_at DESC, id DESC)`,
			`CREATE INDEX incidents_rule_created ON incidents (rule, created_at DESC, id DESC)`,
			`CREATE INDEX incidents_account_created ON incidents (account_sid, created_at DESC, id DESC)`,

			// One row per IdempotencyToken ever accepted, with the callback as received.
			`CREATE TABLE firings (
				idempotency_token TEXT    NOT NULL PRIMARY KEY,
				incident_id       INTEGER NOT NULL REFERENCES incidents (id),
				source            TEXT    NOT NULL,
				rule              TEXT    NOT NULL,
				account_sid       TEXT    NOT NULL,
				account_name      TEXT    NOT NULL DEFAULT '',
				period            TEXT    NOT NULL,
				usage_trigger_sid TEXT    NOT NULL DEFAULT '',
				usage_category    TEXT    NOT NULL DEFAULT '',
				trigger_by        TEXT    NOT NULL DEFAULT '',
				recurring         TEXT    NOT NULL DEFAULT '',
				trigger_value     TEXT    NOT NULL DEFAULT '',
				current_value     TEXT    NOT NULL DEFAULT '',
				date_fired        TEXT    NOT NULL DEFAULT '',
				action            TEXT    NOT NULL DEFAULT '',
				dry_run           INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
				received_at       INTEGER NOT NULL
			) STRICT, WITHOUT ROWID`,
			// The foreign key's child index (and "firings of an incident").
			`CREATE INDEX firings_incident ON firings (incident_id, received_at)`,

			`CREATE TABLE actions (
				id              INTEGER PRIMARY KEY,
				incident_id     INTEGER NOT NULL REFERENCES incidents (id),
				kind            TEXT    NOT NULL CHECK (kind <> ''),
				state           TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
				attempts        INTEGER NOT NULL DEFAULT 0,
				next_attempt_at INTEGER NOT NULL,
				outcome         TEXT    NOT NULL DEFAULT '',
				detail          TEXT    NOT NULL DEFAULT '',
				created_at      INTEGER NOT NULL,
				updated_at      INTEGER NOT NULL,
				UNIQUE (incident_id, kind)
			) STRICT`,
			// PendingActions and CountPendingActions. Partial: finished actions,
			// the vast majority over time, are not in it.
			`CREATE INDEX actions_pending ON actions (next_attempt_at, id) WHERE state = 'pending'`,
		},
	},
	{
		// People in the loop: the guard's holds, multi-part progress,
		// re-arm exceptions and the reactivation audit.
		name: "guard, progress, re-arms, reactivations",
		stmts: []string{
			// 0 normal, 1 held by the guard, 2 released from it (runs past the guard).
			`ALTER TABLE actions ADD COLUMN hold INTEGER NOT NULL DEFAULT 0 CHECK (hold IN (0, 1, 2))`,
			`ALTER TABLE actions ADD COLUMN progress TEXT NOT NULL DEFAULT ''`,
			`CREATE INDEX actions_held ON actions (id) WHERE hold = 1`,
			// The guard counts recent suspensions.
			`CREATE INDEX actions_suspended ON actions (updated_at) WHERE kind = 'trip' AND outcome = 'suspended'`,

			// One row per (account, rule, period) whose trigger was re-armed on
			// reactivation; generation counts the re-arms (the first is 2).
			`CREATE TABLE rearms (
				account_sid   TEXT    NOT NULL,
				rule          TEXT    NOT NULL,
				period        TEXT    NOT NULL,
				generation    INTEGER NOT NULL CHECK (generation >= 2),
				allowance     TEXT    NOT NULL,
				trigger_sid   TEXT    NOT NULL DEFAULT '',
				trigger_value TEXT    NOT NULL DEFAULT '',
				expires_at    INTEGER NOT NULL,
				restored_at   INTEGER NOT NULL DEFAULT 0,
				created_at    INTEGER NOT NULL,
				updated_at    INTEGER NOT NULL,
				PRIMARY KEY (account_sid, rule, period)
			) STRICT, WITHOUT ROWID`,
			`CREATE INDEX rearms_open ON rearms (expires_at) WHERE restored_at = 0`,

			// Who reactivated which incident's account, when and why.
			`CREATE TABLE reactivations (
				id           INTEGER PRIMARY KEY,
				incident_id  INTEGER NOT NULL UNIQUE REFERENCES incidents (id),
				account_sid  TEXT    NOT NULL,
				account_name TEXT    NOT NULL DEFAULT '',
				via          TEXT    NOT NULL CHECK (via IN ('manual', 'scheduled')),
				actor        TEXT    NOT NULL,
				reason       TEXT    NOT NULL,
				rearmed      INTEGER NOT NULL DEFAULT 0,
				detail       TEXT    NOT NULL DEFAULT '',
				created_at   INTEGER NOT NULL
			) STRICT`,
			`CREATE INDEX reactivations_account ON reactivations (account_sid, created_at DESC)`,
		},
	},
	{
		// The action engine: typed states, claims (owner, lease) and the
		// status write's time in columns instead of sentences in detail.
		// SQLite cannot change a CHECK constraint, so the table is rebuilt.
		// A pending action of the previous version becomes available (held
		// if the guard held it), and its marks become columns:
		//   - "suspend write sent..." or "the suspend write failed and may
		//     have been applied: ..." set write_sent_at (the action's last
		//     update) and keep the account leased until its next attempt;
		//   - a claim of the former fast path becomes a running action of
		//     the owner "before-upgrade", which the first start rescues.
		name: "action engine",
		stmts: []string{
			`CREATE TABLE actions_v3 (
				id              INTEGER PRIMARY KEY,
				incident_id     INTEGER NOT NULL REFERENCES incidents (id),
				kind            TEXT    NOT NULL CHECK (kind <> ''),
				account_sid     TEXT    NOT NULL DEFAULT '',
				state           TEXT    NOT NULL CHECK (state IN ('available', 'running', 'held', 'done', 'failed')),
				attempts        INTEGER NOT NULL DEFAULT 0,
				next_attempt_at INTEGER NOT NULL,
				owner           TEXT    NOT NULL DEFAULT '',
				lease_until     INTEGER NOT NULL DEFAULT 0,
				write_sent_at   INTEGER NOT NULL DEFAULT 0,
				released        INTEGER NOT NULL DEFAULT 0 CHECK (released IN (0, 1)),
				rescued         INTEGER NOT NULL DEFAULT 0 CHECK (rescued IN (0, 1)),
				outcome         TEXT    NOT NULL DEFAULT '',
				detail          TEXT    NOT NULL DEFAULT '',
				progress        TEXT    NOT NULL DEFAULT '',
				created_at      INTEGER NOT NULL,
				updated_at      INTEGER NOT NULL,
				UNIQUE (incident_id, kind),
				CHECK ((state = 'running') = (owner <> ''))
			) STRICT`,
			`INSERT INTO actions_v3 (id, incident_id, kind, account_sid, state, attempts, next_attempt_at,
				owner, lease_until, write_sent_at, released, outcome, detail, progress, created_at, updated_at)
			SELECT a.id, a.incident_id, a.kind,
				CASE WHEN a.kind IN ('trip', 'end_calls', 'reactivate')
					THEN (SELECT i.account_sid FROM incidents i WHERE i.id = a.incident_id) ELSE '' END,
				CASE WHEN a.state <> 'pending' THEN a.state
					WHEN a.hold = 1 THEN 'held'
					WHEN a.kind = 'trip' AND a.detail LIKE 'claimed by %' THEN 'running'
					ELSE 'available' END,
				a.attempts,
				CASE WHEN a.hold = 1 THEN a.updated_at ELSE a.next_attempt_at END,
				CASE WHEN a.state = 'pending' AND a.hold <> 1 AND a.kind = 'trip' AND a.detail LIKE 'claimed by %'
					THEN 'before-upgrade' ELSE '' END,
				CASE WHEN a.state = 'pending' AND a.hold <> 1 AND a.kind = 'trip' AND (a.detail LIKE 'claimed by %'
						OR a.detail = 'suspend write sent to Twilio; waiting for its answer'
						OR a.detail LIKE 'the suspend write failed and may have been applied: %')
					THEN a.next_attempt_at ELSE 0 END,
				CASE WHEN a.kind = 'trip' AND (a.detail = 'suspend write sent to Twilio; waiting for its answer'
						OR a.detail LIKE 'the suspend write failed and may have been applied: %')
					THEN a.updated_at ELSE 0 END,
				CASE WHEN a.hold = 2 THEN 1 ELSE 0 END,
				a.outcome, a.detail, a.progress, a.created_at, a.updated_at
			FROM actions a`,
			`DROP TABLE actions`,
			`ALTER TABLE actions_v3 RENAME TO actions`,
			// ClaimActions: the due available actions (a range of this
			// partial index), then the account leases they must not meet.
			`CREATE INDEX actions_due ON actions (next_attempt_at, id) WHERE state = 'available'`,
			`CREATE INDEX actions_leased ON actions (account_sid, lease_until) WHERE lease_until > 0`,
			`CREATE INDEX actions_running ON actions (lease_until) WHERE state = 'running'`,
			`CREATE INDEX actions_held ON actions (id) WHERE state = 'held'`,
			// The guard counts recent suspensions; reactivation finds an account's.
			`CREATE INDEX actions_suspended ON actions (updated_at) WHERE kind = 'trip' AND outcome = 'suspended'`,
		},
	},
	{
		// A person's decision on an incident whose rule holds its
		// suspension for approval: one per incident.
		name: "approvals",
		stmts: []string{
			`CREATE TABLE approvals (
				incident_id INTEGER NOT NULL PRIMARY KEY REFERENCES incidents (id),
				decision    TEXT    NOT NULL CHECK (decision IN ('approve', 'veto')),
				actor       TEXT    NOT NULL,
				reason      TEXT    NOT NULL,
				created_at  INTEGER NOT NULL
			) STRICT`,
		},
	},
	{
		// Velocity rules (velocity.go): the step firings of velocity rules, and
		// actions that belong to a step firing instead of an incident (the
		// rearm_step action that arms the next step). The actions table is
		// rebuilt because SQLite cannot drop NOT NULL; on a server database
		// this step is ALTER TABLE actions ALTER COLUMN incident_id DROP NOT
		// NULL, ADD COLUMN step_token, and the two indexes.
		name: "velocity steps",
		stmts: []string{
			`CREATE TABLE velocity_steps (
				idempotency_token TEXT    NOT NULL PRIMARY KEY,
				rule              TEXT    NOT NULL,
				account_sid       TEXT    NOT NULL,
				account_name      TEXT    NOT NULL DEFAULT '',
				usage_trigger_sid TEXT    NOT NULL DEFAULT '',
				usage_category    TEXT    NOT NULL DEFAULT '',
				trigger_by        TEXT    NOT NULL DEFAULT '',
				trigger_value     TEXT    NOT NULL DEFAULT '',
				current_value     TEXT    NOT NULL DEFAULT '',
				date_fired        TEXT    NOT NULL DEFAULT '',
				fired_at          INTEGER NOT NULL,
				received_at       INTEGER NOT NULL,
				stale             INTEGER NOT NULL DEFAULT 0 CHECK (stale IN (0, 1))
			) STRICT, WITHOUT ROWID`,
			// Steps: an account's latest firings of a rule.
			`CREATE INDEX velocity_steps_account ON velocity_steps (rule, account_sid, fired_at)`,

			`CREATE TABLE actions_v4 (
				id              INTEGER PRIMARY KEY,
				incident_id     INTEGER REFERENCES incidents (id),
				step_token      TEXT    NOT NULL DEFAULT '',
				kind            TEXT    NOT NULL CHECK (kind <> ''),
				account_sid     TEXT    NOT NULL DEFAULT '',
				state           TEXT    NOT NULL CHECK (state IN ('available', 'running', 'held', 'done', 'failed')),
				attempts        INTEGER NOT NULL DEFAULT 0,
				next_attempt_at INTEGER NOT NULL,
				owner           TEXT    NOT NULL DEFAULT '',
				lease_until     INTEGER NOT NULL DEFAULT 0,
				write_sent_at   INTEGER NOT NULL DEFAULT 0,
				released        INTEGER NOT NULL DEFAULT 0 CHECK (released IN (0, 1)),
				rescued         INTEGER NOT NULL DEFAULT 0 CHECK (rescued IN (0, 1)),
				outcome         TEXT    NOT NULL DEFAULT '',
				detail          TEXT    NOT NULL DEFAULT '',
				progress        TEXT    NOT NULL DEFAULT '',
				created_at      INTEGER NOT NULL,
				updated_at      INTEGER NOT NULL,
				UNIQUE (incident_id, kind),
				CHECK ((state = 'running') = (owner <> '')),
				CHECK ((incident_id IS NULL) = (step_token <> ''))
			) STRICT`,
			`INSERT INTO actions_v4 (id, incident_id, kind, account_sid, state, attempts, next_attempt_at, owner,
				lease_until, write_sent_at, released, rescued, outcome, detail, progress, created_at, updated_at)
			SELECT id, incident_id, kind, account_sid, state, attempts, next_attempt_at, owner,
				lease_until, write_sent_at, released, rescued, outcome, detail, progress, created_at, updated_at
			FROM actions`,
			`DROP TABLE actions`,
			`ALTER TABLE actions_v4 RENAME TO actions`,
			`CREATE INDEX actions_due ON actions (next_attempt_at, id) WHERE state = 'available'`,
			`CREATE INDEX actions_leased ON actions (account_sid, lease_until) WHERE lease_until > 0`,
			`CREATE INDEX actions_running ON actions (lease_until) WHERE state = 'running'`,
			`CREATE INDEX actions_held ON actions (id) WHERE state = 'held'`,
			`CREATE INDEX actions_suspended ON actions (updated_at) WHERE kind = 'trip' AND outcome = 'suspended'`,
			// One action per step firing and kind.
			`CREATE UNIQUE INDEX actions_step ON actions (step_token, kind) WHERE step_token <> ''`,
		},
	},
	{
		// Holds (holds.go): a manual reactivation takes its account as a
		// claim does.
		name: "account holds",
		stmts: []string{
			`CREATE TABLE account_holds (
				account_sid   TEXT    NOT NULL PRIMARY KEY,
				owner         TEXT    NOT NULL,
				held_until    INTEGER NOT NULL,
				write_sent_at INTEGER NOT NULL DEFAULT 0,
				created_at    INTEGER NOT NULL
			) STRICT`,
		},
	},
}

// migrate brings the database to version len(migrations) in one IMMEDIATE transaction
// (db must be the write pool). Reopening an up-to-date database changes nothing.
func migrate(ctx context.Context, db *sql.DB) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	var version, appID, objects int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read user_version: %w", err)
	}
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return fmt.Errorf("read application_id: %w", err)
	}
	switch {
	case appID != 0 && appID != applicationID:
		return fmt.Errorf("not a usagebreaker database (application_id %#x)", appID)
	case version > len(migrations):
		return fmt.Errorf("schema version %d is newer than this build knows (%d): downgrade is not supported", version, len(migrations))
	case version == len(migrations):
		return tx.Commit() // nothing to do; wrote nothing
	case version == 0:
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&objects); err != nil {
			return fmt.Errorf("read schema: %w", err)
		}
		if objects != 0 {
			return fmt.Errorf("not a usagebreaker database (%d schema objects but no schema version)", objects)
		}
	}

	for i := version; i < len(migrations); i++ {
		for _, stmt := range migrations[i].stmts {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d (%s): %w", i+1, migrations[i].name, err)
			}
		}
	}
	// PRAGMAs take no bound parameters; both values are integers we control.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("set user_version: %w", err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d", applicationID)); err != nil {
		return fmt.Errorf("set application_id: %w", err)
	}
	return tx.Commit()
}
