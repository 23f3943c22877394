package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"
)

func newOp(run func(ctx context.Context, tx *sql.Tx) (any, error)) *writeOp {
	return &writeOp{run: run, done: make(chan struct{})}
}

// recordOp is the op RecordFiring submits for f.
func recordOp(t testing.TB, s *SQLite, f Firing) *writeOp {
	t.Helper()
	received, err := unixNano(f.ReceivedAt)
	if err != nil {
		t.Fatal(err)
	}
	return newOp(func(ctx context.Context, tx *sql.Tx) (any, error) { return s.recordFiringTx(ctx, tx, &f, received) })
}

// claimOp is the op ClaimActions submits.
func claimOp(s *SQLite, owner string, lease, now time.Time, limit int) *writeOp {
	return newOp(func(ctx context.Context, tx *sql.Tx) (any, error) {
		rows, err := tx.StmtContext(ctx, s.wClaim).QueryContext(ctx, owner, lease.UnixNano(), now.UnixNano(), limit)
		if err != nil {
			return nil, err
		}
		return scanActions(rows)
	})
}

// completeOp is the op CompleteAction submits.
func completeOp(s *SQLite, id int64, owner string, c Completion) *writeOp {
	return newOp(func(ctx context.Context, tx *sql.Tx) (any, error) { return s.completeTx(ctx, tx, id, owner, c) })
}

func recorded(o *writeOp) RecordResult {
	r, _ := o.res.(RecordResult)
	return r
}

func isDone(o *writeOp) bool {
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

// A batch behaves like its firings run one after another; a firing that fails
// in SQL is undone alone; an abandoned firing is skipped.
func TestBatchSavepoints(t *testing.T) {
	s, _ := openTest(t)
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []ActionKind{ActionTrip, ""} // validateFiring would refuse; the CHECK constraint does here
	abandoned := recordOp(t, s, firing("tok-gone", "r", "AC-gone", "p", t0))
	abandoned.state.Store(opAbandoned)
	batch := []*writeOp{
		recordOp(t, s, firing("tok-a", "r", "AC", "p", t0)),
		recordOp(t, s, bad),
		recordOp(t, s, firing("tok-a", "r", "AC", "p", t0)), // same token as the first
		recordOp(t, s, firing("tok-b", "r", "AC", "p", t0)), // same key as the first
		abandoned,
		recordOp(t, s, firing("tok-c", "r", "AC2", "p", t0)), // after the failure and the abandoned one
	}
	s.runBatch(batch)

	if isDone(abandoned) || abandoned.state.Load() != opAbandoned {
		t.Error("abandoned op was run")
	}
	for i, r := range batch {
		if r != abandoned && !isDone(r) {
			t.Fatalf("op %d not answered", i)
		}
	}
	first := recorded(batch[0])
	if batch[0].err != nil || !first.NewIncident {
		t.Errorf("first: %+v, %v", first, batch[0].err)
	}
	if batch[1].err == nil || batch[1].res != nil {
		t.Errorf("bad firing: %+v, %v; want an error", batch[1].res, batch[1].err)
	}
	if r := recorded(batch[2]); batch[2].err != nil || !r.DuplicateToken || r.Incident.ID != first.Incident.ID {
		t.Errorf("same token: %+v, %v", r, batch[2].err)
	}
	if r := recorded(batch[3]); batch[3].err != nil || r.NewIncident || r.DuplicateToken || r.Incident.Firings != 2 {
		t.Errorf("same key: %+v, %v", r, batch[3].err)
	}
	if r := recorded(batch[5]); batch[5].err != nil || !r.NewIncident {
		t.Errorf("last: %+v, %v", r, batch[5].err)
	}
	// The bad firing left nothing behind; the others are all there.
	for table, want := range map[string]int{"incidents": 2, "firings": 3, "actions": 4} {
		if n := countRows(t, s, table); n != want {
			t.Errorf("%d %s, want %d", n, table, want)
		}
	}
	incs, err := s.ListIncidents(context.Background(), IncidentFilter{AccountSID: "AC-bad"})
	if err != nil || len(incs) != 0 {
		t.Errorf("bad firing's incident: %+v, %v", incs, err)
	}
}

// Claims, completions and firings share batches: each op sees the ones
// before it, and one that fails (ErrNotFound or an SQL error) fails only its
// own caller.
func TestBatchMixedOps(t *testing.T) {
	s, _ := openTest(t)
	pre := record(t, s, firing("pre", "r", "AC1", "p", t0))
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []ActionKind{ActionTrip, ""}
	lease := t0.Add(time.Hour)
	batch := []*writeOp{
		claimOp(s, "A", lease, t0, 10),
		completeOp(s, pre.Trip.ID, "B", Completion{State: ActionDone, Outcome: OutcomeSuspended}), // not B's
		completeOp(s, pre.Trip.ID, "A", Completion{State: ActionDone, Outcome: OutcomeSuspended, Detail: "ok"}),
		recordOp(t, s, bad),
		recordOp(t, s, firing("x", "r", "AC2", "p", t0)),
		completeOp(s, pre.Trip.ID, "A", Completion{State: ActionDone}), // finished just before
		claimOp(s, "B", lease, t0, 10),
	}
	s.runBatch(batch)
	for i, o := range batch {
		if !isDone(o) {
			t.Fatalf("op %d not answered", i)
		}
	}
	if acts, _ := batch[0].res.([]Action); batch[0].err != nil || len(acts) != 1 || acts[0].ID != pre.Trip.ID || acts[0].Owner != "A" {
		t.Errorf("first claim: %+v, %v", batch[0].res, batch[0].err)
	}
	if !errors.Is(batch[1].err, ErrNotFound) {
		t.Errorf("completion by the wrong owner: %v", batch[1].err)
	}
	if batch[2].err != nil {
		t.Errorf("completion: %v", batch[2].err)
	}
	if batch[3].err == nil {
		t.Error("bad firing: no error")
	}
	x := recorded(batch[4])
	if batch[4].err != nil || !x.NewIncident {
		t.Errorf("firing after the failure: %+v, %v", x, batch[4].err)
	}
	if !errors.Is(batch[5].err, ErrNotFound) {
		t.Errorf("completion of a finished action: %v", batch[5].err)
	}
	acts, _ := batch[6].res.([]Action)
	sort.Slice(acts, func(i, j int) bool { return acts[i].ID < acts[j].ID }) // as ClaimActions does for its callers
	if got := kas(acts); batch[6].err != nil || !reflect.DeepEqual(got, []ka{{pre.Incident.ID, NotifyKind("ops")}, {x.Incident.ID, ActionTrip}}) {
		t.Errorf("second claim: %v, %v; want the new trip and the notification the completion freed", got, batch[6].err)
	}
	if inc := incident(t, s, pre.Incident.ID); inc.State != StateDone || inc.Outcome != OutcomeSuspended || inc.Detail != "ok" {
		t.Errorf("incident = %+v", inc)
	}
	if n := countRows(t, s, "incidents"); n != 2 {
		t.Errorf("%d incidents, want 2", n)
	}
}

// A batch of one runs without savepoints; its failure leaves nothing behind.
func TestBatchOfOneFails(t *testing.T) {
	s, _ := openTest(t)
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []ActionKind{""}
	r := recordOp(t, s, bad)
	s.runBatch([]*writeOp{r})
	if !isDone(r) || r.err == nil {
		t.Fatalf("done %v, err %v", isDone(r), r.err)
	}
	for _, table := range []string{"incidents", "firings", "actions"} {
		if n := countRows(t, s, table); n != 0 {
			t.Errorf("%d %s left behind", n, table)
		}
	}
	// The writer is still fine.
	record(t, s, firing("tok", "r", "AC", "p", t0))
}

// A batch whose ops were all abandoned commits nothing and answers nobody.
func TestBatchAllAbandoned(t *testing.T) {
	s, _ := openTest(t)
	o := recordOp(t, s, firing("tok", "r", "AC", "p", t0))
	o.state.Store(opAbandoned)
	s.runBatch([]*writeOp{o})
	if isDone(o) || countRows(t, s, "firings") != 0 {
		t.Error("an abandoned op ran")
	}
	record(t, s, firing("tok", "r", "AC", "p", t0))
}

// Many concurrent firings (group-committed), with two owners claiming and
// completing at the same time: exactly one incident per key, a duplicate for
// every resent token, and every action claimed once and done.
func TestGroupCommitConcurrentFiringsAndClaims(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	const (
		goroutines = 60
		tokens     = 24
		keys       = 8
	)
	var (
		wg, workers sync.WaitGroup
		firingsDone = make(chan struct{})
		results     = make([]RecordResult, goroutines)
		errs        = make([]error, goroutines)
		mu          sync.Mutex
		claimed     = map[int64]string{}
	)
	errc := make(chan error, 1000)
	for _, owner := range []string{"A", "B"} {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				acts, err := s.ClaimActions(ctx, Claim{Owner: owner, LeaseUntil: t0.Add(time.Hour)}, t0.Add(time.Hour), 4)
				if err != nil {
					errc <- err
					return
				}
				if len(acts) == 0 {
					select {
					case <-firingsDone:
					default:
						runtime.Gosched()
						continue
					}
					n, err := s.CountPendingActions(ctx)
					if err != nil {
						errc <- err
						return
					}
					if n == 0 {
						return
					}
					runtime.Gosched()
					continue
				}
				for _, a := range acts {
					mu.Lock()
					if prev, ok := claimed[a.ID]; ok {
						errc <- fmt.Errorf("action %d claimed by %s and %s", a.ID, prev, owner)
					}
					claimed[a.ID] = owner
					mu.Unlock()
					if _, err := s.CompleteAction(ctx, a.ID, owner, Completion{State: ActionDone, Outcome: OutcomeSent}); err != nil {
						errc <- err
					}
				}
			}
		}()
	}
	start := make(chan struct{})
	for i := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := i % tokens
			key := tok % keys
			f := firing(fmt.Sprintf("tok%d", tok), "r", fmt.Sprintf("AC%d", key), "monthly:2026-11", t0.Add(time.Duration(i)*time.Second))
			f.Actions = []ActionKind{ActionTrip, NotifyKind("ops"), ActionEndCalls}
			if i%2 == 0 {
				f.ClaimBy = &Claim{Owner: fmt.Sprint("recv-", i), LeaseUntil: t0.Add(time.Minute)}
			}
			<-start
			results[i], errs[i] = s.RecordFiring(ctx, f)
		}()
	}
	close(start)
	wg.Wait()
	close(firingsDone)
	// The firings' own claims (ClaimBy) are finished by their owners.
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("firing %d: %v", i, errs[i])
		}
		if res.Trip.State == ActionRunning {
			if _, err := s.CompleteAction(ctx, res.Trip.ID, res.Trip.Owner, Completion{State: ActionDone, Outcome: OutcomeSuspended}); err != nil {
				t.Error(err)
			}
		}
	}
	workers.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}

	incidentOfKey := map[int]int64{}
	var newIncidents, duplicates, trips int
	for i, res := range results {
		key := (i % tokens) % keys
		if id, ok := incidentOfKey[key]; ok && id != res.Incident.ID {
			t.Errorf("key %d: incidents %d and %d", key, id, res.Incident.ID)
		}
		incidentOfKey[key] = res.Incident.ID
		if res.NewIncident {
			newIncidents++
		}
		if res.DuplicateToken {
			duplicates++
		}
		if res.Trip.ID != 0 {
			trips++
		}
	}
	if newIncidents != keys || trips != keys {
		t.Errorf("%d NewIncident results, %d trips; want %d", newIncidents, trips, keys)
	}
	if duplicates != goroutines-tokens {
		t.Errorf("%d DuplicateToken results, want %d", duplicates, goroutines-tokens)
	}
	for table, want := range map[string]int{"incidents": keys, "firings": tokens, "actions": 3 * keys,
		"actions WHERE state = 'done'": 3 * keys} {
		if n := countRows(t, s, table); n != want {
			t.Errorf("%d %s, want %d", n, table, want)
		}
	}
	for key, id := range incidentOfKey {
		if inc := incident(t, s, id); inc.Firings != tokens/keys || inc.State != StateDone {
			t.Errorf("key %d: %+v", key, inc)
		}
	}
}

// Close answers or refuses every caller, never strands one.
func TestCloseDuringLoad(t *testing.T) {
	path := t.TempDir() + "/ub.db"
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	const callers = 20
	errc := make(chan error, callers)
	started := make(chan struct{}, callers)
	for g := range callers {
		go func() {
			var err error
			for i := 0; err == nil; i++ {
				if i%2 == 0 {
					_, err = s.RecordFiring(context.Background(), firing(fmt.Sprint(g, "-", i), "r", "AC", "p", t0))
				} else {
					_, err = s.ClaimActions(context.Background(), Claim{Owner: fmt.Sprint(g), LeaseUntil: t0.Add(time.Hour)}, t0, 1)
				}
				if i == 0 {
					started <- struct{}{}
				}
			}
			errc <- err
		}()
	}
	for range callers { // every caller is under way
		<-started
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range callers {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	}
}
