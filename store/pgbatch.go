package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// Group commit on Postgres, for firings.
//
// A burst of callbacks is a burst of firings, each one round trip and one
// commit (record_firing). Concurrent firings are gathered instead (as the
// SQLite writer gathers its ops, groupcommit.go) and recorded by one call
// of record_firings: one round trip and one commit for the batch, a WAL
// flush shared by all of it. Up to pgFiringRunners batches run at once,
// each on a connection of the pool, so a batch never waits for another.
//
// Each firing of a batch runs in a subtransaction of its own (a PL/pgSQL
// block with an EXCEPTION clause): one that fails is undone alone and the
// others are recorded. A failure that may pass (a deadlock, a serialization
// failure, a concurrent insert of the same key) sends that firing back to
// its caller, which records it alone (recordFiringOne, with its retries);
// nil is returned only after the batch's commit. The batch takes its
// firings in the order of their accounts' lock keys (hashtext, then the
// account), the order claim_actions locks in, so two batches, or a batch and
// a claim, on several replicas wait for each other in one direction only.
//
// A caller whose ctx ends while its firing waits for a batch withdraws it
// (the firing did not happen); once a batch has taken it, the caller waits
// for the batch's outcome.

const (
	pgFiringRunners  = 4  // batches in flight at once (the pool has pgPoolSize connections)
	pgMaxFiringBatch = 64 // firings in one batch
)

type firingOp struct {
	f        *Firing
	received int64
	state    atomic.Int32 // opQueued, opRunning, opAbandoned (groupcommit.go)
	done     chan struct{}
	res      RecordResult
	err      error
	alone    bool // record it alone: the batch failed it with a retryable error
}

// firingBatcher gathers the firings waiting for a batch.
type firingBatcher struct {
	mu      sync.Mutex
	queue   []*firingOp
	runners int
}

// recordFiringPG is RecordFiring's work on Postgres. f is valid and
// received is f.ReceivedAt in unix nanoseconds.
func (s *DB) recordFiringPG(ctx context.Context, f *Firing, received int64) (RecordResult, error) {
	if _, fenced := fenceOf(ctx); fenced {
		return s.recordFiringOne(ctx, f, received) // the fence is checked in its transaction
	}
	op := &firingOp{f: f, received: received, done: make(chan struct{})}
	b := &s.firings
	b.mu.Lock()
	b.queue = append(b.queue, op)
	if b.runners < pgFiringRunners {
		b.runners++
		go s.runFirings()
	}
	b.mu.Unlock()
	select {
	case <-op.done:
	case <-ctx.Done():
		if op.state.CompareAndSwap(opQueued, opAbandoned) {
			return RecordResult{}, ctx.Err()
		}
		<-op.done
	}
	if op.alone {
		return s.recordFiringOne(ctx, f, received)
	}
	return op.res, op.err
}

// runFirings records the waiting firings, batch after batch, until none waits.
func (s *DB) runFirings() {
	b := &s.firings
	for {
		b.mu.Lock()
		var batch []*firingOp
		for len(b.queue) > 0 && len(batch) < pgMaxFiringBatch {
			op := b.queue[0]
			b.queue[0] = nil
			b.queue = b.queue[1:]
			if op.state.CompareAndSwap(opQueued, opRunning) {
				batch = append(batch, op)
			}
		}
		if len(batch) == 0 {
			b.runners--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		s.recordFiringBatch(batch)
	}
}

// recordFiringBatch records batch and answers each of its firings.
func (s *DB) recordFiringBatch(batch []*firingOp) {
	// Not a caller's ctx: one caller giving up must not abort the others.
	ctx, cancel := context.WithTimeout(context.Background(), pgTxTimeout)
	defer cancel()
	if len(batch) == 1 {
		op := batch[0]
		op.res, op.err = s.recordFiringOne(ctx, op.f, op.received)
		close(op.done)
		return
	}
	args := make([]pgFiring, len(batch))
	for i, op := range batch {
		args[i] = newPGFiring(op.f, op.received)
		args[i].I = i
	}
	answered := make([]bool, len(batch))
	err := s.recordFiringsCall(ctx, args, func(i int, inc Incident, result string, tripID int64, claimed bool, code, msg string) {
		if i < 0 || i >= len(batch) || answered[i] {
			return
		}
		answered[i] = true
		op := batch[i]
		switch {
		case code == "":
			op.res = firingResult(op.f, result, tripID, claimed, inc)
		case retryableCode(code):
			op.alone = true
		default:
			op.err = fmt.Errorf("%s (SQLSTATE %s)", msg, code)
		}
	})
	for i, op := range batch {
		switch {
		case err != nil && retryable(err):
			op.res, op.err, op.alone = RecordResult{}, nil, true // nothing was committed
		case err != nil:
			op.res, op.err = RecordResult{}, err
		case !answered[i]:
			op.err = fmt.Errorf("record_firings did not answer firing %d", i)
		}
		close(op.done)
	}
}

// recordFiringsCall runs record_firings on args, one statement, and calls
// each with the answer of each firing (i: its place in args).
func (s *DB) recordFiringsCall(ctx context.Context, args []pgFiring, each func(i int, inc Incident, result string, tripID int64, claimed bool, code, msg string)) error {
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
		)
		inc, err := scanIncident(scanFunc(func(dest ...any) error {
			return rows.Scan(append([]any{&i, &result, &tripID, &claimed, &code, &msg}, dest...)...)
		}))
		if err != nil {
			return err
		}
		each(i, inc, result, tripID, claimed, code, msg)
	}
	return rows.Err() // the commit's error, if any, comes with the end of the rows
}

// recordFiringsCall calls record_firings: a firing that failed has its
// error's code and message, and an empty incident.
var recordFiringsCall = `SELECT i, o_result, o_trip, o_claimed, o_code, o_msg, ` + emptyIfNull(incidentOf) +
	` FROM record_firings($1::JSONB)`

// recordFiringsFunc records a batch of firings (pgFiring's JSON), each as
// record_firing in a subtransaction of its own, in the order of their
// accounts' lock keys.
var recordFiringsFunc = `CREATE FUNCTION record_firings(p JSONB,
		OUT i INT, OUT o_result TEXT, OUT o_inc incidents, OUT o_trip BIGINT, OUT o_claimed BOOLEAN,
		OUT o_code TEXT, OUT o_msg TEXT)
	RETURNS SETOF record LANGUAGE plpgsql VOLATILE AS $fn$
	DECLARE
		f RECORD;
		r RECORD;
	BEGIN
		FOR f IN SELECT * FROM jsonb_to_recordset(p) AS x (i INT, token TEXT, source TEXT, rule TEXT,
				account TEXT, account_name TEXT, period TEXT, trigger_sid TEXT, category TEXT, trigger_by TEXT,
				recurring TEXT, trigger_value TEXT, current_value TEXT, date_fired TEXT, action TEXT,
				dry_run BIGINT, received BIGINT, kinds TEXT[], locks BOOLEAN[], owner TEXT, lease BIGINT)
			ORDER BY hashtext(x.account), x.account, x.i
		LOOP
			i := f.i;
			o_code := '';
			o_msg := '';
			BEGIN
				SELECT * INTO r FROM record_firing(f.token, f.source, f.rule, f.account, f.account_name,
					f.period, f.trigger_sid, f.category, f.trigger_by, f.recurring, f.trigger_value,
					f.current_value, f.date_fired, f.action, f.dry_run, f.received, f.kinds, f.locks,
					f.owner, f.lease);
				o_result := r.o_result;
				o_inc := r.o_inc;
				o_trip := r.o_trip;
				o_claimed := r.o_claimed;
			EXCEPTION WHEN OTHERS THEN
				o_result := '';
				o_inc := NULL;
				o_trip := 0;
				o_claimed := false;
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
