package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func newReq(t *testing.T, f Firing) *recordReq {
	t.Helper()
	received, err := unixNano(f.ReceivedAt)
	if err != nil {
		t.Fatal(err)
	}
	return &recordReq{f: f, received: received, done: make(chan struct{})}
}

func isDone(r *recordReq) bool {
	select {
	case <-r.done:
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
	bad.Actions = []string{ActionTrip, ""} // validateFiring would refuse; the CHECK constraint does here
	abandoned := newReq(t, firing("tok-gone", "r", "AC-gone", "p", t0))
	abandoned.state.Store(reqAbandoned)
	batch := []*recordReq{
		newReq(t, firing("tok-a", "r", "AC", "p", t0)),
		newReq(t, bad),
		newReq(t, firing("tok-a", "r", "AC", "p", t0)), // same token as the first
		newReq(t, firing("tok-b", "r", "AC", "p", t0)), // same key as the first
		abandoned,
		newReq(t, firing("tok-c", "r", "AC2", "p", t0)), // after the failure and the abandoned one
	}
	s.runBatch(batch)

	if isDone(abandoned) || abandoned.state.Load() != reqAbandoned {
		t.Error("abandoned request was run")
	}
	for i, r := range batch {
		if r != abandoned && !isDone(r) {
			t.Fatalf("request %d not answered", i)
		}
	}
	if batch[0].err != nil || !batch[0].res.NewIncident {
		t.Errorf("first: %+v, %v", batch[0].res, batch[0].err)
	}
	if batch[1].err == nil {
		t.Error("bad firing: no error")
	}
	if r := batch[2]; r.err != nil || !r.res.DuplicateToken || r.res.Incident.ID != batch[0].res.Incident.ID {
		t.Errorf("same token: %+v, %v", r.res, r.err)
	}
	if r := batch[3]; r.err != nil || r.res.NewIncident || r.res.DuplicateToken || r.res.Incident.Firings != 2 {
		t.Errorf("same key: %+v, %v", r.res, r.err)
	}
	if r := batch[5]; r.err != nil || !r.res.NewIncident {
		t.Errorf("last: %+v, %v", r.res, r.err)
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

// A batch of one runs without savepoints; its failure leaves nothing behind.
func TestBatchOfOneFails(t *testing.T) {
	s, _ := openTest(t)
	bad := firing("tok-bad", "r", "AC-bad", "p", t0)
	bad.Actions = []string{""}
	r := newReq(t, bad)
	s.runBatch([]*recordReq{r})
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

// Close answers or refuses every caller, never strands one.
func TestCloseDuringLoad(t *testing.T) {
	path := t.TempDir() + "/ub.db"
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 20)
	for g := range 20 {
		go func() {
			var err error
			for i := 0; err == nil; i++ {
				_, err = s.RecordFiring(context.Background(), firing(t0.Add(time.Duration(g*1000+i)).String(), "r", "AC", "p", t0))
			}
			errc <- err
		}()
	}
	time.Sleep(10 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	}
}
