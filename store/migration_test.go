package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// v2Action is an actions row of schema version 2 (before the action engine).
type v2Action struct {
	id, incident    int64
	kind, state     string
	attempts        int
	next, updated   time.Time
	outcome, detail string
	hold            int // 0 normal, 1 held, 2 released
	progress        string
}

// writeV2Database writes, at path, a state file as the previous version left
// it: the first two migrations, user_version 2, and the rows given.
func writeV2Database(t *testing.T, path string, incidents map[int64]string, actions []v2Action) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:2] {
		for _, stmt := range m.stmts {
			if _, err := tx.Exec(stmt); err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
		}
	}
	for id, account := range incidents {
		if _, err := tx.Exec(`INSERT INTO incidents (id, rule, account_sid, period, source, idempotency_token, state,
				created_at, updated_at) VALUES (?, 'r', ?, 'p', 'callback', ?, 'pending', ?, ?)`,
			id, account, fmt.Sprint("tok", id), t0.UnixNano(), t0.UnixNano()); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO firings (idempotency_token, incident_id, source, rule, account_sid, period, received_at)
			VALUES (?, ?, 'callback', 'r', ?, 'p', ?)`, fmt.Sprint("tok", id), id, account, t0.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range actions {
		if _, err := tx.Exec(`INSERT INTO actions (id, incident_id, kind, state, attempts, next_attempt_at, outcome, detail,
				created_at, updated_at, hold, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.id, a.incident, a.kind, a.state, a.attempts, a.next.UnixNano(), a.outcome, a.detail,
			t0.UnixNano(), a.updated.UnixNano(), a.hold, a.progress); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(`UPDATE incidents SET state = 'done', outcome = 'suspended' WHERE id = 6`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO rearms (account_sid, rule, period, generation, allowance, expires_at, created_at, updated_at)
		VALUES ('AC6', 'r', 'p', 2, '50', ?, ?, ?)`, t0.Add(24*time.Hour).UnixNano(), t0.UnixNano(), t0.UnixNano()); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"PRAGMA user_version = 2", fmt.Sprintf("PRAGMA application_id = %d", applicationID)} {
		if _, err := tx.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// A state file written by the previous version (schema 2) opens, and its
// pending actions resume: the marks that lived in detail texts become
// columns (a sent write, a claim of the former fast path), held and
// released actions keep their hold, and the first start's rescue and claims
// carry on where the old process stopped.
func TestMigrateVersion2ResumesPendingActions(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ub.db")
	const (
		sent   = "suspend write sent to Twilio; waiting for its answer"
		failed = "the suspend write failed and may have been applied: HTTP 500"
		fast   = "claimed by the receiving process, which reads the account and suspends it at once"
	)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	incidents := map[int64]string{1: "AC1", 2: "AC2", 3: "AC3", 4: "AC4", 5: "AC5", 6: "AC6", 7: "AC7"}
	writeV2Database(t, path, incidents, []v2Action{
		// 1: a suspend write was sent and its answer never came.
		{id: 1, incident: 1, kind: "trip", state: "pending", attempts: 1, next: at(2 * time.Minute), updated: at(time.Minute), detail: sent},
		{id: 2, incident: 1, kind: "notify:ops", state: "pending", next: t0, updated: t0},
		{id: 3, incident: 1, kind: "end_calls", state: "pending", next: t0, updated: t0},
		// 2: the write failed in a way that may have applied it.
		{id: 4, incident: 2, kind: "trip", state: "pending", attempts: 2, next: at(3 * time.Minute), updated: at(90 * time.Second), detail: failed},
		// 3: claimed by the former fast path (due when the claim ran out).
		{id: 5, incident: 3, kind: "trip", state: "pending", next: at(time.Minute), updated: t0, detail: fast},
		// 4: held by the guard, with its page.
		{id: 6, incident: 4, kind: "trip", state: "pending", next: t0, updated: at(10 * time.Second), detail: "held by the guard", hold: 1},
		{id: 7, incident: 4, kind: "guard:ops", state: "pending", next: at(10 * time.Second), updated: at(10 * time.Second)},
		// 5: released by a person.
		{id: 8, incident: 5, kind: "trip", state: "pending", next: at(20 * time.Second), updated: at(20 * time.Second), detail: "released", hold: 2},
		// 6: done, with a notification and a scheduled reactivation to come.
		{id: 9, incident: 6, kind: "trip", state: "done", attempts: 1, next: t0, updated: at(5 * time.Second), outcome: "suspended", detail: "ok"},
		{id: 10, incident: 6, kind: "notify:x", state: "pending", next: at(5 * time.Second), updated: at(5 * time.Second), progress: "+1555"},
		{id: 11, incident: 6, kind: "reactivate", state: "pending", next: at(24 * time.Hour), updated: at(5 * time.Second)},
		{id: 12, incident: 6, kind: "end_calls", state: "done", attempts: 1, next: t0, updated: at(6 * time.Second), outcome: "ended"},
		// 7: an ordinary backoff.
		{id: 13, incident: 7, kind: "trip", state: "pending", attempts: 1, next: at(5 * time.Minute), updated: at(time.Minute), detail: "twilio: 503"},
	})

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return at(time.Hour) })
	if version, objects := schemaOf(t, s.r); version != len(migrations) || !strings.Contains(strings.Join(objects, "\n"), "index actions_due:") ||
		strings.Contains(strings.Join(objects, "\n"), "actions_pending") || strings.Contains(strings.Join(objects, "\n"), "actions_v3") {
		t.Errorf("schema after the migration: version %d\n%s", version, strings.Join(objects, "\n"))
	}
	a := func(id, incident int64, kind ActionKind, account string, state ActionState, attempts int, next time.Time, owner string,
		lease, sentAt time.Time, released bool, outcome Outcome, detail, progress string, updated time.Time) Action {
		return Action{ID: id, IncidentID: incident, Kind: kind, AccountSID: account, State: state, Attempts: attempts,
			NextAttemptAt: next, Owner: owner, LeaseUntil: lease, WriteSentAt: sentAt, Released: released,
			Outcome: outcome, Detail: detail, Progress: progress, CreatedAt: t0, UpdatedAt: updated}
	}
	zero := time.Time{}
	want := []Action{
		a(1, 1, ActionTrip, "AC1", ActionAvailable, 1, at(2*time.Minute), "", at(2*time.Minute), at(time.Minute), false, "", sent, "", at(time.Minute)),
		a(2, 1, NotifyKind("ops"), "", ActionAvailable, 0, t0, "", zero, zero, false, "", "", "", t0),
		a(3, 1, ActionEndCalls, "AC1", ActionAvailable, 0, t0, "", zero, zero, false, "", "", "", t0),
		a(4, 2, ActionTrip, "AC2", ActionAvailable, 2, at(3*time.Minute), "", at(3*time.Minute), at(90*time.Second), false, "", failed, "", at(90*time.Second)),
		a(5, 3, ActionTrip, "AC3", ActionRunning, 0, at(time.Minute), "before-upgrade", at(time.Minute), zero, false, "", fast, "", t0),
		a(6, 4, ActionTrip, "AC4", ActionHeld, 0, at(10*time.Second), "", zero, zero, false, "", "held by the guard", "", at(10*time.Second)),
		a(7, 4, GuardPageKind("ops"), "", ActionAvailable, 0, at(10*time.Second), "", zero, zero, false, "", "", "", at(10*time.Second)),
		a(8, 5, ActionTrip, "AC5", ActionAvailable, 0, at(20*time.Second), "", zero, zero, true, "", "released", "", at(20*time.Second)),
		a(9, 6, ActionTrip, "AC6", ActionDone, 1, t0, "", zero, zero, false, OutcomeSuspended, "ok", "", at(5*time.Second)),
		a(10, 6, NotifyKind("x"), "", ActionAvailable, 0, at(5*time.Second), "", zero, zero, false, "", "", "+1555", at(5*time.Second)),
		a(11, 6, ActionReactivate, "AC6", ActionAvailable, 0, at(24*time.Hour), "", zero, zero, false, "", "", "", at(5*time.Second)),
		a(12, 6, ActionEndCalls, "AC6", ActionDone, 1, t0, "", zero, zero, false, OutcomeEnded, "", "", at(6*time.Second)),
		a(13, 7, ActionTrip, "AC7", ActionAvailable, 1, at(5*time.Minute), "", zero, zero, false, "", "twilio: 503", "", at(time.Minute)),
	}
	ids := []int64{1, 2, 3, 4, 5, 6, 7}
	all, err := s.IncidentActions(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	var got []Action
	for _, id := range ids {
		got = append(got, all[id]...)
	}
	if len(got) != len(want) {
		t.Fatalf("%d actions after the migration, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("action %d after the migration\n got %+v\nwant %+v", want[i].ID, got[i], want[i])
		}
	}
	if n, _ := s.CountHeld(ctx); n != 1 {
		t.Errorf("CountHeld = %d, want 1", n)
	}
	// 1's three, 2, 3 (running), 4's page, 5, 6's notification, 7; not the held trip nor the reactivation.
	if n := pending(t, s); n != 9 {
		t.Errorf("CountPendingActions = %d, want 9", n)
	}
	if r, err := s.RearmFor(ctx, "AC6", "r", "p"); err != nil || r.Generation != 2 {
		t.Errorf("re-arm after the migration: %+v, %v", r, err)
	}

	// The account whose write was sent stays leased until its next attempt:
	// a new firing's trip is not claimed at once.
	f := firing("new", "r", "AC1", "p2", at(time.Minute))
	f.ClaimBy = &Claim{Owner: "recv", LeaseUntil: at(2 * time.Minute)}
	fresh := record(t, s, f)
	if fresh.Trip.State != ActionAvailable {
		t.Errorf("trip of an account with a sent write: %+v", fresh.Trip)
	}

	// The first start hands back the former fast path's claim; the account
	// stays leased for the write lease.
	now := at(30 * time.Second)
	rescued, err := s.RescueActions(ctx, now, time.Minute, true)
	if err != nil || len(rescued) != 1 || rescued[0] != want[4] {
		t.Fatalf("RescueActions = %+v, %v; want the claim of before-upgrade", rescued, err)
	}
	tr := actionByID(t, s, 5)
	if tr.State != ActionAvailable || tr.Owner != "" || !tr.NextAttemptAt.Equal(now.Add(time.Minute)) || !tr.LeaseUntil.Equal(now.Add(time.Minute)) || !tr.Rescued {
		t.Errorf("rescued claim %+v", tr)
	}
	if inc := incident(t, s, 3); inc.Detail != tr.Detail || !strings.Contains(inc.Detail, "before-upgrade") {
		t.Errorf("incident of the rescued claim: %+v", inc)
	}
	lease := at(time.Hour)
	steps := []struct {
		now  time.Time
		want []ka
	}{
		// The released trip, then the notification of the finished trip
		// and the guard's page. Not the held trip, nor those waiting for a
		// trip, a write or the rescue's lease.
		{now, []ka{{5, ActionTrip}, {6, NotifyKind("x")}, {4, GuardPageKind("ops")}}},
		{at(time.Minute), []ka{}},
		// The rescued claim, at the end of its lease; AC1 is still leased.
		{at(90 * time.Second), []ka{{3, ActionTrip}}},
		// AC1 is free: one of its trips (the older due time first).
		{at(2 * time.Minute), []ka{{fresh.Incident.ID, ActionTrip}}},
	}
	for _, step := range steps {
		if got := kas(claim(t, s, "new", lease, step.now, 0)); !reflect.DeepEqual(got, step.want) {
			t.Errorf("claimed at %v\n got %v\nwant %v", step.now.Sub(t0), got, step.want)
		}
	}
	if _, err := s.CompleteAction(ctx, fresh.Trip.ID, "new", Completion{State: ActionDone, Outcome: OutcomeSkipped}); err != nil {
		t.Fatal(err)
	}
	if got := kas(claim(t, s, "new", lease, at(2*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{1, ActionTrip}, {fresh.Incident.ID, NotifyKind("ops")}}) {
		t.Errorf("claimed after the other trip of AC1: %v", got)
	}
	// The sent write is remembered: the attempt that finds the account
	// suspended can tell it may be its own.
	if a := actionByID(t, s, 1); a.State != ActionRunning || !a.WriteSentAt.Equal(at(time.Minute)) || a.Attempts != 1 {
		t.Errorf("claimed trip with a sent write: %+v", a)
	}
	if _, err := s.CompleteAction(ctx, 1, "new", Completion{State: ActionDone, Outcome: OutcomeSuspended, Attempted: true}); err != nil {
		t.Fatal(err)
	}
	if a := actionByID(t, s, 1); !a.WriteSentAt.Equal(at(time.Minute)) || a.Attempts != 2 || a.State != ActionDone {
		t.Errorf("finished trip with a sent write: %+v", a)
	}
	// Its notification and end_calls follow, with the other backed-off trip.
	if got := kas(claim(t, s, "new", lease, at(3*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{2, ActionTrip}, {1, NotifyKind("ops")}, {1, ActionEndCalls}}) {
		t.Errorf("claimed at 3m: %v", got)
	}
	// The held trip waits for a person.
	if n, err := s.ReleaseHeld(ctx, at(4*time.Minute), "released"); err != nil || n != 1 {
		t.Fatalf("ReleaseHeld = %d, %v", n, err)
	}
	if got := kas(claim(t, s, "new", lease, at(4*time.Minute), 0)); !reflect.DeepEqual(got, []ka{{4, ActionTrip}}) {
		t.Errorf("claimed after the release: %v", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening the migrated database changes nothing.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	version, _ := schemaOf(t, s.r)
	if version != len(migrations) {
		t.Errorf("user_version %d after reopen", version)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Error("reopening the migrated database modified the file")
	}
}

// A version-1 file (before the guard) goes through both later migrations.
func TestMigrateVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ub.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	stmts := append([]string{}, migrations[0].stmts...)
	stmts = append(stmts,
		fmt.Sprintf(`INSERT INTO incidents (id, rule, account_sid, period, source, idempotency_token, state, created_at, updated_at)
			VALUES (1, 'r', 'AC1', 'p', 'poll', 'tok', 'pending', %d, %d)`, t0.UnixNano(), t0.UnixNano()),
		fmt.Sprintf(`INSERT INTO actions (id, incident_id, kind, state, attempts, next_attempt_at, detail, created_at, updated_at)
			VALUES (1, 1, 'trip', 'pending', 1, %d, 'twilio: 503', %d, %d)`, t0.Add(time.Minute).UnixNano(), t0.UnixNano(), t0.UnixNano()),
		"PRAGMA user_version = 1")
	for _, stmt := range stmts {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := actionByID(t, s, 1)
	if a.State != ActionAvailable || a.AccountSID != "AC1" || a.Attempts != 1 || !a.NextAttemptAt.Equal(t0.Add(time.Minute)) ||
		a.Owner != "" || !a.LeaseUntil.IsZero() || !a.WriteSentAt.IsZero() || a.Released {
		t.Errorf("action after the migration: %+v", a)
	}
	if got := claim(t, s, "w", t0.Add(time.Hour), t0.Add(time.Minute), 0); len(got) != 1 || got[0].ID != 1 {
		t.Errorf("claimed: %+v", got)
	}
}
