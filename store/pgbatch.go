package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// Group commit on Postgres: firings, write marks and completions.
//
// A burst of callbacks is a burst of firings, then of write marks and of
// completions, each one statement, one round trip and one commit. The
// concurrent ones of a kind are gathered instead (as the SQLite writer
// gathers its ops, groupcommit.go) and done by one statement: record_firings,
// an UPDATE of the marked actions, complete_actions. One round trip and one
// commit for the batch: a WAL flush shared by all of it, and a connection of
// the pool held once. Up to pgBatchRunners batches of a kind run at once,
// each on a connection of its own.
//
// Each firing and each completion of a batch runs in a subtransaction of
// its own (a PL/pgSQL block with an EXCEPTION clause): one that fails is
// undone alone and the others are done. A failure that may pass (a
// deadlock, a serialization failure, a concurrent insert of the same key)
// sends the op back to its caller, which does it alone (with runOne's
// retries); nil is returned only after the batch's commit, and if the
// batch's statement fails as a whole (it then committed nothing) every op in
// it is done alone. A batch takes its firings in the order of their
// accounts' lock keys (hashtext, then the account), the order claim_actions
// locks in, and each firing takes its account's lock before it writes
// anything; marks and completions go in action id order. So two batches,
// or a batch and a claim, on several replicas wait for each other in one
// direction only.
//
// A caller whose ctx ends while its op waits for a batch withdraws it (the
// op did not happen); once a batch has taken it, the caller waits for the
// batch's outcome. A write made with a fence (WithFence) is not batched:
// the fence is checked in its own transaction.

const (
	pgBatchRunners = 2  // batches of one kind in flight at once (the pool has pgPoolSize connections)
	pgMaxBatch     = 48 // ops in one batch: fewer than the 64 subtransaction ids a backend caches (PGPROC_MAX_CACHED_SUBXIDS)
)

// pgOp is an op waiting for a batch, or in one.
type pgOp struct {
	state atomic.Int32 // opQueued, opRunning, opAbandoned (groupcommit.go)
	done  chan struct{}
	err   error
	alone bool // do it alone: the batch failed it with a retryable error
}

func (o *pgOp) op() *pgOp { return o }

// pgBatcher gathers the waiting ops of one kind; run does a batch of them,
// setting each op's outcome.
type pgBatcher[T interface{ op() *pgOp }] struct {
	run     func(batch []T)
	mu      sync.Mutex
	queue   []T
	runners int
}

// do queues op and waits for its batch. It reports whether the caller
// must do op alone, or the op's error (ctx's if it withdrew op: then op
// did not happen).
func (b *pgBatcher[T]) do(ctx context.Context, op T) (alone bool, err error) {
	o := op.op()
	o.done = make(chan struct{})
	b.mu.Lock()
	b.queue = append(b.queue, op)
	if b.runners < pgBatchRunners {
		b.runners++
		go b.runner()
	}
	b.mu.Unlock()
	select {
	case <-o.done:
	case <-ctx.Done():
		if o.state.CompareAndSwap(opQueued, opAbandoned) {
			return false, ctx.Err()
		}
		<-o.done
	}
	return o.alone, o.err
}

// runner does the waiting ops, batch after batch, until none waits.
func (b *pgBatcher[T]) runner() {
	for {
		b.mu.Lock()
		var batch []T
		for len(b.queue) > 0 && len(batch) < pgMaxBatch {
			op := b.queue[0]
			var zero T
			b.queue[0] = zero
			b.queue = b.queue[1:]
			if op.op().state.CompareAndSwap(opQueued, opRunning) {
				batch = append(batch, op)
			}
		}
		if len(batch) == 0 {
			b.runners--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.run(batch)
		for _, op := range batch {
			close(op.op().done)
		}
	}
}

// batchOutcome sets the outcome of the ops of a batch whose statement
// failed with err (nil: each op's own outcome stands). A statement that
// failed as a whole committed nothing, so each op is done alone: one op's
// bad input, or an error that may pass, fails only its own caller.
func batchOutcome(ops []*pgOp, err error) {
	if err == nil {
		return
	}
	for _, o := range ops {
		o.err, o.alone = nil, true
	}
}

// outcome sets an op's outcome from the code and message of the error a
// batch's function caught ("": none).
func (o *pgOp) outcome(code, msg string) {
	switch {
	case code == "":
	case retryableCode(code):
		o.alone = true
	default:
		o.err = fmt.Errorf("%s (SQLSTATE %s)", msg, code)
	}
}

// batchCtx bounds a batch: not a caller's ctx, as one caller giving up must
// not abort the others.
func batchCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), pgTxTimeout)
}

type pgFiringOp struct {
	pgOp
	f        *Firing
	received int64
	res      RecordResult
}

// recordFiringPG is RecordFiring's work on Postgres. f is valid and
// received is f.ReceivedAt in unix nanoseconds.
func (s *DB) recordFiringPG(ctx context.Context, f *Firing, received int64) (RecordResult, error) {
	if _, fenced := fenceOf(ctx); fenced {
		return s.recordFiringOne(ctx, f, received) // the fence is checked in its transaction
	}
	op := &pgFiringOp{f: f, received: received}
	alone, err := s.firings.do(ctx, op)
	if alone {
		return s.recordFiringOne(ctx, f, received)
	}
	return op.res, err
}

// recordFirings records a batch of firings: record_firings, one statement.
func (s *DB) recordFirings(batch []*pgFiringOp) {
	ctx, cancel := batchCtx()
	defer cancel()
	if len(batch) == 1 {
		op := batch[0]
		op.res, op.err = s.recordFiringOne(ctx, op.f, op.received)
		return
	}
	args := make([]pgFiring, len(batch))
	ops := make([]*pgOp, len(batch))
	for i, op := range batch {
		args[i] = newPGFiring(op.f, op.received)
		args[i].I = i
		ops[i] = &op.pgOp
	}
	answered := make([]bool, len(batch))
	err := s.recordFiringsCall(ctx, args, func(i int, inc Incident, result string, tripID int64, claimed bool, lastWrite int64, code, msg string) {
		if i < 0 || i >= len(batch) {
			return
		}
		answered[i] = true
		op := batch[i]
		if op.outcome(code, msg); code == "" {
			op.res = firingResult(op.f, result, tripID, claimed, lastWrite, inc)
		}
	})
	for i, op := range batch {
		if err == nil && !answered[i] {
			op.err = fmt.Errorf("record_firings did not answer firing %d", i)
		}
	}
	batchOutcome(ops, err)
}

type pgMarkOp struct {
	pgOp
	id      int64  // action
	owner   string // its claim's owner
	attempt int
	sent    int64 // unix nanoseconds
	lease   int64
}

// markPG is MarkWriteSent's work on Postgres: markQuery, group-committed
// with other marks.
func (s *DB) markPG(ctx context.Context, op *pgMarkOp) error {
	if _, fenced := fenceOf(ctx); fenced {
		return s.markOne(ctx, op)
	}
	alone, err := s.marks.do(ctx, op)
	if alone {
		return s.markOne(ctx, op)
	}
	return err
}

func (s *DB) markOne(ctx context.Context, op *pgMarkOp) error {
	_, err := oneAs(ctx, s, func(ctx context.Context, q querier) (struct{}, error) {
		return marked(q.ExecContext(ctx, s.q(markQuery), op.sent, op.lease, op.sent, op.id, op.owner, op.attempt))
	})
	return err
}

// markBatch records a batch of write marks: one UPDATE (markQuery's, on
// each mark). An action marked twice in the batch has its later marks made
// alone, after it.
func (s *DB) markBatch(batch []*pgMarkOp) {
	ctx, cancel := batchCtx()
	defer cancel()
	type arg struct {
		I       int    `json:"i"`
		ID      int64  `json:"id"`
		Owner   string `json:"owner"`
		Attempt int    `json:"attempt"`
		Sent    int64  `json:"sent"`
		Lease   int64  `json:"lease"`
	}
	var (
		args []arg
		ops  []*pgOp
		seen = map[int64]bool{}
	)
	for i, op := range batch {
		if seen[op.id] {
			op.alone = true
			continue
		}
		seen[op.id] = true
		args = append(args, arg{I: i, ID: op.id, Owner: op.owner, Attempt: op.attempt, Sent: op.sent, Lease: op.lease})
		ops = append(ops, &op.pgOp)
	}
	if len(args) == 1 {
		op := batch[args[0].I]
		op.err = s.markOne(ctx, op)
		return
	}
	err := func() error {
		js, err := json.Marshal(args)
		if err != nil {
			return err
		}
		ids := make([]int64, len(args))
		for i, a := range args {
			ids[i] = a.ID
		}
		// The rows are locked in id order, as complete_actions goes: a
		// batch of marks and one of completions wait for each other, never
		// in a circle. They are found by their ids ($2) through the primary
		// key: a join with the batch may be planned as a read of the whole
		// table.
		rows, err := s.w.QueryContext(ctx, `WITH m AS (
				SELECT * FROM jsonb_to_recordset($1::JSONB) AS m (i INT, id BIGINT, owner TEXT, attempt BIGINT, sent BIGINT, lease BIGINT)
			), l AS (
				SELECT a.id FROM actions a WHERE a.id = ANY($2::BIGINT[]) ORDER BY a.id FOR UPDATE OF a
			)
			UPDATE actions a
			SET write_sent_at = m.sent, lease_until = GREATEST(a.lease_until, m.lease), updated_at = m.sent
			FROM m JOIN l ON l.id = m.id
			WHERE a.id = ANY($2::BIGINT[]) AND a.id = m.id AND a.state = 'running' AND a.owner = m.owner
				AND a.attempts = m.attempt AND a.lease_until > m.sent
			RETURNING m.i`, string(js), ids)
		if err != nil {
			return err
		}
		defer rows.Close()
		found := map[int]bool{}
		for rows.Next() {
			var i int
			if err := rows.Scan(&i); err != nil {
				return err
			}
			found[i] = true
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, a := range args {
			if !found[a.I] {
				batch[a.I].err = ErrNotFound // finished, or claimed by another owner
			}
		}
		return nil
	}()
	batchOutcome(ops, err)
}

type pgCompleteOp struct {
	pgOp
	p pgCompletion
}

// completeBatch records a batch of completions: complete_actions, one
// statement.
func (s *DB) completeBatch(batch []*pgCompleteOp) {
	ctx, cancel := batchCtx()
	defer cancel()
	if len(batch) == 1 {
		batch[0].err = s.completeOne(ctx, &batch[0].p)
		return
	}
	args := make([]pgCompletion, len(batch))
	ops := make([]*pgOp, len(batch))
	for i, op := range batch {
		args[i] = op.p
		args[i].I = i
		ops[i] = &op.pgOp
	}
	err := func() error {
		js, err := json.Marshal(args)
		if err != nil {
			return err
		}
		rows, err := s.w.QueryContext(ctx, `SELECT o_i, o_found, o_code, o_msg FROM complete_actions($1::JSONB)`, string(js))
		if err != nil {
			return err
		}
		defer rows.Close()
		answered := make([]bool, len(batch))
		for rows.Next() {
			var (
				i         int
				found     bool
				code, msg string
			)
			if err := rows.Scan(&i, &found, &code, &msg); err != nil {
				return err
			}
			if i < 0 || i >= len(batch) {
				continue
			}
			answered[i] = true
			if batch[i].outcome(code, msg); code == "" && !found {
				batch[i].err = ErrNotFound // not running, or claimed by another owner
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for i, op := range batch {
			if !answered[i] {
				op.err = fmt.Errorf("complete_actions did not answer completion %d", i)
			}
		}
		return nil
	}()
	batchOutcome(ops, err)
}

// completeActionsFunc completes a batch of attempts (pgCompletion's JSON),
// each as pgCompleteQuery in a subtransaction of its own, in the order of
// their actions' ids.
var completeActionsFunc = `CREATE FUNCTION complete_actions(p JSONB,
		OUT o_i INT, OUT o_found BOOLEAN, OUT o_code TEXT, OUT o_msg TEXT)
	RETURNS SETOF record LANGUAGE plpgsql VOLATILE AS $fn$
	DECLARE
		c RECORD;
	BEGIN
		FOR c IN SELECT * FROM jsonb_to_recordset(p) AS x (i INT, state TEXT, outcome TEXT, detail TEXT,
				attempted BIGINT, next BIGINT, lease BIGINT, sent BIGINT, progress TEXT, now BIGINT, id BIGINT,
				owner TEXT, clear_sent BOOLEAN, inc_state TEXT, kinds TEXT[], locks BOOLEAN[], ats BIGINT[])
			ORDER BY x.id, x.i
		LOOP
			o_i := c.i;
			o_code := '';
			o_msg := '';
			BEGIN
				` + strings.NewReplacer(
	"$16", "c.ats", "$15", "c.locks", "$14", "c.kinds", "$13", "c.inc_state", "$12", "c.clear_sent",
	"$11", "c.owner", "$10", "c.id", "$9", "c.now", "$8", "c.progress", "$7", "c.sent", "$6", "c.lease",
	"$5", "c.next", "$4", "c.attempted", "$3", "c.detail", "$2", "c.outcome", "$1", "c.state",
	"SELECT incident_id, kind FROM a", "SELECT count(*) > 0 INTO o_found FROM a").Replace(pgCompleteQuery) + `;
			EXCEPTION WHEN OTHERS THEN
				o_found := false;
				o_code := SQLSTATE;
				o_msg := SQLERRM;
			END;
			RETURN NEXT;
		END LOOP;
	END
	$fn$`

// recordFiringsCall runs record_firings on args, one statement, and calls
// each with the answer of each firing (i: its place in args).
func (s *DB) recordFiringsCall(ctx context.Context, args []pgFiring, each func(i int, inc Incident, result string, tripID int64, claimed bool, lastWrite int64, code, msg string)) error {
	js, err := json.Marshal(args)
	if err != nil {
		return err
	}
	rows, err := s.w.QueryContext(ctx, recordFiringsCall, string(js))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			i            int
			result, code string
			msg          string
			tripID       int64
			claimed      bool
			lastWrite    int64
		)
		inc, err := scanIncident(scanFunc(func(dest ...any) error {
			return rows.Scan(append([]any{&i, &result, &tripID, &claimed, &lastWrite, &code, &msg}, dest...)...)
		}))
		if err != nil {
			return err
		}
		each(i, inc, result, tripID, claimed, lastWrite, code, msg)
	}
	return rows.Err() // the commit's error, if any, comes with the end of the rows
}

// recordFiringsCall calls record_firings: a firing that failed has its
// error's code and message, and an empty incident.
var recordFiringsCall = `SELECT i, o_result, o_trip, o_claimed, o_last_write, o_code, o_msg, ` + emptyIfNull(incidentOf) +
	` FROM record_firings($1::JSONB)`

// recordFiringsFunc records a batch of firings (pgFiring's JSON), each as
// record_firing in a subtransaction of its own, in the order of their
// accounts' lock keys.
var recordFiringsFunc = `CREATE FUNCTION record_firings(p JSONB,
		OUT i INT, OUT o_result TEXT, OUT o_inc incidents, OUT o_trip BIGINT, OUT o_claimed BOOLEAN,
		OUT o_last_write BIGINT, OUT o_code TEXT, OUT o_msg TEXT)
	RETURNS SETOF record LANGUAGE plpgsql VOLATILE AS $fn$
	DECLARE
		f RECORD;
		r RECORD;
	BEGIN
		FOR f IN SELECT * FROM jsonb_to_recordset(p) AS x (i INT, token TEXT, source TEXT, rule TEXT,
				account TEXT, account_name TEXT, period TEXT, trigger_sid TEXT, category TEXT, trigger_by TEXT,
				recurring TEXT, trigger_value TEXT, current_value TEXT, date_fired TEXT, action TEXT,
				dry_run BIGINT, received BIGINT, kinds TEXT[], locks BOOLEAN[], owner TEXT, lease BIGINT, rearm BOOLEAN)
			ORDER BY hashtext(x.account), x.account, x.i
		LOOP
			i := f.i;
			o_code := '';
			o_msg := '';
			BEGIN
				SELECT * INTO r FROM record_firing(f.token, f.source, f.rule, f.account, f.account_name,
					f.period, f.trigger_sid, f.category, f.trigger_by, f.recurring, f.trigger_value,
					f.current_value, f.date_fired, f.action, f.dry_run, f.received, f.kinds, f.locks,
					f.owner, f.lease, coalesce(f.rearm, false));
				o_result := r.o_result;
				o_inc := r.o_inc;
				o_trip := r.o_trip;
				o_claimed := r.o_claimed;
				o_last_write := r.o_last_write;
			EXCEPTION WHEN OTHERS THEN
				o_result := '';
				o_inc := NULL;
				o_trip := 0;
				o_claimed := false;
				o_last_write := 0;
				o_code := SQLSTATE;
				o_msg := SQLERRM;
			END;
			RETURN NEXT;
		END LOOP;
	END
	$fn$`

// emptyIfNull is cols (incidentOf) with each column 0 or ” where NULL:
// the incident of a firing that failed.
func emptyIfNull(cols string) string {
	var out []string
	for _, c := range strings.Split(cols, ", ") {
		zero := "''"
		switch strings.TrimPrefix(c, "(o_inc).") {
		case "id", "dry_run", "firings", "created_at", "updated_at":
			zero = "0"
		}
		out = append(out, "coalesce("+c+", "+zero+")")
	}
	return strings.Join(out, ", ")
}
