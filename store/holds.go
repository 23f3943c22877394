package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// Account holds: a subaccount taken by a status write that is not an action
// of the queue (a manual reactivation, sent from the admin API while a
// person waits for the answer). A hold keeps the account as a claimed action
// does: while it lasts, no action of the account is claimed (ClaimActions,
// RecordFiring's ClaimBy), by any process; the status write it sent is the
// account's last one (RecordResult.LastStatusWrite); and it is refused while
// an action of the account holds a lease. On Postgres it is taken under the
// account's lock, like a claim, so replicas agree.
//
// The holds are the table account_holds: one row per account, its owner
// (empty once released), until when it holds (held_until), and when its
// status write was sent. A row that has passed is history: the next hold of
// the account takes it over.

// ErrHeld is a hold refused: an action of the account holds a lease on it,
// or another hold does.
var ErrHeld = errors.New("the account is held by another action")

// HoldStore takes and releases holds. Same concurrency contract as Store.
type HoldStore interface {
	// HoldAccount holds accountSID for owner from now until until (or
	// renews owner's hold). ErrHeld if an action of the account holds a
	// lease at now, or another owner's hold lasts past now.
	HoldAccount(ctx context.Context, accountSID, owner string, now, until time.Time) error
	// MarkHoldWriteSent records that owner's hold sends a status write from
	// at on and keeps the account at least until until. ErrNotFound if owner
	// no longer holds it at at (it passed, and may have been taken since);
	// ErrHeld if an action of the account holds a lease at at.
	MarkHoldWriteSent(ctx context.Context, accountSID, owner string, at, until time.Time) error
	// ReleaseAccount ends owner's hold at until: now, or later while its
	// status write may still land. Its write stays the account's last
	// status write until another hold's replaces it. A hold owner no longer
	// has is left as it is.
	ReleaseAccount(ctx context.Context, accountSID, owner string, until time.Time) error
}

// holdQuery takes or renews a hold: ?1 account, ?2 owner, ?3 until, ?4 now.
// A row of another owner is replaced only once it has passed; its write
// could no longer land then, or its reactivation was recorded.
const holdQuery = `INSERT INTO account_holds (account_sid, owner, held_until, write_sent_at, created_at)
	VALUES (?1, ?2, ?3, 0, ?4)
	ON CONFLICT (account_sid) DO UPDATE SET owner = excluded.owner, held_until = excluded.held_until,
		write_sent_at = CASE WHEN account_holds.owner = excluded.owner THEN account_holds.write_sent_at ELSE 0 END,
		created_at = CASE WHEN account_holds.owner = excluded.owner THEN account_holds.created_at ELSE excluded.created_at END
	WHERE account_holds.owner = excluded.owner OR account_holds.held_until <= ?4
	RETURNING account_sid`

// HoldAccount implements HoldStore.
func (s *DB) HoldAccount(ctx context.Context, accountSID, owner string, now, until time.Time) error {
	if accountSID == "" || owner == "" {
		return errors.New("store: hold account: empty account or owner")
	}
	at, err := unixNano(now)
	if err != nil {
		return err
	}
	end, err := unixNano(until)
	if err != nil {
		return err
	}
	return s.write(ctx, "hold account", func(tx *sql.Tx) error {
		if err := s.lockUnleased(ctx, tx, accountSID, at); err != nil {
			return err
		}
		var sid string
		err := tx.QueryRowContext(ctx, s.q(holdQuery), accountSID, owner, end, at).Scan(&sid)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrHeld
		}
		return err
	})
}

// lockUnleased takes the account's lock on Postgres, as record_firing and
// claim_actions take it (no claim of the account is made until tx ends;
// SQLite's one writer serialises on its own), and answers ErrHeld if an
// action of the account holds a lease at at.
func (s *DB) lockUnleased(ctx context.Context, tx *sql.Tx, accountSID string, at int64) error {
	if s.pg {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockNSAccount, accountSID); err != nil {
			return err
		}
	}
	var leased bool
	if err := tx.QueryRowContext(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM actions
			WHERE account_sid = ? AND lease_until > 0 AND lease_until > ?)`), accountSID, at).Scan(&leased); err != nil {
		return err
	}
	if leased {
		return ErrHeld
	}
	return nil
}

// MarkHoldWriteSent implements HoldStore.
func (s *DB) MarkHoldWriteSent(ctx context.Context, accountSID, owner string, at, until time.Time) error {
	sent, err := unixNano(at)
	if err != nil {
		return err
	}
	end, err := unixNano(until)
	if err != nil {
		return err
	}
	return s.write(ctx, "mark the hold's write sent", func(tx *sql.Tx) error {
		// As HoldAccount: under the account's lock, no action may hold a
		// lease (another process, whose clock is ahead, may have found the
		// hold passed and claimed one).
		if err := s.lockUnleased(ctx, tx, accountSID, sent); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE account_holds SET write_sent_at = ?, held_until = max(held_until, ?)
			WHERE account_sid = ? AND owner = ? AND held_until > ?`), sent, end, accountSID, owner, sent)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// ReleaseAccount implements HoldStore.
func (s *DB) ReleaseAccount(ctx context.Context, accountSID, owner string, until time.Time) error {
	end, err := unixNano(until)
	if err != nil {
		return err
	}
	return s.write(ctx, "release account", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`UPDATE account_holds SET owner = '', held_until = ? WHERE account_sid = ? AND owner = ?`),
			end, accountSID, owner)
		return err
	})
}
