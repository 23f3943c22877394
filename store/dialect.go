package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The two SQL dialects.
//
// Every statement is written once, in SQLite's dialect, and DB.q turns it
// into Postgres' when the store is on Postgres: ?N and ? placeholders become
// $N, SQLite's two-argument scalar max() becomes GREATEST(). The few
// statements whose Postgres form differs in more than that (a parameter
// whose type Postgres cannot infer, a column to qualify, row locks) have their Postgres text in pgOverrides, keyed by
// the SQLite text. Times are BIGINT unix nanoseconds and booleans BIGINT 0/1
// on both, so rows scan the same way.
//
// What differs beyond the text:
//
//   - SQLite: one process owns the file (the daemon's lock); the writes of
//     the suspension path are group-committed (groupcommit.go) on one
//     connection, in WAL mode with synchronous=FULL.
//   - Postgres: several processes share the database. Each write is its own
//     READ COMMITTED transaction on a pool (runTx; on the suspension path a
//     single statement, runOne, postgres.go), retried when Postgres
//     aborts it for a deadlock or a serialization failure or when a
//     concurrent insert of the same unique key made it fail (RecordFiring:
//     the retry finds the token and answers DuplicateToken). Actions are
//     claimed with FOR UPDATE SKIP LOCKED under per-account advisory
//     transaction locks (postgres.go), and a write made for a leader's loop
//     checks the loop's lease and epoch in its transaction (WithFence).

// q is text in the store's dialect.
func (s *DB) q(text string) string {
	if !s.pg {
		return text
	}
	if o, ok := pgOverrides[text]; ok {
		return o
	}
	return rebind(text)
}

// rebind turns SQLite's placeholders (? and ?N) into Postgres' ($N) and its
// scalar max(a, b) into GREATEST(a, b). Statements here have no '?' or
// "max(" inside string literals.
func rebind(text string) string {
	var b strings.Builder
	b.Grow(len(text) + 16)
	n := 0
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c == '?' {
			j := i + 1
			for j < len(text) && text[j] >= '0' && text[j] <= '9' {
				j++
			}
			if j > i+1 {
				b.WriteString("$" + text[i+1:j])
			} else {
				n++
				b.WriteString("$" + strconv.Itoa(n))
			}
			i = j - 1
			continue
		}
		if c == 'm' && strings.HasPrefix(text[i:], "max(") && (i == 0 || !isIdent(text[i-1])) {
			b.WriteString("GREATEST(")
			i += len("max(") - 1
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// pgOverrides: the Postgres text of statements that need more than rebind.
var pgOverrides = map[string]string{
	// Postgres wants the existing row's columns qualified here.
	incidentUpsertQuery: strings.Replace(strings.Replace(rebind(incidentUpsertQuery),
		"firings = firings + 1", "firings = incidents.firings + 1", 1),
		"GREATEST(updated_at,", "GREATEST(incidents.updated_at,", 1),
	rearmUpsertQuery: strings.Replace(rebind(rearmUpsertQuery),
		"generation = generation + 1", "generation = rearms.generation + 1", 1),
	// $7 compared with 0 would be inferred int4. The attempt's place under
	// the guard ends with it (AdmitSuspension).
	completeQuery: `UPDATE actions SET state = $1, outcome = $2, detail = $3, attempts = attempts + $4,
		next_attempt_at = $5, owner = '', lease_until = $6, guard_admitted = 0,
		write_sent_at = CASE WHEN $7::BIGINT > 0 THEN $7::BIGINT WHEN $12::BOOLEAN THEN 0 ELSE write_sent_at END, progress = $8, updated_at = $9
	WHERE id = $10 AND state = 'running' AND owner = $11 AND lease_until > $9
	RETURNING incident_id, kind`,
	// A write mark after the lease ended is refused: another owner may hold it.
	markQuery: `UPDATE actions SET write_sent_at = $1, lease_until = GREATEST(lease_until, $2), updated_at = $3
			WHERE id = $4 AND state = 'running' AND owner = $5 AND attempts = $6 AND lease_until > $1`,
	insertScheduledQuery: `INSERT INTO actions (incident_id, kind, account_sid, state, attempts,
				next_attempt_at, created_at, updated_at)
			SELECT $1::BIGINT, $2::TEXT, CASE WHEN $3::BOOLEAN THEN account_sid ELSE '' END, 'available', 0, $4::BIGINT, $5::BIGINT, $6::BIGINT
			FROM incidents WHERE id = $7
			ON CONFLICT (incident_id, kind) DO NOTHING`,
	// Two replicas rescuing at once: each row is rescued by one.
	rescueSelectQuery: `SELECT ` + actionCols + ` FROM actions
			WHERE state = 'running' AND ($1::BOOLEAN OR lease_until <= $2)
			FOR UPDATE SKIP LOCKED`,
}

// Postgres error codes the store acts on.
const (
	pgUniqueViolation      = "23505"
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
)

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// retryable reports whether a Postgres transaction that failed with err
// may succeed when run again from the start.
func retryable(err error) bool { return retryableCode(pgCode(err)) }

// retryableCode reports whether a Postgres error code is one of retryable's.
func retryableCode(code string) bool {
	switch code {
	case pgSerializationFailure, pgDeadlockDetected, pgUniqueViolation:
		return true
	}
	return false
}

// pgTxTimeout bounds one Postgres write transaction once started: the
// caller's cancellation does not cut it short, so that a write that returns
// an error did not happen (an interrupted COMMIT would leave that unknown).
const pgTxTimeout = 15 * time.Second

// pgRetries is how many times runTx runs a transaction that Postgres
// aborted for a conflict.
const pgRetries = 10

// querier is what one statement needs: the pool (*sql.DB) or a transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// runOne runs fn, which sends one statement, on Postgres outside an explicit
// transaction: a single statement is a transaction of its own, committed
// (its WAL flushed, with synchronous_commit on) before its result comes
// back, so it saves BEGIN's and COMMIT's round trips and nothing else. With
// a fenced ctx (WithFence) the fence must be checked in the same
// transaction: fn then runs in runTx. Retries and the timeout are runTx's.
func (s *DB) runOne(ctx context.Context, fn func(ctx context.Context, q querier) (any, error)) (any, error) {
	if _, fenced := fenceOf(ctx); fenced {
		return s.runTx(ctx, func(ctx context.Context, tx *sql.Tx) (any, error) { return fn(ctx, tx) })
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pgTxTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		res, err := fn(tctx, s.w)
		if err == nil || !retryable(err) || attempt >= pgRetries || tctx.Err() != nil {
			return res, err
		}
		time.Sleep(time.Duration(rand.N(2*(attempt+1))) * time.Millisecond)
	}
}

// oneAs is runOne for a result of type T.
func oneAs[T any](ctx context.Context, s *DB, fn func(ctx context.Context, q querier) (T, error)) (T, error) {
	res, err := s.runOne(ctx, func(ctx context.Context, q querier) (any, error) { return fn(ctx, q) })
	if err != nil {
		var zero T
		return zero, err
	}
	return res.(T), nil
}

// runTx runs fn in a transaction of its own on Postgres, checking the
// context's fence first (WithFence), and retries it when Postgres aborted
// it for a conflict.
func (s *DB) runTx(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) (any, error)) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fence, fenced := fenceOf(ctx)
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pgTxTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		res, err := func() (any, error) {
			tx, err := s.w.BeginTx(tctx, nil)
			if err != nil {
				return nil, fmt.Errorf("begin: %w", err)
			}
			defer func() { _ = tx.Rollback() }()
			if fenced {
				if err := s.checkFence(tctx, tx, fence); err != nil {
					return nil, err
				}
			}
			res, err := fn(tctx, tx)
			if err != nil {
				return nil, err
			}
			if err := tx.Commit(); err != nil {
				return nil, fmt.Errorf("commit: %w", err)
			}
			return res, nil
		}()
		if err == nil || !retryable(err) || attempt >= pgRetries || tctx.Err() != nil {
			return res, err
		}
		time.Sleep(time.Duration(rand.N(2*(attempt+1))) * time.Millisecond)
	}
}
