package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// copyTables are the tables CopyTo copies, parents first, with their columns.
var copyTables = []struct{ name, cols string }{
	{"incidents", incidentCols},
	{"firings", `idempotency_token, incident_id, source, rule, account_sid, account_name, period,
		usage_trigger_sid, usage_category, trigger_by, recurring, trigger_value, current_value,
		date_fired, action, dry_run, received_at`},
	{"actions", actionCols},
	{"rearms", rearmCols},
	{"reactivations", reactivationCols},
	{"approvals", `incident_id, decision, actor, reason, created_at`},
	{"velocity_steps", stepCols},
	{"account_holds", `account_sid, owner, held_until, write_sent_at, created_at`},
}

// CopyTo copies every row of this store (SQLite) into dst (Postgres), ids
// kept, in one transaction of dst: all or nothing. dst must hold no
// incident yet. It returns how many rows it copied per table. Stop the
// daemon on the SQLite file first: what it writes meanwhile is not copied.
func (s *DB) CopyTo(ctx context.Context, dst *DB) (map[string]int, error) {
	if s.pg || !dst.pg {
		return nil, errors.New("store: copy: from SQLite to Postgres only")
	}
	var n int
	if err := dst.w.QueryRowContext(ctx, `SELECT count(*) FROM incidents`).Scan(&n); err != nil {
		return nil, fmt.Errorf("store: copy: %w", err)
	}
	if n > 0 {
		return nil, fmt.Errorf("store: copy: the Postgres state already has %d incidents; copy only into an empty one", n)
	}
	counts := map[string]int{}
	tx, err := dst.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("store: copy: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, t := range copyTables {
		c, err := copyTable(ctx, s.r, tx, t.name, t.cols)
		if err != nil {
			return nil, fmt.Errorf("store: copy %s: %w", t.name, err)
		}
		counts[t.name] = c
	}
	// The holds of the stopped SQLite daemon (holds.go) end, except those
	// that marked a write, which may still land until they pass.
	if _, err := tx.ExecContext(ctx, `UPDATE account_holds SET owner = '',
			held_until = CASE WHEN write_sent_at = 0 THEN 0 ELSE held_until END`); err != nil {
		return nil, fmt.Errorf("store: copy: end the holds: %w", err)
	}
	for _, t := range []string{"incidents", "actions", "reactivations"} {
		if _, err := tx.ExecContext(ctx, `SELECT setval(pg_get_serial_sequence('`+t+`', 'id'),
			COALESCE((SELECT max(id) FROM `+t+`), 0) + 1, false)`); err != nil {
			return nil, fmt.Errorf("store: copy: move the %s ids on: %w", t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("store: copy: commit: %w", err)
	}
	return counts, nil
}

func copyTable(ctx context.Context, src *sql.DB, tx *sql.Tx, table, cols string) (int, error) {
	ncols := len(strings.Split(cols, ","))
	rows, err := src.QueryContext(ctx, `SELECT `+cols+` FROM `+table)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	ins, err := tx.PrepareContext(ctx, rebind(`INSERT INTO `+table+` (`+cols+`) VALUES `+inList(ncols)))
	if err != nil {
		return 0, err
	}
	defer ins.Close()
	vals := make([]any, ncols)
	ptrs := make([]any, ncols)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	n := 0
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		if _, err := ins.ExecContext(ctx, vals...); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}
