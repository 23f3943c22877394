package breaker

import (
	"context"
	"net/http/httptrace"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// The fast path: the process that records a callback's new incident runs its
// suspension itself, at once, instead of leaving it to the executor's next
// pass. Left to the executor, a suspension waits for the firing's commit (an
// fsync), the executor's pick-up (reads of the pending actions and of the
// incident), the read before the write (a Twilio round trip) and the
// write-intent mark (a second fsync), one after another. On the fast path:
//
//   - the read before the write starts as soon as the callback is verified
//     and runs while the firing is committed;
//   - the firing's commit claims the trip (store.Claim): it is created with
//     detailClaimed and due one write lease later, so no executor pass takes
//     it while the claimant works, and a process that starts after a crash
//     waits out the lease before it reads the account;
//   - the trip's action and incident come back from the commit; nothing is
//     read again;
//   - the write-intent mark (detailWriteSent) is recorded when the suspend
//     request has been written to the connection, while Twilio answers,
//     instead of before the request leaves (markOnSend).
//
// Exactly-once suspension is kept as on the executor's path (actions.go): the
// account's lock is taken before the read and held until the outcome is
// recorded, so the read is fresh and no other action of ours writes in
// between; the action is marked in flight as soon as its commit returns.
//
// What a crash may leave differs. A claim does not say whether a write was
// sent: the process may have died before the read answered, or after the
// write left but before its mark was durable (a window of one commit). So a
// later process that finds a claimed trip's account suspended records
// already_suspended, never "suspended by us": a breaker must not schedule
// the reactivation of an account that somebody else may have suspended. The
// cost of that rare case is a suspension of ours not counted as ours (no
// scheduled reactivation; a person reactivates it).
//
// The fast path is only taken when it can start at once: the executor is
// running, a worker slot and the account's lock are free, no write that may
// still land is known on the account, and this process has not recorded
// the firing's token before (a replayed callback costs no Twilio read).
// Otherwise the firing is recorded as usual and the executor runs it.

// detailClaimed is the stored detail of a trip action claimed by the process
// that recorded it; wroteBefore does not count it as a write (see above).
// Should a later process defer the action before it decides (a lease to wait
// out, an error), the new detail starts with prefixClaimed, so the claim is
// not forgotten.
const (
	detailClaimed = "claimed by the receiving process, which reads the account and suspends it at once"
	prefixClaimed = "claimed by a process that stopped before recording the outcome; since then: "
)

// claimLeft reports whether a is a trip claimed by a fast path that did not
// record its outcome (a process that stopped; in the claimant's own process
// the action's detail is cleared).
func claimLeft(a store.Action) bool {
	return a.Detail == detailClaimed || strings.HasPrefix(a.Detail, prefixClaimed)
}

// detailClaimLost ends the detail of an incident whose claimed trip found
// the account suspended in a later process.
const detailClaimLost = " (the process that recorded this callback stopped before recording the outcome; had its suspend write been sent, this suspension would be its own, but it is not counted as such)"

// execState is the running executor's, shared with the fast path.
type execState struct {
	actx context.Context // actions' context: outlives requests, ends after the drain
	sem  chan struct{}   // worker slots
	wg   *sync.WaitGroup

	mu     sync.Mutex
	closed bool // set when the executor stops taking work
}

// fastTrip is a claimed trip between Accept and runFast.
type fastTrip struct {
	st      *execState
	sid     string
	unlock  func() // the account's lock (acctMu), held from the claim on
	arrived time.Time
	done    chan fastDone // the commit's outcome, from Accept
}

type fastDone struct {
	res store.RecordResult
	err error
	at  time.Time // when the commit returned
}

// fastRun is what runTrip gets on the fast path: the read made while the
// firing was committed, and when the callback arrived.
type fastRun struct {
	acct    twilioapi.Account
	err     error
	arrived time.Time
	// twilioWait is the part of the time to the write spent waiting for
	// Twilio's answer to the read once the firing was durable: Twilio's
	// share, not the daemon's (the benchmark subtracts it for the daemon's
	// overhead).
	twilioWait time.Duration
}

// claimFast starts the fast path for a callback of rule r from account sid,
// or returns nil when it cannot start at once. The caller must call
// ft.committed exactly once.
func (b *Breaker) claimFast(r *rules.Rule, sid, token string, arrived time.Time) *fastTrip {
	if r.Action != rules.ActionSuspend || r.DryRun || b.tokens.has(token) {
		return nil
	}
	st := b.exec.Load()
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return nil
	}
	if _, held := b.leases.until(sid, b.now()); held {
		return nil
	}
	select {
	case st.sem <- struct{}{}:
	default:
		return nil
	}
	unlock, ok := b.acctMu.tryLock(sid)
	if !ok {
		<-st.sem
		return nil
	}
	st.wg.Add(1)
	ft := &fastTrip{st: st, sid: sid, unlock: unlock, arrived: arrived, done: make(chan fastDone, 1)}
	go b.runFast(ft)
	return ft
}

// claim is the store.Claim of a firing on the fast path.
func (b *Breaker) claim(now time.Time) *store.Claim {
	return &store.Claim{NextAttemptAt: now.Add(b.lease), Detail: detailClaimed}
}

// committed hands the commit's outcome to runFast. A trip it will run is
// marked in flight first, so no executor pass can start it too.
func (ft *fastTrip) committed(b *Breaker, res store.RecordResult, err error) {
	if err == nil && res.NewIncident && res.Trip.ID != 0 {
		b.inflight.Store(res.Trip.ID, struct{}{})
	}
	ft.done <- fastDone{res, err, time.Now()}
	// Let runFast have this P now: the caller's answer to the callback can
	// wait the few microseconds until the suspend request is on its way.
	runtime.Gosched()
}

func (b *Breaker) runFast(ft *fastTrip) {
	defer ft.st.wg.Done()
	defer func() { <-ft.st.sem }()
	defer ft.unlock()
	ctx := ft.st.actx
	var sent, answered atomic.Int64 // the read's last attempt, monotonic ns since ft.arrived
	since := func() int64 { return int64(time.Since(ft.arrived)) }
	rctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest:         func(httptrace.WroteRequestInfo) { sent.Store(since()) },
		GotFirstResponseByte: func() { answered.Store(since()) },
	})
	acct, err := b.readAccount(rctx, ft.sid) // while the firing is committed
	d := <-ft.done
	if d.err != nil || !d.res.NewIncident || d.res.Trip.ID == 0 {
		return // nothing new was recorded: the read was for nothing
	}
	defer b.inflight.Delete(d.res.Trip.ID)
	a := d.res.Trip
	a.Detail = "" // this process knows no write was sent yet
	durable := int64(d.at.Sub(ft.arrived))
	wait := time.Duration(max(0, answered.Load()-max(sent.Load(), durable)))
	b.runTrip(ctx, a, d.res.Incident, &fastRun{acct: acct, err: err, arrived: ft.arrived, twilioWait: wait})
}

// markOnSend returns a WroteRequest hook that records the write-intent mark
// (detailWriteSent, next attempt one write lease later) each time the suspend
// request has been written: on the fast path the firing's claim stood in for
// it until the first time, and a retried attempt (after a 429) renews the
// lease, so the mark never expires while a write may still be on its way.
// With skipFirst the first attempt is not marked (the caller recorded the
// mark before sending). wait stops further marks (a late hook, as HTTP/2
// may call it after the answer, records nothing) and waits for those
// begun; call it before the outcome is recorded.
func (b *Breaker) markOnSend(ctx context.Context, a store.Action, skipFirst bool) (hook func(httptrace.WroteRequestInfo), wait func()) {
	var (
		mu     sync.Mutex
		closed bool
		n      int
		last   chan struct{} // the latest mark's; marks are recorded in order
		wg     sync.WaitGroup
	)
	hook = func(info httptrace.WroteRequestInfo) {
		if info.Err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if n++; closed || (skipFirst && n == 1) {
			return
		}
		prev, cur := last, make(chan struct{})
		last = cur
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(cur)
			if prev != nil {
				<-prev
			}
			if err := b.store.NoteAction(context.WithoutCancel(ctx), a.ID, b.now().Add(b.lease), detailWriteSent); err != nil {
				b.log.Warn("cannot record the suspend write sent; until its outcome is recorded a restart would not count it as ours",
					"action", a.ID, "err", err)
			}
		}()
	}
	wait = func() {
		mu.Lock()
		closed = true
		mu.Unlock()
		wg.Wait()
	}
	return hook, wait
}

// writeTrace returns ctx with a trace that, when the suspend request has
// been written to Twilio the first time, stores since() in took (ns) and
// observes it in usagebreaker_callback_to_suspend_write_seconds (since nil:
// no measure);
// also, when set, runs on every written request too. The trace runs on the
// HTTP transport's goroutine.
func (b *Breaker) writeTrace(ctx context.Context, since func() time.Duration, took *atomic.Int64, also func(httptrace.WroteRequestInfo)) context.Context {
	var once sync.Once
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if since != nil {
				once.Do(func() {
					d := max(since(), 1)
					took.Store(int64(d))
					b.m.SuspendWriteLatency.Observe(d.Seconds())
				})
			}
			if also != nil {
				also(info)
			}
		},
	})
}

// tokenSet remembers the last tokenSetSize tokens recorded (a ring).
type tokenSet struct {
	mu   sync.Mutex
	m    map[string]struct{}
	ring []string
	next int
}

const tokenSetSize = 4096

func (t *tokenSet) has(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.m[token]
	return ok
}

// add records token and reports whether it was new.
func (t *tokenSet) add(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, seen := t.m[token]; seen {
		return false
	}
	if t.m == nil {
		t.m = make(map[string]struct{}, tokenSetSize)
		t.ring = make([]string, tokenSetSize)
	}
	if old := t.ring[t.next]; old != "" {
		delete(t.m, old)
	}
	t.ring[t.next] = token
	t.next = (t.next + 1) % tokenSetSize
	t.m[token] = struct{}{}
	return true
}
