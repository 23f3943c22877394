package store

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC)

func openTest(t testing.TB) (*SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "usagebreaker.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, path
}

func firing(token, rule, account, period string, at time.Time) Firing {
	return Firing{
		Source:           SourceCallback,
		IdempotencyToken: token,
		Rule:             rule,
		AccountSID:       account,
		AccountName:      "name of " + account,
		Period:           period,
		UsageTriggerSID:  "UT" + rule,
		UsageCategory:    "totalprice",
		TriggerBy:        "price",
		Recurring:        "daily",
		TriggerValue:     "100.00",
		CurrentValue:     "100.37",
		DateFired:        "Tue, 24 Nov 2026 10:00:00 +0000",
		Action:           "suspend",
		DryRun:           false,
		ReceivedAt:       at,
		Actions:          []ActionKind{ActionTrip, NotifyKind("ops")},
	}
}

func record(t testing.TB, s *SQLite, f Firing) RecordResult {
	t.Helper()
	res, err := s.RecordFiring(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func actionsOf(t testing.TB, s *SQLite, incidentID int64) []Action {
	t.Helper()
	acts, err := s.Actions(context.Background(), incidentID)
	if err != nil {
		t.Fatal(err)
	}
	return acts
}

func actionOf(t testing.TB, s *SQLite, incidentID int64, kind ActionKind) Action {
	t.Helper()
	for _, a := range actionsOf(t, s, incidentID) {
		if a.Kind == kind {
			return a
		}
	}
	t.Fatalf("incident %d has no %q action", incidentID, kind)
	return Action{}
}

func incident(t testing.TB, s *SQLite, id int64) Incident {
	t.Helper()
	inc, err := s.Incident(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return inc
}

func countRows(t testing.TB, s *SQLite, table string) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRecordFiringNewIncident(t *testing.T) {
	s, _ := openTest(t)
	f := firing("tok1", "r1", "AC1", "daily:2026-11-24", t0)
	f.DryRun = true
	res := record(t, s, f)
	if !res.NewIncident || res.DuplicateToken {
		t.Fatalf("got %+v, want a new incident", res)
	}
	want := Incident{
		ID: res.Incident.ID, Rule: "r1", AccountSID: "AC1", AccountName: "name of AC1",
		Period: "daily:2026-11-24", Source: SourceCallback, IdempotencyToken: "tok1",
		UsageTriggerSID: "UTr1", UsageCategory: "totalprice", TriggerBy: "price",
		Recurring: "daily", TriggerValue: "100.00", CurrentValue: "100.37",
		DateFired: "Tue, 24 Nov 2026 10:00:00 +0000", Action: "suspend", DryRun: true,
		State: StatePending, Firings: 1, CreatedAt: t0, UpdatedAt: t0,
	}
	if res.Incident != want {
		t.Errorf("RecordFiring incident\n got %+v\nwant %+v", res.Incident, want)
	}
	if got := incident(t, s, res.Incident.ID); got != want {
		t.Errorf("Incident\n got %+v\nwant %+v", got, want)
	}
	if n := countRows(t, s, "firings"); n != 1 {
		t.Errorf("%d firings, want 1", n)
	}
}

func TestRecordFiringDuplicateToken(t *testing.T) {
	s, _ := openTest(t)
	first := record(t, s, firing("tok1", "r1", "AC1", "p", t0))

	// Same token, even with other fields (a Twilio retry, or a confused
	// sender): nothing changes, the original incident comes back.
	again := firing("tok1", "r2", "AC2", "q", t0.Add(time.Minute))
	again.Actions = []ActionKind{ActionTrip, ActionEndCalls}
	res := record(t, s, again)
	if !res.DuplicateToken || res.NewIncident {
		t.Fatalf("got %+v, want DuplicateToken only", res)
	}
	if res.Incident != first.Incident {
		t.Errorf("duplicate returned\n %+v\nwant %+v", res.Incident, first.Incident)
	}
	if got := incident(t, s, first.Incident.ID); got != first.Incident {
		t.Errorf("incident changed: %+v", got)
	}
	for table, want := range map[string]int{"firings": 1, "incidents": 1, "actions": 2} {
		if n := countRows(t, s, table); n != want {
			t.Errorf("%d %s, want %d", n, table, want)
		}
	}
}

func TestRecordFiringSameKeyAttaches(t *testing.T) {
	s, _ := openTest(t)
	first := record(t, s, firing("tok1", "r1", "AC1", "p", t0))
	second := firing("tok2", "r1", "AC1", "p", t0.Add(time.Minute))
	second.Source = SourcePoll
	second.AccountName = "renamed"
	second.Actions = []ActionKind{ActionTrip, ActionEndCalls}
	res := record(t, s, second)
	if res.DuplicateToken || res.NewIncident {
		t.Fatalf("got %+v, want an attached firing", res)
	}
	want := first.Incident
	want.Firings = 2
	want.UpdatedAt = t0.Add(time.Minute)
	if res.Incident != want {
		t.Errorf("attached\n got %+v\nwant %+v", res.Incident, want)
	}
	// An older firing arriving late does not move UpdatedAt back.
	res = record(t, s, firing("tok0", "r1", "AC1", "p", t0.Add(-time.Hour)))
	want.Firings = 3
	if res.Incident != want || incident(t, s, want.ID) != want {
		t.Errorf("late firing\n got %+v\nwant %+v", res.Incident, want)
	}
	// The incident's actions are those of the first firing.
	if got := kinds(actionsOf(t, s, want.ID)); !reflect.DeepEqual(got, []ActionKind{ActionTrip, NotifyKind("ops")}) {
		t.Errorf("actions %v", got)
	}
	// Another period, rule or account is another incident.
	for _, f := range []Firing{
		firing("tok3", "r1", "AC1", "p2", t0),
		firing("tok4", "r2", "AC1", "p", t0),
		firing("tok5", "r1", "AC2", "p", t0),
	} {
		if res := record(t, s, f); !res.NewIncident {
			t.Errorf("%s: not a new incident", f.IdempotencyToken)
		}
	}
	if n := countRows(t, s, "firings"); n != 6 {
		t.Errorf("%d firings, want 6", n)
	}
}
func TestRecordFiringActionsPerKind(t *testing.T) {
	s, _ := openTest(t)
	f := firing("tok1", "r1", "AC1", "p", t0)
	f.Actions = []ActionKind{ActionTrip, NotifyKind("ops"), NotifyKind("ops"), ActionEndCalls}
	res := record(t, s, f)
	acts := actionsOf(t, s, res.Incident.ID)
	for _, a := range acts {
		want := Action{ID: a.ID, IncidentID: res.Incident.ID, Kind: a.Kind, State: ActionAvailable,
			NextAttemptAt: t0, CreatedAt: t0, UpdatedAt: t0}
		if a.Kind.LocksAccount() {
			want.AccountSID = "AC1" // trip and end_calls lock the account; notifications do not
		}
		if a != want {
			t.Errorf("action\n got %+v\nwant %+v", a, want)
		}
	}
	if got := kinds(acts); !reflect.DeepEqual(got, []ActionKind{ActionTrip, NotifyKind("ops"), ActionEndCalls}) {
		t.Errorf("kinds %v", got)
	}
	// Without ClaimBy the trip is returned, available, as stored.
	if res.Trip != acts[0] {
		t.Errorf("RecordResult.Trip\n got %+v\nwant %+v", res.Trip, acts[0])
	}

	// No actions: an incident all the same, and no trip.
	f = firing("tok2", "r2", "AC1", "p", t0)
	f.Actions = nil
	res = record(t, s, f)
	if !res.NewIncident || res.Trip.ID != 0 || len(actionsOf(t, s, res.Incident.ID)) != 0 {
		t.Errorf("no-action firing: %+v", res)
	}
}

func TestRecordFiringInvalid(t *testing.T) {
	s, _ := openTest(t)
	for name, mod := range map[string]func(*Firing){
		"no token":       func(f *Firing) { f.IdempotencyToken = "" },
		"no rule":        func(f *Firing) { f.Rule = "" },
		"no account":     func(f *Firing) { f.AccountSID = "" },
		"no period":      func(f *Firing) { f.Period = "" },
		"bad source":     func(f *Firing) { f.Source = "carrier pigeon" },
		"empty kind":     func(f *Firing) { f.Actions = []ActionKind{ActionTrip, ""} },
		"claim no owner": func(f *Firing) { f.ClaimBy = &Claim{LeaseUntil: t0.Add(time.Minute)} },
		"claim no lease": func(f *Firing) { f.ClaimBy = &Claim{Owner: "w"} },
		"time in 2300":   func(f *Firing) { f.ReceivedAt = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) },
		"time pre-1678":  func(f *Firing) { f.ReceivedAt = time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC) },
	} {
		f := firing("tok", "r", "AC", "p", t0)
		mod(&f)
		if _, err := s.RecordFiring(context.Background(), f); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if n := countRows(t, s, "firings"); n != 0 {
		t.Errorf("%d firings recorded", n)
	}
}

func TestRecordFiringZeroReceivedAtIsNow(t *testing.T) {
	s, _ := openTest(t)
	s.now = func() time.Time { return t0 }
	res := record(t, s, firing("tok", "r", "AC", "p", time.Time{}))
	if !res.Incident.CreatedAt.Equal(t0) {
		t.Errorf("CreatedAt %v, want %v", res.Incident.CreatedAt, t0)
	}
}
func TestTimesRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	loc := time.FixedZone("UTC-7", -7*3600)
	at := time.Date(2026, 11, 24, 3, 4, 5, 987654321, loc)
	res := record(t, s, firing("tok", "r", "AC", "p", at))
	inc := incident(t, s, res.Incident.ID)
	if !inc.CreatedAt.Equal(at) || inc.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt %v, want %v in UTC", inc.CreatedAt, at)
	}
	next := time.Date(2030, 1, 2, 3, 4, 5, 1, loc)
	hold := time.Date(2030, 1, 2, 3, 4, 6, 2, loc)
	sent := time.Date(2030, 1, 2, 3, 4, 4, 3, loc)
	a := actionOf(t, s, inc.ID, ActionTrip)
	complete(t, s, a.ID, Completion{State: ActionAvailable, NextAttemptAt: next, HoldAccountUntil: hold, WriteSentAt: sent, Attempted: true})
	got := actionOf(t, s, inc.ID, ActionTrip)
	if got.NextAttemptAt != next.UTC() || got.LeaseUntil != hold.UTC() || got.WriteSentAt != sent.UTC() {
		t.Errorf("NextAttemptAt %v, LeaseUntil %v, WriteSentAt %v; want %v, %v, %v",
			got.NextAttemptAt, got.LeaseUntil, got.WriteSentAt, next.UTC(), hold.UTC(), sent.UTC())
	}
}

// 100 goroutines, 30 tokens over 5 (rule, account, period) keys, each token
// sent 3 or 4 times: exactly 5 incidents, each with its 6 tokens, one action
// of each kind, one NewIncident per key and a duplicate for every resend.
func TestRecordFiringConcurrent(t *testing.T) {
	s, _ := openTest(t)
	const (
		goroutines = 100
		tokens     = 30
		keys       = 5
	)
	var (
		start   = make(chan struct{})
		wg      sync.WaitGroup
		results = make([]RecordResult, goroutines)
		errs    = make([]error, goroutines)
	)
	for i := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := i % tokens
			key := tok % keys
			f := firing(fmt.Sprintf("tok%d", tok), fmt.Sprintf("rule%d", key%2),
				fmt.Sprintf("AC%d", key), "monthly:2026-11", t0.Add(time.Duration(i)*time.Second))
			f.Actions = []ActionKind{ActionTrip, NotifyKind("ops"), ActionEndCalls}
			<-start
			results[i], errs[i] = s.RecordFiring(context.Background(), f)
		}()
	}
	close(start)
	wg.Wait()

	incidentOfKey := map[int]int64{}
	var newIncidents, duplicates int
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
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
	}
	if newIncidents != keys {
		t.Errorf("%d NewIncident results, want %d", newIncidents, keys)
	}
	if duplicates != goroutines-tokens {
		t.Errorf("%d DuplicateToken results, want %d", duplicates, goroutines-tokens)
	}
	for table, want := range map[string]int{"incidents": keys, "firings": tokens, "actions": 3 * keys} {
		if n := countRows(t, s, table); n != want {
			t.Errorf("%d %s, want %d", n, table, want)
		}
	}
	for key, id := range incidentOfKey {
		inc := incident(t, s, id)
		if inc.Firings != tokens/keys {
			t.Errorf("key %d: firings %d, want %d", key, inc.Firings, tokens/keys)
		}
		if n := len(actionsOf(t, s, id)); n != 3 {
			t.Errorf("key %d: %d actions, want 3", key, n)
		}
	}
	if n, err := s.CountPendingActions(context.Background()); err != nil || n != 3*keys {
		t.Errorf("CountPendingActions = %d, %v; want %d", n, err, 3*keys)
	}
}

// Readers and all the writers at once (for -race, and to show writes never
// fail with SQLITE_BUSY): firings, claims by 8 owners, completions. Claims
// are exclusive, so every completion of a claimed action succeeds.
func TestConcurrentMixedLoad(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		claimed = map[int64]string{}
	)
	errc := make(chan error, 1000)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprint("worker-", g)
			for i := range 10 {
				f := firing(fmt.Sprintf("g%d-%d", g, i), "r", fmt.Sprintf("AC%d", i%3), fmt.Sprintf("p%d", g%2), t0)
				res, err := s.RecordFiring(ctx, f)
				if err != nil {
					errc <- err
					continue
				}
				acts, err := s.ClaimActions(ctx, Claim{Owner: owner, LeaseUntil: t0.Add(time.Hour)}, t0, 5)
				if err != nil {
					errc <- err
				}
				for _, a := range acts {
					mu.Lock()
					if prev, ok := claimed[a.ID]; ok { // retries are due after every claim's now
						errc <- fmt.Errorf("action %d claimed by %s and %s", a.ID, prev, owner)
					}
					claimed[a.ID] = owner
					mu.Unlock()
					c := Completion{State: ActionDone, Outcome: OutcomeSuspended, Attempted: true}
					if a.ID%2 == 1 {
						c = Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Hour), Detail: "try later", Attempted: true}
					}
					if _, err := s.CompleteAction(ctx, a.ID, owner, c); err != nil {
						errc <- err
					}
				}
				if _, err := s.ListIncidents(ctx, IncidentFilter{AccountSID: res.Incident.AccountSID}); err != nil {
					errc <- err
				}
				if _, err := s.CountPendingActions(ctx); err != nil {
					errc <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if n := countRows(t, s, "incidents"); n != 6 {
		t.Errorf("%d incidents, want 6", n)
	}
	if n := countRows(t, s, "actions WHERE state = 'running'"); n != 0 {
		t.Errorf("%d actions left running", n)
	}
}

func TestIncidentNotFound(t *testing.T) {
	s, _ := openTest(t)
	if _, err := s.Incident(context.Background(), 42); !errors.Is(err, ErrNotFound) {
		t.Errorf("Incident(42): %v, want ErrNotFound", err)
	}
}

func TestListIncidents(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	// i: rule r(i%2), account AC(i%3), period p(i), created t0+i min; 4 and 5 created at the same time.
	var ids []int64
	for i := range 8 {
		at := t0.Add(time.Duration(i) * time.Minute)
		if i == 5 {
			at = t0.Add(4 * time.Minute)
		}
		res := record(t, s, firing(fmt.Sprint("tok", i), fmt.Sprint("r", i%2), fmt.Sprint("AC", i%3), fmt.Sprint("p", i), at))
		ids = append(ids, res.Incident.ID)
	}
	list := func(f IncidentFilter) []int64 {
		t.Helper()
		incs, err := s.ListIncidents(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		out := []int64{}
		for _, inc := range incs {
			out = append(out, inc.ID)
		}
		return out
	}
	pick := func(is ...int) []int64 {
		out := []int64{}
		for _, i := range is {
			out = append(out, ids[i])
		}
		return out
	}
	for _, tc := range []struct {
		f    IncidentFilter
		want []int64
	}{
		{IncidentFilter{}, pick(7, 6, 5, 4, 3, 2, 1, 0)}, // 5 before 4: same time, higher ID
		{IncidentFilter{Limit: 3}, pick(7, 6, 5)},
		{IncidentFilter{Rule: "r0"}, pick(6, 4, 2, 0)},
		{IncidentFilter{AccountSID: "AC1"}, pick(7, 4, 1)},
		{IncidentFilter{Rule: "r1", AccountSID: "AC1"}, pick(7, 1)},
		{IncidentFilter{Rule: "r1", AccountSID: "AC1", Limit: 1}, pick(7)},
		{IncidentFilter{Rule: "nope"}, pick()},
	} {
		if got := list(tc.f); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%+v: got %v, want %v", tc.f, got, tc.want)
		}
	}
	incs, err := s.ListIncidents(ctx, IncidentFilter{Limit: 1})
	if err != nil || len(incs) != 1 || incs[0] != incident(t, s, ids[7]) {
		t.Errorf("ListIncidents row differs from Incident: %+v, %v", incs, err)
	}
}

func TestListIncidentsLimits(t *testing.T) {
	s, _ := openTest(t)
	// 1100 incidents in one transaction (RecordFiring would fsync 1100 times).
	_, err := s.w.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1100)
		INSERT INTO incidents (rule, account_sid, period, source, idempotency_token, state, created_at, updated_at)
		SELECT 'r', 'AC' || i, 'p', 'poll', 't' || i, 'pending', i, i FROM n`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ limit, want int }{{0, 100}, {-5, 100}, {1, 1}, {1000, 1000}, {1001, 1000}, {1 << 40, 1000}} {
		incs, err := s.ListIncidents(context.Background(), IncidentFilter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(incs) != tc.want {
			t.Errorf("Limit %d: %d incidents, want %d", tc.limit, len(incs), tc.want)
		}
		if incs[0].AccountSID != "AC1100" {
			t.Errorf("Limit %d: first is %s, want the newest", tc.limit, incs[0].AccountSID)
		}
	}
}
func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ub.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	res := record(t, s, firing("tok1", "r", "AC", "p", t0))
	record(t, s, firing("tok2", "r", "AC", "p", t0.Add(time.Second)))
	trip := actionOf(t, s, res.Incident.ID, ActionTrip)
	complete(t, s, trip.ID, Completion{State: ActionAvailable, NextAttemptAt: t0.Add(time.Minute), Detail: "503",
		Attempted: true, WriteSentAt: t0.Add(time.Second), HoldAccountUntil: t0.Add(2 * time.Minute)})
	complete(t, s, actionOf(t, s, res.Incident.ID, NotifyKind("ops")).ID, Completion{State: ActionDone, Outcome: OutcomeNotified})
	wantInc := incident(t, s, res.Incident.ID)
	wantActs := actionsOf(t, s, res.Incident.ID)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := incident(t, s, res.Incident.ID); got != wantInc {
		t.Errorf("incident after reopen\n got %+v\nwant %+v", got, wantInc)
	}
	if got := actionsOf(t, s, res.Incident.ID); !reflect.DeepEqual(got, wantActs) {
		t.Errorf("actions after reopen\n got %+v\nwant %+v", got, wantActs)
	}
	acts, err := s.ClaimActions(ctx, Claim{Owner: "after", LeaseUntil: t0.Add(2 * time.Hour)}, t0.Add(time.Hour), 0)
	if err != nil || len(acts) != 1 || acts[0].ID != wantActs[0].ID || acts[0].Attempts != 1 ||
		acts[0].WriteSentAt != t0.Add(time.Second) || acts[0].Detail != "503" {
		t.Errorf("claimed after reopen: %+v, %v", acts, err)
	}
	// The token is still known.
	if res := record(t, s, firing("tok1", "r", "AC", "p", t0)); !res.DuplicateToken {
		t.Errorf("token forgotten: %+v", res)
	}
}

func schemaOf(t *testing.T, db *sql.DB) (version int, objects []string) {
	t.Helper()
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_schema ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		objects = append(objects, s)
	}
	return version, objects
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	// An empty file (as a provisioning tool might create) is an empty database.
	path := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	version, objects := schemaOf(t, s.r)
	if version != len(migrations) {
		t.Errorf("user_version %d, want %d", version, len(migrations))
	}
	for _, want := range []string{"table firings", "table incidents", "table actions", "index actions_due"} {
		if !strings.Contains(strings.Join(objects, "\n"), want+":") {
			t.Errorf("no %s in schema:\n%s", want, strings.Join(objects, "\n"))
		}
	}
	var appID int
	if err := s.r.QueryRow("PRAGMA application_id").Scan(&appID); err != nil || appID != applicationID {
		t.Errorf("application_id %#x, %v", appID, err)
	}
	var dataVersion int
	if err := s.r.QueryRow("PRAGMA data_version").Scan(&dataVersion); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Reopening an up-to-date database changes nothing.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	v2, o2 := schemaOf(t, s.r)
	if v2 != version || !reflect.DeepEqual(o2, objects) {
		t.Errorf("schema changed on reopen: %d %v", v2, o2)
	}
	s.Close()
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Error("reopening an up-to-date database modified the file")
	}
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ub.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(ctx, path)
	if err == nil || !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), path) {
		t.Errorf("Open of a newer schema: %v", err)
	}
}

func TestOpenRefusesForeignDatabase(t *testing.T) {
	ctx := context.Background()
	for name, setup := range map[string]string{
		"tables, no version": "CREATE TABLE people (name TEXT)",
		"other application":  "PRAGMA application_id = 1234",
	} {
		path := filepath.Join(t.TempDir(), "other.db")
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(setup); err != nil {
			t.Fatal(err)
		}
		db.Close()
		_, err = Open(ctx, path)
		if err == nil || !strings.Contains(err.Error(), "not a usagebreaker database") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestOpenDirectoryCannotBeCreated(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "sub", "ub.db")
	_, err := Open(context.Background(), path)
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "create directory") ||
		!errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("unclear error: %v", err)
	}
}

func TestOpenCreatesDirectory0700(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "ub.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestOpenNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	content := []byte(strings.Repeat("rules:\n  - name: not a database\n", 200))
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "not a SQLite database") || !strings.Contains(err.Error(), path) {
		t.Errorf("unclear error: %v", err)
	}
	if got, _ := os.ReadFile(path); !reflect.DeepEqual(got, content) {
		t.Error("Open modified a file that is not a database")
	}
}

func TestOpenDirectoryAsPath(t *testing.T) {
	path := t.TempDir()
	if _, err := Open(context.Background(), path); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("unclear error: %v", err)
	}
	if _, err := Open(context.Background(), ""); err == nil {
		t.Error("empty path: no error")
	}
}

func TestOpenOddPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "we?ird #name %41.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	record(t, s, firing("tok", "r", "AC", "p", t0))
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the given path: %v", err)
	}
	// Relative paths work too.
	t.Chdir(dir)
	s, err = Open(context.Background(), "we?ird #name %41.db")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := countRows(t, s, "incidents"); n != 1 {
		t.Errorf("%d incidents, want 1", n)
	}
}

// The DSN pragmas hold on every connection of both pools, not just the first.
func TestPragmasOnEveryConnection(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	check := func(name string, c *sql.Conn, queryOnly int) {
		t.Helper()
		for pragma, want := range map[string]string{
			"journal_mode": "wal",
			"synchronous":  "2", // FULL
			"busy_timeout": fmt.Sprint(busyTimeoutMS),
			"foreign_keys": "1",
			"query_only":   fmt.Sprint(queryOnly),
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: %s = %s, want %s", name, pragma, got, want)
			}
		}
	}
	var conns []*sql.Conn
	for i := range s.r.Stats().MaxOpenConnections {
		c, err := s.r.Conn(ctx) // held, so each is a distinct connection
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		check(fmt.Sprint("reader ", i), c, 1)
	}
	for _, c := range conns {
		c.Close()
	}
	c, err := s.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check("writer", c, 0)
	var tempStore int
	if err := c.QueryRowContext(ctx, "PRAGMA temp_store").Scan(&tempStore); err != nil || tempStore != 2 {
		t.Errorf("writer: temp_store = %d, %v; want 2 (MEMORY)", tempStore, err)
	}
	c.Close()
	if got := s.w.Stats().MaxOpenConnections; got != 1 {
		t.Errorf("writer pool allows %d connections", got)
	}
}
func TestContextCancelled(t *testing.T) {
	s, path := openTest(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	if _, err := s.RecordFiring(cancelled, firing("tok", "r", "AC", "p", t0)); !errors.Is(err, context.Canceled) {
		t.Errorf("RecordFiring: %v, want context.Canceled", err)
	}
	if n := countRows(t, s, "firings"); n != 0 {
		t.Errorf("%d firings recorded under a cancelled context", n)
	}
	res := record(t, s, firing("tok", "r", "AC", "p", t0))
	trip := take(t, s, actionOf(t, s, res.Incident.ID, ActionTrip).ID, testOwner)
	claim := Claim{Owner: "other", LeaseUntil: t0.Add(time.Hour)}
	for name, err := range map[string]error{
		"ClaimActions":  func() error { _, err := s.ClaimActions(cancelled, claim, t0.Add(time.Hour), 0); return err }(),
		"MarkWriteSent": s.MarkWriteSent(cancelled, trip.ID, testOwner, 0, t0, t0.Add(time.Hour)),
		"CompleteAction": func() error {
			_, err := s.CompleteAction(cancelled, trip.ID, testOwner, Completion{State: ActionDone})
			return err
		}(),
		"RescueActions":       func() error { _, err := s.RescueActions(cancelled, t0.Add(time.Hour), time.Minute, true); return err }(),
		"ResumeAvailable":     func() error { _, err := s.ResumeAvailable(cancelled, t0); return err }(),
		"ReleaseHeld":         func() error { _, err := s.ReleaseHeld(cancelled, t0, ""); return err }(),
		"CountPendingActions": func() error { _, err := s.CountPendingActions(cancelled); return err }(),
		"Incident":            func() error { _, err := s.Incident(cancelled, res.Incident.ID); return err }(),
		"ListIncidents":       func() error { _, err := s.ListIncidents(cancelled, IncidentFilter{}); return err }(),
		"Open":                func() error { _, err := Open(cancelled, path+"2"); return err }(),
	} {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", name, err)
		}
	}
	if got := actionOf(t, s, res.Incident.ID, ActionTrip); got != trip {
		t.Errorf("action changed under a cancelled context:\n got %+v\nwant %+v", got, trip)
	}
	if got := actionOf(t, s, res.Incident.ID, NotifyKind("ops")); got.State != ActionAvailable {
		t.Errorf("notification changed under a cancelled context: %+v", got)
	}

	// A writer queued behind a long transaction gives up when its context
	// ends, whether the writer goroutine had taken its op yet or not; the op
	// did not happen.
	hold, err := s.w.BeginTx(context.Background(), nil) // takes the one write connection
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := s.RecordFiring(ctx, firing("tok2", "r", "AC", "p", t0)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued RecordFiring: %v, want context.DeadlineExceeded", err)
	}
	if _, err := s.CompleteAction(ctx, trip.ID, testOwner, Completion{State: ActionDone}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued CompleteAction: %v, want context.DeadlineExceeded", err)
	}
	if err := hold.Rollback(); err != nil {
		t.Fatal(err)
	}
	if res := record(t, s, firing("tok2", "r", "AC", "p", t0)); res.DuplicateToken {
		t.Error("the timed-out firing was recorded")
	}
	if got := actionOf(t, s, res.Incident.ID, ActionTrip); got != trip {
		t.Errorf("the timed-out completion happened: %+v", got)
	}
}
func TestClosed(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	claim := Claim{Owner: "w", LeaseUntil: t0}
	for name, err := range map[string]error{
		"RecordFiring":        func() error { _, err := s.RecordFiring(ctx, firing("t", "r", "AC", "p", t0)); return err }(),
		"ClaimActions":        func() error { _, err := s.ClaimActions(ctx, claim, t0, 0); return err }(),
		"MarkWriteSent":       s.MarkWriteSent(ctx, 1, "w", 0, t0, t0),
		"CompleteAction":      func() error { _, err := s.CompleteAction(ctx, 1, "w", Completion{State: ActionDone}); return err }(),
		"RescueActions":       func() error { _, err := s.RescueActions(ctx, t0, time.Minute, true); return err }(),
		"ResumeAvailable":     func() error { _, err := s.ResumeAvailable(ctx, t0); return err }(),
		"ReleaseHeld":         func() error { _, err := s.ReleaseHeld(ctx, t0, ""); return err }(),
		"CountHeld":           func() error { _, err := s.CountHeld(ctx); return err }(),
		"CountPendingActions": func() error { _, err := s.CountPendingActions(ctx); return err }(),
		"IncidentActions":     func() error { _, err := s.IncidentActions(ctx, []int64{1}); return err }(),
		"Incident":            func() error { _, err := s.Incident(ctx, 1); return err }(),
		"ListIncidents":       func() error { _, err := s.ListIncidents(ctx, IncidentFilter{}); return err }(),
		"Actions":             func() error { _, err := s.Actions(ctx, 1); return err }(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

func TestListLimit(t *testing.T) {
	for in, want := range map[int]int{-1: 100, 0: 100, 1: 1, 100: 100, 1000: 1000, 1001: 1000} {
		if got := listLimit(in); got != want {
			t.Errorf("listLimit(%d) = %d, want %d", in, got, want)
		}
	}
}

// A process killed (SIGKILL: no Close, no checkpoint) after RecordFiring,
// ClaimActions and CompleteAction returned loses none of it: the retried
// action is still due later, and the action it held running is still its
// claim, which RescueActions hands back.
func TestCrashKeepsWhatWasAcknowledged(t *testing.T) {
	const firings = 20
	if path := os.Getenv("STORE_TEST_CRASH_DB"); path != "" {
		crashChild(path, firings)
		return
	}
	path := filepath.Join(t.TempDir(), "ub.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsWhatWasAcknowledged$")
	cmd.Env = append(os.Environ(), "STORE_TEST_CRASH_DB="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := false
	for sc := bufio.NewScanner(out); sc.Scan(); {
		if sc.Text() == "acknowledged" {
			acked = true
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !acked {
		t.Fatalf("child did not get to record: %s", stderr.String())
	}

	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if n := countRows(t, s, "incidents"); n != firings {
		t.Errorf("%d incidents after the crash, want %d", n, firings)
	}
	if n, err := s.CountPendingActions(ctx); err != nil || n != 2*firings {
		t.Errorf("%d pending actions after the crash (%v), want %d", n, err, 2*firings)
	}
	incs, err := s.ListIncidents(ctx, IncidentFilter{})
	if err != nil || len(incs) != firings {
		t.Fatalf("incidents: %d, %v", len(incs), err)
	}
	first, second := incs[len(incs)-1].ID, incs[len(incs)-2].ID // newest first; same CreatedAt, so by ID
	if a := actionOf(t, s, first, ActionTrip); a.State != ActionAvailable || a.Attempts != 1 || a.Detail != "503" ||
		!a.NextAttemptAt.Equal(t0.Add(time.Hour)) || !a.WriteSentAt.Equal(t0) {
		t.Errorf("retried action after the crash: %+v", a)
	}
	running := actionOf(t, s, second, ActionTrip)
	if running.State != ActionRunning || running.Owner != "child" || !running.LeaseUntil.Equal(t0.Add(time.Minute)) {
		t.Errorf("claimed action after the crash: %+v", running)
	}
	rescued, err := s.RescueActions(ctx, t0, time.Minute, true)
	if err != nil || len(rescued) != 1 || rescued[0] != running {
		t.Errorf("RescueActions = %+v, %v; want the child's claim", rescued, err)
	}
}

func crashChild(path string, firings int) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := Open(ctx, path)
	if err != nil {
		fail(err)
	}
	for i := range firings {
		if _, err = s.RecordFiring(ctx, firing(fmt.Sprint("tok", i), "r", fmt.Sprint("AC", i), "p", t0)); err != nil {
			fail(err)
		}
	}
	claim := Claim{Owner: "child", LeaseUntil: t0.Add(time.Minute)}
	for i := range 2 {
		acts, err := s.ClaimActions(ctx, claim, t0, 1)
		if err != nil || len(acts) != 1 {
			fail(fmt.Errorf("claim: %+v, %v", acts, err))
		}
		if i == 0 { // the first trip is retried; the second stays claimed
			if _, err := s.CompleteAction(ctx, acts[0].ID, "child", Completion{State: ActionAvailable,
				NextAttemptAt: t0.Add(time.Hour), Detail: "503", Attempted: true, WriteSentAt: t0}); err != nil {
				fail(err)
			}
		}
	}
	fmt.Println("acknowledged")
	time.Sleep(time.Minute) // until killed
}

// A step appended later (as issues add tables) runs once on an existing
// database; a step that fails leaves the database at the old version.
func TestForwardMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ub.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	res := record(t, s, firing("tok", "r", "AC", "p", t0))
	s.Close()

	orig := migrations
	t.Cleanup(func() { migrations = orig })
	migrations = append(migrations[:len(orig):len(orig)], migration{
		name: "broken",
		stmts: []string{
			`CREATE TABLE notifications (id INTEGER PRIMARY KEY) STRICT`,
			`CREATE TABLE oops (`,
		},
	})
	if _, err := Open(ctx, path); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("migration %d (broken)", len(orig)+1)) {
		t.Fatalf("broken migration: %v", err)
	}
	migrations[len(orig)] = migration{
		name: "notifications",
		stmts: []string{
			`CREATE TABLE notifications (
				id          INTEGER PRIMARY KEY,
				incident_id INTEGER NOT NULL REFERENCES incidents (id)
			) STRICT`,
		},
	}
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	version, objects := schemaOf(t, s.r)
	if version != len(orig)+1 {
		t.Errorf("user_version %d, want %d", version, len(orig)+1)
	}
	joined := strings.Join(objects, "\n")
	if !strings.Contains(joined, "table notifications:") || strings.Contains(joined, "oops") {
		t.Errorf("schema:\n%s", joined)
	}
	if got := incident(t, s, res.Incident.ID); got != res.Incident {
		t.Errorf("incident changed by migration: %+v", got)
	}
	// Foreign keys are enforced in new tables too.
	if _, err := s.w.Exec(`INSERT INTO notifications (incident_id) VALUES (9999)`); err == nil {
		t.Error("foreign key not enforced")
	}
}
