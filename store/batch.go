package store

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
)

// Group commit for RecordFiring.
//
// With synchronous=FULL every commit waits for an fsync of the WAL, which
// costs far more than a firing's few statements (about 250µs against 30µs on
// the development VM; milliseconds on many disks). So RecordFiring does not run
// its own transaction: it hands the firing to the writer goroutine, which takes
// every firing waiting at that moment (up to maxBatch), runs each in its own
// SAVEPOINT inside one IMMEDIATE transaction, commits once and then answers
// them all. A lone caller gets a batch of one (no savepoint); N concurrent
// callers share fsyncs.
//
// The result is the same as running the firings one after another: a later
// firing in a batch sees the earlier ones (same token: DuplicateToken; same
// key: attached, or reopened if the trip had ended skipped or failed). A
// firing that fails is rolled back to its savepoint and only its caller gets
// the error. If the commit fails, every caller in the batch gets the error
// and none of the firings was recorded. Nil is returned only after the
// commit: the firing is durable.
//
// Cancellation: a caller whose ctx ends while its firing waits (to be handed
// over, or for the writer to reach it in a batch) withdraws it and gets
// ctx.Err(); that firing is not recorded. Once the writer has started on the
// firing the caller waits for the commit, which is bounded by the batch.
//
// The other write methods (RetryAction, FinishAction) are rare and run their
// own transactions on the same single write connection.

const maxBatch = 128

// recordReq states: the writer moves queued to running, a caller that gives
// up moves queued to abandoned; whoever moves first wins.
const (
	reqQueued int32 = iota
	reqRunning
	reqAbandoned
)

type recordReq struct {
	f        Firing
	received int64 // f.ReceivedAt, unix ns
	state    atomic.Int32
	done     chan struct{} // closed by finish
	res      RecordResult
	err      error
}

func (r *recordReq) finish(res RecordResult, err error) {
	r.res, r.err = res, err
	close(r.done)
}

// submit validates f, hands it to the writer and waits for the outcome.
func (s *SQLite) submit(ctx context.Context, f Firing) (RecordResult, error) {
	if err := validateFiring(f); err != nil {
		return RecordResult{}, err
	}
	if f.ReceivedAt.IsZero() {
		f.ReceivedAt = s.now()
	}
	received, err := unixNano(f.ReceivedAt)
	if err != nil {
		return RecordResult{}, fmt.Errorf("received_at: %w", err)
	}
	// Checked first because select picks at random among ready cases.
	if err := ctx.Err(); err != nil {
		return RecordResult{}, err
	}
	req := &recordReq{f: f, received: received, done: make(chan struct{})}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return RecordResult{}, ctx.Err()
	case <-s.stop:
		return RecordResult{}, ErrClosed
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		if req.state.CompareAndSwap(reqQueued, reqAbandoned) {
			return RecordResult{}, ctx.Err()
		}
		<-req.done // the writer is on it: the outcome is known soon
	}
	return req.res, req.err
}

// writeLoop is the writer goroutine: it runs until Close closes s.stop.
// s.reqs is unbuffered, so every request it receives is answered, and a
// caller never blocks on a writer that has gone.
func (s *SQLite) writeLoop() {
	defer close(s.writerDone)
	batch := make([]*recordReq, 0, maxBatch)
	for {
		select {
		case req := <-s.reqs:
			batch = append(batch[:0], req)
		case <-s.stop:
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case req := <-s.reqs:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		s.runBatch(batch)
		clear(batch) // let the finished requests go
	}
}

// runBatch records batch in one transaction and answers every request in it
// that was not abandoned.
func (s *SQLite) runBatch(batch []*recordReq) {
	// Not a caller's ctx: one caller giving up must not abort the others.
	// Close waits for the batch; busy_timeout bounds a wait for another
	// process's write lock.
	ctx := context.Background()

	failRest := func(rest []*recordReq, err error) {
		for _, r := range rest {
			if r.state.CompareAndSwap(reqQueued, reqRunning) {
				r.finish(RecordResult{}, err)
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
		ok                      = make([]*recordReq, 0, len(batch))
	)
	if savepoints {
		sp, release, rollbackTo = tx.StmtContext(ctx, s.wSavepoint), tx.StmtContext(ctx, s.wRelease), tx.StmtContext(ctx, s.wRollbackTo)
	}
	abort := func(i int, err error) {
		_ = tx.Rollback()
		for _, r := range ok {
			r.finish(RecordResult{}, err)
		}
		batch[i].finish(RecordResult{}, err)
		failRest(batch[i+1:], err)
	}

	for i, r := range batch {
		if !r.state.CompareAndSwap(reqQueued, reqRunning) {
			continue // its caller gave up
		}
		if !savepoints {
			res, err := s.recordFiringTx(ctx, tx, &r.f, r.received)
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
		res, err := s.recordFiringTx(ctx, tx, &r.f, r.received)
		if err != nil {
			// Undo this firing only. If SQLite already rolled the whole
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
			r.finish(RecordResult{}, err)
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
			r.finish(RecordResult{}, err)
		}
		return
	}
	s.wrote()
	for _, r := range ok {
		r.finish(r.res, nil)
	}
}
