package storetest

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

// openWithSQL opens the store on dsn, and a plain pool on the same schema
// for what the test does behind the store's back; both close with the test.
func openWithSQL(t *testing.T, dsn string) (*store.DB, *sql.DB) {
	t.Helper()
	s, err := store.OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return s, db
}

// Replicas that start together migrate the schema once.
func TestPostgresMigrateTogether(t *testing.T) {
	dsn := Schema(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := store.OpenPostgres(context.Background(), dsn)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Two OS processes claim the same actions at once: each action has exactly
// one winner, and no two actions of one account run at the same time.
func TestPostgresTwoProcessesClaim(t *testing.T) {
	if os.Getenv("UB_CLAIMER_DSN") != "" {
		t.Skip("helper process")
	}
	dsn := Schema(t)
	ctx := context.Background()
	s, db := openWithSQL(t, dsn)
	// running: a row per account while a claimer runs an action of it. Its
	// primary key makes a second concurrent claim of the account visible.
	if _, err := db.ExecContext(ctx, `CREATE TABLE running (account_sid TEXT PRIMARY KEY, action_id BIGINT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	const rounds, perRound = 5, 40
	for round := range rounds {
		for i := range perRound {
			f := Firing(fmt.Sprintf("r%d-%d", round, i), fmt.Sprintf("rule-%d", i/10), fmt.Sprintf("AC%02d", i%10))
			f.Period = fmt.Sprintf("daily:round-%d", round)
			f.ReceivedAt = time.Now()
			if _, err := s.RecordFiring(ctx, f); err != nil {
				t.Fatal(err)
			}
		}
		claimed := map[int64]string{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for p := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(os.Args[0], "-test.run=^TestPostgresClaimerProcess$", "-test.count=1")
				cmd.Env = append(os.Environ(), "UB_CLAIMER_DSN="+dsn, "UB_CLAIMER_OWNER="+fmt.Sprintf("proc-%d", p))
				out, err := cmd.StdoutPipe()
				if err != nil {
					errs <- err
					return
				}
				var stderr strings.Builder
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					errs <- err
					return
				}
				sc := bufio.NewScanner(out)
				var lines []string
				for sc.Scan() {
					lines = append(lines, sc.Text())
				}
				if err := cmd.Wait(); err != nil {
					errs <- fmt.Errorf("claimer %d: %v\n%s\n%s", p, err, strings.Join(lines, "\n"), stderr.String())
					return
				}
				for _, l := range lines {
					if id, ok := strings.CutPrefix(l, "CLAIMED "); ok {
						n, _ := strconv.ParseInt(id, 10, 64)
						mu.Lock()
						if prev, dup := claimed[n]; dup {
							errs <- fmt.Errorf("action %d claimed by %s and proc-%d", n, prev, p)
						}
						claimed[n] = fmt.Sprintf("proc-%d", p)
						mu.Unlock()
					}
					if strings.HasPrefix(l, "OVERLAP") {
						errs <- fmt.Errorf("proc-%d: %s", p, l)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if len(claimed) != 3*perRound {
			t.Fatalf("round %d: %d actions claimed, want %d", round, len(claimed), 3*perRound)
		}
		byProc := map[string]int{}
		for _, p := range claimed {
			byProc[p]++
		}
		t.Logf("round %d: %d actions, each claimed once: %v", round, len(claimed), byProc)
	}
}

// TestPostgresClaimerProcess is the claimer of TestPostgresTwoProcessesClaim,
// in a process of its own: it claims and completes until nothing is left.
func TestPostgresClaimerProcess(t *testing.T) {
	dsn, owner := os.Getenv("UB_CLAIMER_DSN"), os.Getenv("UB_CLAIMER_OWNER")
	if dsn == "" {
		t.Skip("run by TestPostgresTwoProcessesClaim")
	}
	ctx := context.Background()
	s, db := openWithSQL(t, dsn)
	for idle := 0; idle < 20; {
		now := time.Now()
		got, err := s.ClaimActions(ctx, store.Claim{Owner: owner, LeaseUntil: now.Add(time.Minute)}, now, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			idle++
			time.Sleep(5 * time.Millisecond) // polling a queue another process drains
			continue
		}
		idle = 0
		for _, a := range got {
			fmt.Printf("CLAIMED %d\n", a.ID)
			if a.AccountSID != "" {
				if _, err := db.ExecContext(ctx, `INSERT INTO running VALUES ($1, $2)`, a.AccountSID, a.ID); err != nil {
					fmt.Printf("OVERLAP account %s action %d: %v\n", a.AccountSID, a.ID, err)
				}
			}
		}
		for _, a := range got {
			if a.AccountSID != "" {
				if _, err := db.ExecContext(ctx, `DELETE FROM running WHERE account_sid = $1 AND action_id = $2`, a.AccountSID, a.ID); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.CompleteAction(ctx, a.ID, owner, store.Completion{State: store.ActionDone, Outcome: store.OutcomeSent}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The leader of a loop loses its connection (pg_terminate_backend) and is cut
// off: another replica takes the lease over once it expires, with the next
// epoch, and the old leader's writes are refused.
func TestPostgresLeaderLeaseTakeover(t *testing.T) {
	dsn := Schema(t)
	ctx := context.Background()
	openAs := func(app string) *store.DB {
		s, err := store.OpenPostgres(ctx, withParam(dsn, "application_name", app))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := openAs("replica-a"), openAs("replica-b")
	const ttl = 2 * time.Second
	fa, ok, err := a.Lead(ctx, "reconcile", "a", ttl)
	if err != nil || !ok {
		t.Fatalf("a leads: %v %v", ok, err)
	}
	if _, ok, err := b.Lead(ctx, "reconcile", "b", ttl); err != nil || ok {
		t.Fatalf("b leads while a's lease lasts: %v %v", ok, err)
	}
	if _, err := a.MarkRearmsRestored(store.WithFence(ctx, fa), time.Now()); err != nil {
		t.Fatalf("a's fenced write while it leads: %v", err)
	}

	// a's connections are killed; a is cut off and renews no more.
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var killed int
	if err := admin.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'replica-a'`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no connection of replica-a to terminate")
	}
	cut := time.Now()

	var fb store.Fence
	for {
		f, ok, err := b.Lead(ctx, "reconcile", "b", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			fb = f
			break
		}
		if time.Since(cut) > ttl+5*time.Second {
			t.Fatalf("b did not take over within the lease (%s)", ttl)
		}
		time.Sleep(50 * time.Millisecond) // b's renewal period, shortened
	}
	took := time.Since(cut)
	if fb.Epoch != fa.Epoch+1 {
		t.Fatalf("b's epoch %d, want %d", fb.Epoch, fa.Epoch+1)
	}
	// a comes back with its old epoch: refused, whatever connection it uses.
	if _, err := a.MarkRearmsRestored(store.WithFence(ctx, fa), time.Now()); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("a's stale write: %v, want ErrFenced", err)
	}
	if _, err := a.RecordFiring(store.WithFence(ctx, fa), Firing("stale", "spend", "AC1")); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("a's stale firing: %v, want ErrFenced", err)
	}
	if _, ok, err := a.Lead(ctx, "reconcile", "a", ttl); err != nil || ok {
		t.Fatalf("a leads again while b's lease lasts: %v %v", ok, err)
	}
	if _, err := b.MarkRearmsRestored(store.WithFence(ctx, fb), time.Now()); err != nil {
		t.Fatalf("b's fenced write: %v", err)
	}
	// b resigns: a takes over at once, with the next epoch.
	if err := b.Resign(ctx, fb); err != nil {
		t.Fatal(err)
	}
	fa2, ok, err := a.Lead(ctx, "reconcile", "a", ttl)
	if err != nil || !ok || fa2.Epoch != fb.Epoch+1 {
		t.Fatalf("a after b resigned: %+v %v %v", fa2, ok, err)
	}
	t.Logf("killed %d connection(s) of the leader; takeover after %s (lease %s)", killed, took.Round(time.Millisecond), ttl)
}

func withParam(dsn, k, v string) string {
	if strings.Contains(dsn, "://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + k + "=" + v
	}
	return dsn + " " + k + "=" + v
}

// usagebreaker migrate: a SQLite state moves into Postgres with its ids,
// and the replicas go on from it.
func TestPostgresCopyFromSQLite(t *testing.T) {
	ctx := context.Background()
	src := openSQLite(t)
	var incidents []int64
	for i := range 5 {
		f := Firing(fmt.Sprintf("tok-%d", i), "spend", fmt.Sprintf("AC%d", i%2))
		f.Period = fmt.Sprintf("daily:%d", i)
		r, err := src.RecordFiring(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		incidents = append(incidents, r.Incident.ID)
	}
	got, err := src.ClaimActions(ctx, store.Claim{Owner: "old", LeaseUntil: T0.Add(time.Minute)}, T0, 10)
	if err != nil || len(got) == 0 {
		t.Fatalf("claim: %v %v", got, err)
	}
	if _, err := src.CompleteAction(ctx, got[0].ID, "old", store.Completion{State: store.ActionDone, Outcome: store.OutcomeSuspended}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.BeginRearm(ctx, "AC1", "spend", "daily:1", "5", T0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.RecordReactivation(ctx, store.Reactivation{IncidentID: incidents[0], AccountSID: "AC0", Via: store.ViaManual, Actor: "me", Reason: "r", CreatedAt: T0}); err != nil {
		t.Fatal(err)
	}
	decision := store.Approval{IncidentID: incidents[1], Decision: store.DecisionVeto, Actor: "ops", Reason: "load test", CreatedAt: T0}
	if _, err := src.Decide(ctx, decision); err != nil {
		t.Fatal(err)
	}
	step := store.StepFiring{IdempotencyToken: "tok-step", Rule: "velocity", AccountSID: "AC3", UsageCategory: "sms",
		TriggerBy: "count", TriggerValue: "+100", CurrentValue: "230", FiredAt: T0, ReceivedAt: T0}
	if _, err := src.RecordStep(ctx, step); err != nil {
		t.Fatal(err)
	}
	if err := src.HoldAccount(ctx, "AC4", "admin", T0, T0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := src.MarkHoldWriteSent(ctx, "AC4", "admin", T0, T0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := src.HoldAccount(ctx, "AC5", "admin", T0, T0.Add(time.Minute)); err != nil { // no write
		t.Fatal(err)
	}
	dst := openPostgres(t)
	counts, err := src.CopyTo(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if counts["incidents"] != 5 || counts["firings"] != 5 || counts["actions"] != 16 || counts["rearms"] != 1 || counts["reactivations"] != 1 ||
		counts["approvals"] != 1 || counts["velocity_steps"] != 1 || counts["account_holds"] != 2 {
		t.Fatalf("copied %v", counts)
	}
	if got, err := dst.Approvals(ctx, []int64{incidents[1]}); err != nil || got[incidents[1]] != decision {
		t.Fatalf("approval copied as %+v (%v), want %+v", got, err, decision)
	}
	if got, err := dst.Step(ctx, "tok-step"); err != nil || got.CurrentValue != "230" || !got.FiredAt.Equal(T0) {
		t.Fatalf("velocity step copied as %+v (%v)", got, err)
	}
	if err := dst.HoldAccount(ctx, "AC4", "other", T0, T0.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
		t.Fatalf("a copied hold whose write may land does not hold: %v", err)
	}
	if err := dst.HoldAccount(ctx, "AC5", "other", T0, T0.Add(time.Minute)); err != nil {
		t.Fatalf("a copied hold without a write still holds: %v", err)
	}
	for _, id := range incidents {
		a, _ := src.Incident(ctx, id)
		b, err := dst.Incident(ctx, id)
		if err != nil || a != b {
			t.Fatalf("incident %d: %+v, copied %+v (%v)", id, a, b, err)
		}
		aa, _ := src.Actions(ctx, id)
		ba, _ := dst.Actions(ctx, id)
		if fmt.Sprint(aa) != fmt.Sprint(ba) {
			t.Fatalf("actions of %d differ:\n%+v\n%+v", id, aa, ba)
		}
	}
	if _, err := src.CopyTo(ctx, dst); err == nil {
		t.Fatal("a second copy into a non-empty state was not refused")
	}
	// New rows get new ids.
	f := Firing("tok-new", "spend", "AC9")
	r, err := dst.RecordFiring(ctx, f)
	if err != nil || r.Incident.ID <= incidents[len(incidents)-1] {
		t.Fatalf("a new incident after the copy: %+v %v", r.Incident, err)
	}
}

// The guard counts across replicas in the database: two stores (replicas)
// admitting at once never let more than max suspensions through, and a
// completed suspension counts once, from the record.
func TestPostgresGuardAdmission(t *testing.T) {
	ctx := context.Background()
	dsn := Schema(t)
	a, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.SetClock(func() time.Time { return T0 })
	b.SetClock(func() time.Time { return T0 })
	for i := range 10 {
		if _, err := a.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), "spend", fmt.Sprintf("AC%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	trips, err := a.ClaimActions(ctx, store.Claim{Owner: "w", LeaseUntil: T0.Add(time.Minute)}, T0, 10)
	if err != nil || len(trips) != 10 {
		t.Fatalf("claim: %d %v", len(trips), err)
	}
	const max = 3
	var wg sync.WaitGroup
	admitted := make([]bool, len(trips))
	for i, tr := range trips {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			ok, _, _, err := s.AdmitSuspension(ctx, tr.ID, "w", T0.Add(-time.Hour), T0, max)
			if err != nil {
				t.Error(err)
			}
			admitted[i] = ok
		}()
	}
	wg.Wait()
	var in []store.Action
	for i, ok := range admitted {
		if ok {
			in = append(in, trips[i])
		}
	}
	if len(in) != max {
		t.Fatalf("%d admitted at once, want %d", len(in), max)
	}
	// One suspension recorded, one given up: two places, one free.
	if _, err := a.CompleteAction(ctx, in[0].ID, "w", store.Completion{State: store.ActionDone, Outcome: store.OutcomeSuspended}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CompleteAction(ctx, in[1].ID, "w", store.Completion{State: store.ActionAvailable, NextAttemptAt: T0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var rest []store.Action
	for i, ok := range admitted {
		if !ok {
			rest = append(rest, trips[i])
		}
	}
	ok, n, _, err := b.AdmitSuspension(ctx, rest[0].ID, "w", T0.Add(-time.Hour), T0, max)
	if err != nil || !ok || n != 2 {
		t.Fatalf("after a suspension and a retry: admitted %v with %d counted (%v), want admitted with 2", ok, n, err)
	}
	ok, n, _, err = a.AdmitSuspension(ctx, rest[1].ID, "w", T0.Add(-time.Hour), T0, max)
	if err != nil || ok || n != 3 {
		t.Fatalf("at the limit: admitted %v with %d counted (%v), want refused at 3", ok, n, err)
	}
}

// Firings recorded at once by three replicas, each gathering its own into
// batches (group commit): every firing is recorded once, a token sent to
// two replicas opens one incident, and an account's trips are claimed by
// one recorder at a time. Then the claimed trips complete, in batches too.
func TestPostgresBatchedFirings(t *testing.T) {
	dsn := Schema(t)
	ctx := context.Background()
	var replicas []*store.DB
	for range 3 {
		s, err := store.OpenPostgres(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		replicas = append(replicas, s)
	}
	const accounts, rules = 20, 8
	type rec struct {
		res   store.RecordResult
		owner string
		err   error
	}
	var (
		mu   sync.Mutex
		recs []rec
		wg   sync.WaitGroup
	)
	for i := range accounts * rules {
		for copy := range 2 { // each token to two replicas
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := (i + copy) % len(replicas)
				owner := fmt.Sprintf("replica-%d", r)
				f := Firing(fmt.Sprintf("tok-%d", i), fmt.Sprintf("rule-%d", i%rules), fmt.Sprintf("AC%02d", i/rules))
				f.ClaimBy = &store.Claim{Owner: owner, LeaseUntil: time.Now().Add(time.Minute)} // completions check it against the clock
				res, err := replicas[r].RecordFiring(ctx, f)
				mu.Lock()
				recs = append(recs, rec{res, owner, err})
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	news, dups := 0, 0
	running := map[string][]store.Action{} // account -> trips claimed
	for _, r := range recs {
		if r.err != nil {
			t.Fatal(r.err)
		}
		switch {
		case r.res.NewIncident:
			news++
			if r.res.Trip.ID == 0 {
				t.Fatalf("new incident %d without its trip", r.res.Incident.ID)
			}
			if r.res.Trip.State == store.ActionRunning {
				if r.res.Trip.Owner != r.owner {
					t.Fatalf("trip %d claimed by %s, recorded by %s", r.res.Trip.ID, r.res.Trip.Owner, r.owner)
				}
				running[r.res.Incident.AccountSID] = append(running[r.res.Incident.AccountSID], r.res.Trip)
			}
		case r.res.DuplicateToken:
			dups++
		default:
			t.Fatalf("firing neither new nor a duplicate: %+v", r.res)
		}
	}
	if news != accounts*rules || dups != accounts*rules {
		t.Fatalf("new incidents %d, duplicates %d; want %d each", news, dups, accounts*rules)
	}
	if len(running) != accounts {
		t.Fatalf("%d accounts have a claimed trip, want %d", len(running), accounts)
	}
	for acct, trips := range running {
		if len(trips) != 1 {
			t.Fatalf("account %s: %d trips claimed at once, want 1", acct, len(trips))
		}
	}
	// The claimed trips complete at once (a batch of completions), each
	// once: a second completion by its owner finds it finished.
	for round := range 2 {
		for _, trips := range running {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := trips[0]
				r, _ := strconv.Atoi(strings.TrimPrefix(a.Owner, "replica-"))
				_, err := replicas[r].CompleteAction(ctx, a.ID, a.Owner, store.Completion{State: store.ActionDone, Outcome: store.OutcomeSuspended, Attempted: true})
				if round == 0 && err != nil || round == 1 && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("round %d: complete trip %d: %v", round, a.ID, err)
				}
			}()
		}
		wg.Wait()
	}
	for _, trips := range running {
		inc, err := replicas[0].Incident(ctx, trips[0].IncidentID)
		if err != nil || inc.State != store.StateDone || inc.Outcome != store.OutcomeSuspended {
			t.Fatalf("incident %d: %+v, %v", trips[0].IncidentID, inc, err)
		}
	}
}

// A firing takes its account's lock before it locks any row: two replicas'
// batches holding firings of several rules of one account then queue on
// the account's lock instead of locking each other's incidents (a deadlock
// Postgres breaks only after deadlock_timeout).
func TestPostgresFiringLocksTheAccountFirst(t *testing.T) {
	dsn := Schema(t)
	ctx := context.Background()
	s, db := openWithSQL(t, dsn)
	const account = "AC-lock-order"
	first, err := s.RecordFiring(ctx, Firing("tok-1", "rule-1", account))
	if err != nil {
		t.Fatal(err)
	}

	// Another replica's batch holds the account's lock (store's lockNSAccount).
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_xact_lock(30051, hashtext($1))`, account); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.RecordFiring(ctx, Firing("tok-2", "rule-1", account)) // the same incident
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
				AND classid = 30051`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second firing never waited for the account's lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// While it waits, it holds no lock on the incident.
	probe, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	err = probe.QueryRowContext(ctx, `SELECT id FROM incidents WHERE id = $1 FOR UPDATE NOWAIT`, first.Incident.ID).Scan(&id)
	_ = probe.Rollback()
	if err != nil {
		t.Fatalf("the waiting firing holds the incident's row: %v", err)
	}
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// During a rolling upgrade a replica of the previous version calls
// record_firing with its 20 arguments and record_firings with firings that
// have no "rearm", against the schema this version migrated: both record
// as before, and this version sees what they recorded.
func TestPostgresPreviousVersionRecordsFirings(t *testing.T) {
	dsn := Schema(t)
	ctx := context.Background()
	s, db := openWithSQL(t, dsn)

	// The previous version's record_firing call (its recordFiringCall).
	var result string
	var trip int64
	var claimed bool
	err := db.QueryRowContext(ctx, `SELECT o_result, o_trip, o_claimed FROM record_firing($1, 'callback', 'spend',
			'AC-old', '', 'daily:2026-11-24', '', '', '', '', '', '12.50', '', 'suspend', 0, $2,
			ARRAY['trip', 'notify:ops']::TEXT[], ARRAY[true, false]::BOOLEAN[], 'replica-old', $3)`,
		"tok-old-1", T0.UnixNano(), T0.Add(time.Minute).UnixNano()).Scan(&result, &trip, &claimed)
	if err != nil {
		t.Fatalf("the previous version's record_firing: %v", err)
	}
	if result != "new" || trip == 0 || !claimed {
		t.Fatalf("the previous version's record_firing: result %q, trip %d, claimed %v", result, trip, claimed)
	}

	// The previous version's batch: firings without "rearm".
	batch := `[{"i": 0, "token": "tok-old-2", "source": "callback", "rule": "spend", "account": "AC-old-2",
		"account_name": "", "period": "daily:2026-11-24", "trigger_sid": "", "category": "", "trigger_by": "",
		"recurring": "", "trigger_value": "", "current_value": "12.50", "date_fired": "", "action": "suspend",
		"dry_run": 0, "received": ` + strconv.FormatInt(T0.UnixNano(), 10) + `, "kinds": ["trip"], "locks": [true],
		"owner": "", "lease": 0}]`
	var code string
	err = db.QueryRowContext(ctx, `SELECT o_result, o_trip, o_code FROM record_firings($1::JSONB)`, batch).Scan(&result, &trip, &code)
	if err != nil {
		t.Fatalf("the previous version's record_firings: %v", err)
	}
	if result != "new" || trip == 0 || code != "" {
		t.Fatalf("the previous version's record_firings: result %q, trip %d, error code %q", result, trip, code)
	}

	// This version sees both: their tokens are duplicates, their trips queued.
	for _, f := range []store.Firing{Firing("tok-old-1", "spend", "AC-old"), Firing("tok-old-2", "spend", "AC-old-2")} {
		r, err := s.RecordFiring(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if !r.DuplicateToken || r.Incident.AccountSID != f.AccountSID || r.Incident.Period != f.Period {
			t.Fatalf("%s after the previous version recorded it: %+v", f.IdempotencyToken, r)
		}
	}
}

// A hold and a firing's claim of the same account, at once: never both
// (the hold takes the account's lock, as record_firing does).
func TestPostgresHoldAndClaimExcludeEachOther(t *testing.T) {
	s := openPostgres(t)
	ctx := context.Background()
	for i := range 100 {
		acct := fmt.Sprintf("AC%d", i)
		var (
			wg      sync.WaitGroup
			holdErr error
			r       store.RecordResult
			recErr  error
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			holdErr = s.HoldAccount(ctx, acct, "admin", T0, T0.Add(time.Minute))
		}()
		go func() {
			defer wg.Done()
			f := Firing(fmt.Sprintf("tok-%d", i), "spend", acct)
			f.ClaimBy = &store.Claim{Owner: "o1", LeaseUntil: T0.Add(time.Minute)}
			r, recErr = s.RecordFiring(ctx, f)
		}()
		wg.Wait()
		if recErr != nil || (holdErr != nil && !errors.Is(holdErr, store.ErrHeld)) {
			t.Fatalf("%s: hold %v, firing %v", acct, holdErr, recErr)
		}
		if held, claimed := holdErr == nil, r.Trip.State == store.ActionRunning; held == claimed {
			t.Fatalf("%s: held %v and trip claimed %v: exactly one must win", acct, held, claimed)
		}
	}
}

// A schema at version 4, as the previous version migrated it (record_firing
// without the default of its re-arm argument), is brought up to date: the
// previous version's 20-argument call works after it.
func TestPostgresMigrationFromVersion4(t *testing.T) {
	dsn := Schema(t)
	ctx := context.Background()
	s, db := openWithSQL(t, dsn)
	s.Close()
	var def string
	if err := db.QueryRowContext(ctx, `SELECT pg_get_functiondef('record_firing'::regproc)`).Scan(&def); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(def, "DEFAULT false") {
		t.Fatalf("record_firing has no default for p_rearm:\n%s", def)
	}
	v4 := strings.Replace(def, "p_rearm boolean DEFAULT false", "p_rearm boolean", 1)
	for _, stmt := range []string{
		`DROP TABLE account_holds`, // migration 6
		`DROP FUNCTION record_firing(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT,
			TEXT, TEXT, TEXT, BIGINT, BIGINT, TEXT[], BOOLEAN[], TEXT, BIGINT, BOOLEAN)`,
		v4,
		`UPDATE schema_version SET version = 4`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	var defaults int
	if err := db.QueryRowContext(ctx, `SELECT pronargdefaults FROM pg_proc WHERE proname = 'record_firing'`).Scan(&defaults); err != nil || defaults != 0 {
		t.Fatalf("the version-4 function: %d defaults (%v)", defaults, err)
	}
	s2, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var result string
	err = db.QueryRowContext(ctx, `SELECT o_result FROM record_firing('tok-old', 'callback', 'spend', 'AC-old', '',
			'daily:2026-11-24', '', '', '', '', '', '12.50', '', 'suspend', 0, $1,
			ARRAY['trip']::TEXT[], ARRAY[true]::BOOLEAN[], '', 0)`, T0.UnixNano()).Scan(&result)
	if err != nil || result != "new" {
		t.Fatalf("the previous version's call after the migration: %q, %v", result, err)
	}
	if err := s2.HoldAccount(ctx, "AC-old", "admin", T0, T0.Add(time.Minute)); err != nil {
		t.Fatalf("a hold after the migration: %v", err)
	}
}
