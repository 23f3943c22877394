package store

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
)

// Group commit.
//
// With synchronous=FULL every commit waits for an fsync of the WAL, which
// costs far more than a write's few statements (about 250µs against 30µs on
// the development VM; milliseconds on many disks). So the writes of the
// callback -> suspension path (RecordFiring, ClaimActions, MarkWriteSent,
// CompleteAction, RescueActions) do not run their own transactions: each
// hands a writeOp to the writer goroutine, which takes every op waiting at
// that moment (up to maxBatch), runs each in its own SAVEPOINT inside one
// IMMEDIATE transaction, commits once and then answers them all. A lone
// caller gets a batch of one (no savepoint); N concurrent callers share one
// fsync. A burst of firings, their claims, write marks and outcomes costs a
// fraction of an fsync each.
//
// The result is the same as running the ops one after another, in the order
// they reached the writer: a later op in a batch sees the earlier ones. An op
// that fails is rolled back to its savepoint and only its caller gets the
// error. If the commit fails, every caller in the batch gets the error and
// none of the ops happened. Nil is returned only after the commit: the op is
// durable.
//
// Cancellation: a caller whose ctx ends while its op waits (to be handed
// over, or for the writer to reach it in a batch) withdraws it and gets
// ctx.Err(); that op did not happen. Once the writer has started on the op
// the caller waits for the commit, which is bounded by the batch.
//
// The rare writes of people and schedules (re-arms, reactivations, releases)
// run their own transactions on the same single write connection.

const maxBatch = 128

// writeOp states: the writer moves queued to running, a caller that gives
// up moves queued to abandoned; whoever moves first wins.
const (
	opQueued int32 = iota
	opRunning
	opAbandoned
)

// writeOp is one write for the writer goroutine: run does it inside tx.
type writeOp struct {
	run   func(ctx context.Context, tx *sql.Tx) (any, error)
	state atomic.Int32
	done  chan struct{} // closed by finish
	res   any
	err   error
}

func (o *writeOp) finish(res any, err error) {
	o.res, o.err = res, err
	close(o.done)
}

// submit hands run to the writer and waits until it is committed (or failed).
func (s *DB) submit(ctx context.Context, run func(ctx context.Context, tx *sql.Tx) (any, error)) (any, error) {
	// Checked first because select picks at random among ready cases.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.pg {
		return s.runTx(ctx, run) // Postgres batches the suspension path its own way (pgbatch.go)
	}
	op := &writeOp{run: run, done: make(chan struct{})}
	select {
	case s.ops <- op:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stop:
		return nil, ErrClosed
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		if op.state.CompareAndSwap(opQueued, opAbandoned) {
			return nil, ctx.Err()
		}
		<-op.done // the writer is on it: the outcome is known soon
	}
	return op.res, op.err
}

// submitAs is submit for an op whose result is a T.
func submitAs[T any](ctx context.Context, s *DB, run func(ctx context.Context, tx *sql.Tx) (T, error)) (T, error) {
	res, err := s.submit(ctx, func(ctx context.Context, tx *sql.Tx) (any, error) { return run(ctx, tx) })
	if err != nil {
		var zero T
		return zero, err
	}
	return res.(T), nil
}

// writeLoop is the writer goroutine: it runs until Close closes s.stop.
// s.ops is unbuffered, so every op it receives is answered, and a caller
// never blocks on a writer that has gone.
func (s *DB) writeLoop() {
	defer close(s.writerDone)
	batch := make([]*writeOp, 0, maxBatch)
	for {
		select {
		case op := <-s.ops:
			batch = append(batch[:0], op)
		case <-s.stop:
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		s.runBatch(batch)
		clear(batch) // let the finished ops go
	}
}

// runBatch runs batch in one transaction and answers every op in it that was
// not abandoned.
func (s *DB) runBatch(batch []*writeOp) {
	// Not a caller's ctx: one caller giving up must not abort the others.
	// Close waits for the batch; busy_timeout bounds a wait for another
	// process's write lock.
	ctx := context.Background()

	failRest := func(rest []*writeOp, err error) {
		for _, r := range rest {
			if r.state.CompareAndSwap(opQueued, opRunning) {
				r.finish(nil, err)
			}
		}
	}

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		failRest(batch, fmt.Errorf("begin: %w", err))
		return
	}
	savepoints := len(batch) > 1
	var (
		sp, release, rollbackTo *sql.Stmt
		ok                      = make([]*writeOp, 0, len(batch))
	)
	if savepoints {
		sp, release, rollbackTo = tx.StmtContext(ctx, s.wSavepoint), tx.StmtContext(ctx, s.wRelease), tx.StmtContext(ctx, s.wRollbackTo)
	}
	abort := func(i int, err error) {
		_ = tx.Rollback()
		for _, r := range ok {
			r.finish(nil, err)
		}
		batch[i].finish(nil, err)
		failRest(batch[i+1:], err)
	}

	for i, r := range batch {
		if !r.state.CompareAndSwap(opQueued, opRunning) {
			continue // its caller gave up
		}
		if !savepoints {
			res, err := r.run(ctx, tx)
			if err != nil {
				abort(i, err)
				return
			}
			r.res = res
			ok = append(ok, r)
			continue
		}
		if _, err := sp.ExecContext(ctx); err != nil {
			abort(i, fmt.Errorf("savepoint: %w", err))
			return
		}
		res, err := r.run(ctx, tx)
		if err != nil {
			// Undo this op only. If SQLite already rolled the whole
			// transaction back (disk full, I/O error), the savepoint is
			// gone and the batch fails.
			if _, rbErr := rollbackTo.ExecContext(ctx); rbErr != nil {
				abort(i, fmt.Errorf("%w (rollback to savepoint: %v)", err, rbErr))
				return
			}
		}
		if _, relErr := release.ExecContext(ctx); relErr != nil {
			abort(i, fmt.Errorf("release savepoint: %w", relErr))
			return
		}
		if err != nil {
			r.finish(nil, err)
			continue
		}
		r.res = res
		ok = append(ok, r)
	}

	if len(ok) == 0 {
		_ = tx.Rollback() // nothing to keep
		return
	}
	if err := tx.Commit(); err != nil {
		err = fmt.Errorf("commit: %w", err)
		for _, r := range ok {
			r.finish(nil, err)
		}
		return
	}
	s.wrote()
	for _, r := range ok {
		r.finish(r.res, nil)
	}
}
