package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

// Opener opens a fresh, empty store for one test.
type Opener func(t *testing.T) *store.DB

// T0 is the suite's clock origin.
var T0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// Firing is a callback firing of rule on account, with the trip and one notification.
func Firing(token, rule, account string) store.Firing {
	return store.Firing{
		Source: store.SourceCallback, IdempotencyToken: token, Rule: rule, AccountSID: account,
		Period: "daily:2026-11-24", Action: "suspend", CurrentValue: "12.50", ReceivedAt: T0,
		Actions: []store.ActionKind{store.ActionTrip, store.ActionEndCalls, store.NotifyKind("ops")},
	}
}

// Run runs the store suite: the behaviour every backend must have, the
// contract of store.Store as the action engine and the daemon rely on it.
func Run(t *testing.T, open Opener) {
	ctx := context.Background()
	claim := func(owner string, at time.Time) store.Claim {
		return store.Claim{Owner: owner, LeaseUntil: at.Add(time.Minute)}
	}

	t.Run("RecordFiringOpensOneIncidentPerKey", func(t *testing.T) {
		s := open(t)
		r1, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1"))
		if err != nil {
			t.Fatal(err)
		}
		if !r1.NewIncident || r1.Trip.ID == 0 || r1.Trip.State != store.ActionAvailable {
			t.Fatalf("first firing: %+v", r1)
		}
		r2, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1"))
		if err != nil {
			t.Fatal(err)
		}
		if !r2.DuplicateToken || r2.Incident.ID != r1.Incident.ID {
			t.Fatalf("same token: %+v", r2)
		}
		r3, err := s.RecordFiring(ctx, Firing("tok-2", "spend", "AC1"))
		if err != nil {
			t.Fatal(err)
		}
		if r3.NewIncident || r3.DuplicateToken || r3.Incident.ID != r1.Incident.ID || r3.Incident.Firings != 2 {
			t.Fatalf("second token: %+v", r3)
		}
		acts, err := s.Actions(ctx, r1.Incident.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(acts) != 3 || acts[0].Kind != store.ActionTrip || acts[0].AccountSID != "AC1" || acts[2].AccountSID != "" {
			t.Fatalf("actions: %+v", acts)
		}
		inc, err := s.Incident(ctx, r1.Incident.ID)
		if err != nil || inc.State != store.StatePending || inc.CurrentValue != "12.50" {
			t.Fatalf("incident: %+v %v", inc, err)
		}
		if _, err := s.Incident(ctx, 9999); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown incident: %v", err)
		}
		list, err := s.ListIncidents(ctx, store.IncidentFilter{AccountSID: "AC1"})
		if err != nil || len(list) != 1 {
			t.Fatalf("list: %v %v", list, err)
		}
	})

	t.Run("ConcurrentFiringsOneIncident", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		res := make([]store.RecordResult, 16)
		errs := make([]error, 16)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i%4), "spend", "AC1"))
			}()
		}
		wg.Wait()
		news, dups := 0, 0
		for i := range res {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if res[i].NewIncident {
				news++
			}
			if res[i].DuplicateToken {
				dups++
			}
		}
		if news != 1 || dups != 12 {
			t.Fatalf("new incidents %d (want 1), duplicate tokens %d (want 12)", news, dups)
		}
	})

	// A firing that is not text is refused, naming the field, on every
	// backend, and refused alone: the firings recorded with it are not.
	t.Run("FiringNotTextRefusedAlone", func(t *testing.T) {
		s := open(t)
		bad := map[string]store.Firing{}
		f := Firing("tok-nul", "spend", "AC-bad")
		f.CurrentValue = "1\x002"
		bad["CurrentValue"] = f
		f = Firing("tok-utf8", "spend", "AC-bad")
		f.UsageCategory = "sms\xff"
		bad["UsageCategory"] = f
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), "spend", fmt.Sprintf("AC%d", i)))
			}()
		}
		for field, f := range bad {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.RecordFiring(ctx, f)
				if err == nil || !strings.Contains(err.Error(), field+" is not text") {
					t.Errorf("firing with a bad %s: %v, want it refused naming the field", field, err)
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("good firing %d: %v", i, err)
			}
		}
		if list, err := s.ListIncidents(ctx, store.IncidentFilter{AccountSID: "AC-bad"}); err != nil || len(list) != 0 {
			t.Fatalf("incidents of the bad firings: %v %v", list, err)
		}
		// The account's name is Twilio's, only shown: cleaned, never refused.
		named := Firing("tok-name", "spend", "AC-name")
		named.AccountName = "acme\x00\xff"
		res, err := s.RecordFiring(ctx, named)
		if err != nil || res.Incident.AccountName != "acme\uFFFD\uFFFD" {
			t.Fatalf("a firing whose account name is not text: %q, %v", res.Incident.AccountName, err)
		}
	})

	t.Run("FiringClaimedByItsRecorder", func(t *testing.T) {
		s := open(t)
		f := Firing("tok-1", "spend", "AC1")
		f.ClaimBy = &store.Claim{Owner: "a", LeaseUntil: T0.Add(time.Minute)}
		r, err := s.RecordFiring(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if r.Trip.State != store.ActionRunning || r.Trip.Owner != "a" {
			t.Fatalf("trip %+v, want running for a", r.Trip)
		}
		// Another incident of the account: its trip cannot be claimed while a's holds the account.
		g := Firing("tok-2", "other", "AC1")
		g.ClaimBy = &store.Claim{Owner: "b", LeaseUntil: T0.Add(time.Minute)}
		r2, err := s.RecordFiring(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if r2.Trip.State != store.ActionAvailable || r2.Trip.Owner != "" {
			t.Fatalf("second trip %+v, want available (the account is leased)", r2.Trip)
		}
		got, err := s.ClaimActions(ctx, claim("b", T0), T0, 10)
		if err != nil || len(got) != 0 {
			t.Fatalf("claimed %+v (%v), want nothing while a holds the account", got, err)
		}
	})

	t.Run("ClaimOnePerAccountTripsFirst", func(t *testing.T) {
		s := open(t)
		for i, acct := range []string{"AC1", "AC1", "AC2"} {
			if _, err := s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), fmt.Sprintf("rule-%d", i), acct)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Kind != store.ActionTrip || got[1].Kind != store.ActionTrip ||
			got[0].AccountSID == got[1].AccountSID || got[0].Owner != "w" || got[0].State != store.ActionRunning {
			t.Fatalf("claimed %+v, want the first trip of each account", got)
		}
		again, err := s.ClaimActions(ctx, claim("x", T0), T0, 10)
		if err != nil || len(again) != 0 {
			t.Fatalf("second claimer got %+v (%v), want nothing", again, err)
		}
		n, err := s.CountPendingActions(ctx)
		if err != nil || n != 9 {
			t.Fatalf("pending %d (%v), want 9", n, err)
		}
	})

	t.Run("CompleteFencedByOwnerThenFollowers", func(t *testing.T) {
		s := open(t)
		r, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("claim: %+v %v", got, err)
		}
		trip := got[0]
		if err := s.MarkWriteSent(ctx, trip.ID, "intruder", trip.Attempts, T0, T0.Add(time.Minute)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("mark by another owner: %v, want ErrNotFound", err)
		}
		if err := s.MarkWriteSent(ctx, trip.ID, "w", trip.Attempts, T0.Add(time.Second), T0.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CompleteAction(ctx, trip.ID, "intruder", store.Completion{State: store.ActionDone, Outcome: store.OutcomeSuspended}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("complete by another owner: %v, want ErrNotFound", err)
		}
		if _, err := s.CompleteAction(ctx, trip.ID, "w", store.Completion{State: store.ActionDone, Outcome: store.OutcomeSuspended, Attempted: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CompleteAction(ctx, trip.ID, "w", store.Completion{State: store.ActionDone}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second completion: %v, want ErrNotFound", err)
		}
		inc, err := s.Incident(ctx, r.Incident.ID)
		if err != nil || inc.State != store.StateDone || inc.Outcome != store.OutcomeSuspended {
			t.Fatalf("incident %+v %v", inc, err)
		}
		// The end_calls and notification now follow, one per account.
		next, err := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if err != nil || len(next) != 2 {
			t.Fatalf("followers: %+v %v", next, err)
		}
		n, err := s.CountSuspensions(ctx, T0.Add(-time.Hour))
		if err != nil || n != 1 {
			t.Fatalf("suspensions %d %v", n, err)
		}
		ok, err := s.SuspendedSince(ctx, "AC1", 0, T0.Add(-time.Hour))
		if err != nil || !ok {
			t.Fatalf("suspended since: %v %v", ok, err)
		}
	})

	t.Run("RetryHoldsAccount", func(t *testing.T) {
		s := open(t)
		for i := range 2 {
			if _, err := s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), fmt.Sprintf("rule-%d", i), "AC1")); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("claim: %+v %v", got, err)
		}
		first := got[0]
		if _, err := s.CompleteAction(ctx, first.ID, "w", store.Completion{State: store.ActionAvailable, Attempted: true,
			NextAttemptAt: T0.Add(20 * time.Second), HoldAccountUntil: T0.Add(10 * time.Second), WriteSentAt: T0}); err != nil {
			t.Fatal(err)
		}
		at := T0.Add(2 * time.Second)
		if got, _ := s.ClaimActions(ctx, claim("w", at), at, 10); len(got) != 0 {
			t.Fatalf("claimed %+v while the account is held", got)
		}
		at = T0.Add(11 * time.Second)
		got, err = s.ClaimActions(ctx, claim("w", at), at, 10)
		if err != nil || len(got) != 1 || got[0].ID == first.ID {
			t.Fatalf("after the hold: %+v %v, want the other trip", got, err)
		}
		if _, err := s.CompleteAction(ctx, got[0].ID, "w", store.Completion{State: store.ActionDone, Outcome: store.OutcomeAlreadySuspended}); err != nil {
			t.Fatal(err)
		}
		at = T0.Add(21 * time.Second)
		got, err = s.ClaimActions(ctx, claim("w", at), at, 10)
		if err != nil || len(got) != 2 || got[0].ID != first.ID || got[0].Attempts != 1 || got[0].WriteSentAt.IsZero() {
			t.Fatalf("the retry: %+v %v", got, err)
		}
	})

	t.Run("RescueExpiredOnly", func(t *testing.T) {
		s := open(t)
		for i, acct := range []string{"AC1", "AC2"} {
			if _, err := s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), "spend", acct)); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.ClaimActions(ctx, store.Claim{Owner: "short", LeaseUntil: T0.Add(time.Second)}, T0, 1); err != nil || len(got) != 1 {
			t.Fatalf("claim: %v %v", got, err)
		}
		if got, err := s.ClaimActions(ctx, store.Claim{Owner: "long", LeaseUntil: T0.Add(time.Hour)}, T0, 1); err != nil || len(got) != 1 {
			t.Fatalf("claim: %v %v", got, err)
		}
		rescued, err := s.RescueActions(ctx, T0.Add(time.Minute), 20*time.Second, false)
		if err != nil || len(rescued) != 1 || rescued[0].Owner != "short" {
			t.Fatalf("rescued %+v %v, want short's claim only", rescued, err)
		}
		// The account stays held for the write lease, then the trip runs again.
		if got, _ := s.ClaimActions(ctx, claim("x", T0.Add(time.Minute)), T0.Add(time.Minute), 10); len(got) != 0 {
			t.Fatalf("claimed %+v during the write lease", got)
		}
		at := T0.Add(time.Minute + 21*time.Second)
		got, err := s.ClaimActions(ctx, claim("x", at), at, 10)
		if err != nil || len(got) != 1 || !got[0].Rescued {
			t.Fatalf("after the write lease: %+v %v", got, err)
		}
		all, err := s.RescueActions(ctx, at, 0, true)
		if err != nil || len(all) != 2 {
			t.Fatalf("rescue all: %+v %v", all, err)
		}
	})

	t.Run("HoldReleaseAndResume", func(t *testing.T) {
		s := open(t)
		if _, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1")); err != nil {
			t.Fatal(err)
		}
		got, _ := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		done, err := s.CompleteAction(ctx, got[0].ID, "w", store.Completion{State: store.ActionHeld, Detail: "guard",
			Pages: []store.ActionKind{store.GuardPageKind("ops")}})
		if err != nil || !done.Paged {
			t.Fatalf("hold: %+v %v", done, err)
		}
		if n, err := s.CountHeld(ctx); err != nil || n != 1 {
			t.Fatalf("held %d %v", n, err)
		}
		n, err := s.ReleaseHeld(ctx, T0, "released by test")
		if err != nil || n != 1 {
			t.Fatalf("release %d %v", n, err)
		}
		got, err = s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if err != nil || len(got) != 2 {
			t.Fatalf("after release: %+v %v (want the trip and the page)", got, err)
		}
		for _, a := range got {
			if a.Kind == store.ActionTrip && !a.Released {
				t.Fatalf("released trip not marked: %+v", a)
			}
		}
		if _, err := s.CompleteAction(ctx, got[0].ID, "w", store.Completion{State: store.ActionAvailable, NextAttemptAt: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.ResumeAvailable(ctx, T0); err != nil || n != 1 {
			t.Fatalf("resume %d %v", n, err)
		}
	})

	t.Run("ReopenSkipped", func(t *testing.T) {
		s := open(t)
		if _, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1")); err != nil {
			t.Fatal(err)
		}
		got, _ := s.ClaimActions(ctx, claim("w", T0), T0, 10)
		if _, err := s.CompleteAction(ctx, got[0].ID, "w", store.Completion{State: store.ActionDone, Outcome: store.OutcomeSkipped}); err != nil {
			t.Fatal(err)
		}
		f := Firing("tok-2", "spend", "AC1")
		f.CurrentValue = "20.00"
		r, err := s.RecordFiring(ctx, f)
		if err != nil || !r.Reopened || r.Incident.State != store.StatePending || r.Incident.CurrentValue != "20.00" {
			t.Fatalf("reopen: %+v %v", r, err)
		}
	})

	t.Run("RearmsAndReactivations", func(t *testing.T) {
		s := open(t)
		r, err := s.RecordFiring(ctx, Firing("tok-1", "spend", "AC1"))
		if err != nil {
			t.Fatal(err)
		}
		ra, err := s.BeginRearm(ctx, "AC1", "spend", "daily:2026-11-24", "5", T0.Add(time.Hour))
		if err != nil || ra.Generation != 2 {
			t.Fatalf("begin re-arm: %+v %v", ra, err)
		}
		if ra, err = s.BeginRearm(ctx, "AC1", "spend", "daily:2026-11-24", "5", T0.Add(time.Hour)); err != nil || ra.Generation != 3 {
			t.Fatalf("second re-arm: %+v %v", ra, err)
		}
		if err := s.CompleteRearm(ctx, "AC1", "spend", "daily:2026-11-24", 3, "UT1", "17.50"); err != nil {
			t.Fatal(err)
		}
		if err := s.CompleteRearm(ctx, "AC1", "spend", "daily:2026-11-24", 2, "UT1", "17.50"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("stale generation: %v", err)
		}
		got, err := s.RearmFor(ctx, "AC1", "spend", "daily:2026-11-24")
		if err != nil || got.TriggerSID != "UT1" {
			t.Fatalf("re-arm for: %+v %v", got, err)
		}
		if open, err := s.OpenRearms(ctx, "AC1", T0); err != nil || len(open) != 1 {
			t.Fatalf("open: %+v %v", open, err)
		}
		if n, err := s.CountExpiredRearms(ctx, T0.Add(2*time.Hour)); err != nil || n != 1 {
			t.Fatalf("expired %d %v", n, err)
		}
		if n, err := s.MarkRearmsRestored(ctx, T0.Add(2*time.Hour)); err != nil || n != 1 {
			t.Fatalf("restored %d %v", n, err)
		}
		re := store.Reactivation{IncidentID: r.Incident.ID, AccountSID: "AC1", Via: store.ViaManual, Actor: "me", Reason: "test", CreatedAt: T0}
		if _, err := s.RecordReactivation(ctx, re); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecordReactivation(ctx, re); !errors.Is(err, store.ErrExists) {
			t.Fatalf("second reactivation: %v, want ErrExists", err)
		}
		m, err := s.Reactivations(ctx, []int64{r.Incident.ID})
		if err != nil || m[r.Incident.ID].Actor != "me" {
			t.Fatalf("reactivations: %+v %v", m, err)
		}
	})

	t.Run("FiringsApplyRearms", func(t *testing.T) {
		s := open(t)
		rearmable := func(token, rule string) store.Firing {
			f := Firing(token, rule, "AC1")
			f.ApplyRearm = true
			return f
		}
		r, err := s.RecordFiring(ctx, rearmable("tok-1", "spend"))
		if err != nil || !r.NewIncident || r.Incident.Period != "daily:2026-11-24" {
			t.Fatalf("before any re-arm: %+v %v", r.Incident, err)
		}
		if _, err := s.BeginRearm(ctx, "AC1", "spend", "daily:2026-11-24", "5", T0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		// Several at once (on Postgres, one batch): all of the re-armed
		// generation, one incident.
		var wg sync.WaitGroup
		results := make([]store.RecordResult, 8)
		errs := make([]error, 8)
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = s.RecordFiring(ctx, rearmable(fmt.Sprintf("tok-g2-%d", i), "spend"))
			}()
		}
		wg.Wait()
		opened := 0
		for i, r := range results {
			if errs[i] != nil || r.Incident.Period != "daily:2026-11-24#2" {
				t.Fatalf("after the re-arm, firing %d: %+v %v", i, r.Incident, errs[i])
			}
			if r.NewIncident {
				opened++
			}
		}
		if opened != 1 {
			t.Fatalf("%d firings opened the re-armed incident, want 1", opened)
		}
		// Without ApplyRearm the period is taken as given; another rule of
		// the account is not re-armed.
		f := Firing("tok-plain", "spend", "AC1")
		if r, err := s.RecordFiring(ctx, f); err != nil || r.Incident.Period != "daily:2026-11-24" || r.NewIncident {
			t.Fatalf("plain period: %+v %v", r, err)
		}
		if r, err := s.RecordFiring(ctx, rearmable("tok-other", "sms")); err != nil || r.Incident.Period != "daily:2026-11-24" || !r.NewIncident {
			t.Fatalf("another rule: %+v %v", r, err)
		}
		// A second re-arm: generation 3.
		if _, err := s.BeginRearm(ctx, "AC1", "spend", "daily:2026-11-24", "5", T0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if r, err := s.RecordFiring(ctx, rearmable("tok-g3", "spend")); err != nil || r.Incident.Period != "daily:2026-11-24#3" || !r.NewIncident {
			t.Fatalf("generation 3: %+v %v", r, err)
		}
		// A repeated token lands where it landed, whatever was re-armed since.
		if r, err := s.RecordFiring(ctx, rearmable("tok-1", "spend")); err != nil || !r.DuplicateToken || r.Incident.Period != "daily:2026-11-24" {
			t.Fatalf("duplicate token: %+v %v", r, err)
		}
	})

	t.Run("ClaimedTripAnswersTheLastStatusWrite", func(t *testing.T) {
		s := open(t)
		claimed := func(token, rule string, at time.Time) store.RecordResult {
			t.Helper()
			f := Firing(token, rule, "AC1")
			f.ReceivedAt, f.ClaimBy = at, &store.Claim{Owner: "o1", LeaseUntil: at.Add(time.Minute)}
			r, err := s.RecordFiring(ctx, f)
			if err != nil || r.Trip.State != store.ActionRunning {
				t.Fatalf("record %s: %+v %v", token, r, err)
			}
			return r
		}
		first := claimed("tok-1", "spend", T0)
		if !first.LastStatusWrite.IsZero() {
			t.Fatalf("no write yet: %s", first.LastStatusWrite)
		}
		sent := T0.Add(time.Second)
		if _, err := s.CompleteAction(ctx, first.Trip.ID, "o1", store.Completion{State: store.ActionDone,
			Outcome: store.Outcome("suspended"), Attempted: true, WriteSentAt: sent}); err != nil {
			t.Fatal(err)
		}
		if r := claimed("tok-2", "sms", T0.Add(2*time.Second)); !r.LastStatusWrite.Equal(sent) {
			t.Fatalf("after a suspension: %s, want %s", r.LastStatusWrite, sent)
		} else if _, err := s.CompleteAction(ctx, r.Trip.ID, "o1", store.Completion{State: store.ActionDone,
			Outcome: store.Outcome("already_suspended"), Attempted: true}); err != nil {
			t.Fatal(err)
		}
		reactivated := T0.Add(time.Minute)
		if _, err := s.RecordReactivation(ctx, store.Reactivation{IncidentID: first.Incident.ID, AccountSID: "AC1",
			Via: store.ViaManual, Actor: "me", Reason: "test", CreatedAt: reactivated}); err != nil {
			t.Fatal(err)
		}
		if r := claimed("tok-3", "calls", T0.Add(2*time.Minute)); !r.LastStatusWrite.Equal(reactivated) {
			t.Fatalf("after a reactivation: %s, want %s", r.LastStatusWrite, reactivated)
		}
		// Unclaimed (another action holds the account): not answered.
		f := Firing("tok-4", "voice", "AC1")
		f.ReceivedAt, f.ClaimBy = T0.Add(2*time.Minute), &store.Claim{Owner: "o2", LeaseUntil: T0.Add(3 * time.Minute)}
		if r, err := s.RecordFiring(ctx, f); err != nil || r.Trip.State == store.ActionRunning || !r.LastStatusWrite.IsZero() {
			t.Fatalf("unclaimed: %+v %v", r, err)
		}
	})

	t.Run("HoldsKeepTheAccount", func(t *testing.T) {
		s := open(t)
		onAccount := func(token, rule string) store.Firing { // only actions of the account
			f := Firing(token, rule, "AC1")
			f.Actions = []store.ActionKind{store.ActionTrip, store.ActionEndCalls}
			return f
		}
		// A claimed trip: the account cannot be held meanwhile.
		f := onAccount("tok-1", "spend")
		f.ClaimBy = &store.Claim{Owner: "o1", LeaseUntil: T0.Add(time.Minute)}
		first, err := s.RecordFiring(ctx, f)
		if err != nil || first.Trip.State != store.ActionRunning {
			t.Fatalf("record: %+v %v", first, err)
		}
		if err := s.HoldAccount(ctx, "AC1", "admin", T0, T0.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
			t.Fatalf("hold while a trip is claimed: %v, want ErrHeld", err)
		}
		if _, err := s.CompleteAction(ctx, first.Trip.ID, "o1", store.Completion{State: store.ActionDone,
			Outcome: store.Outcome("suspended"), Attempted: true, WriteSentAt: T0}); err != nil {
			t.Fatal(err)
		}

		// Held: another owner's hold is refused, its own renews; nothing
		// of the account is claimed, by a firing or by the queue.
		at := T0.Add(time.Second)
		if err := s.HoldAccount(ctx, "AC1", "admin", at, at.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.HoldAccount(ctx, "AC1", "admin-2", at, at.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
			t.Fatalf("another owner's hold: %v, want ErrHeld", err)
		}
		if err := s.HoldAccount(ctx, "AC1", "admin", at, at.Add(2*time.Minute)); err != nil {
			t.Fatalf("renew: %v", err)
		}
		g := onAccount("tok-2", "sms")
		g.ReceivedAt, g.ClaimBy = at, &store.Claim{Owner: "o1", LeaseUntil: at.Add(time.Minute)}
		second, err := s.RecordFiring(ctx, g)
		if err != nil || second.Trip.ID == 0 || second.Trip.State != store.ActionAvailable {
			t.Fatalf("a firing during the hold: %+v %v", second, err)
		}
		if acts, err := s.ClaimActions(ctx, store.Claim{Owner: "o2", LeaseUntil: at.Add(time.Minute)}, at, 10); err != nil || len(acts) != 0 {
			t.Fatalf("claimed during the hold: %+v %v", acts, err)
		}
		// Its write: the account's last status write; the hold lasts while
		// the write may land.
		sent := at.Add(2 * time.Second)
		if err := s.MarkHoldWriteSent(ctx, "AC1", "admin-2", sent, sent.Add(20*time.Second)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("mark by another owner: %v, want ErrNotFound", err)
		}
		if err := s.MarkHoldWriteSent(ctx, "AC1", "admin", sent, sent.Add(20*time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseAccount(ctx, "AC1", "admin", sent.Add(20*time.Second)); err != nil {
			t.Fatal(err)
		}
		before := sent.Add(19 * time.Second)
		if acts, err := s.ClaimActions(ctx, store.Claim{Owner: "o2", LeaseUntil: before.Add(time.Minute)}, before, 10); err != nil || len(acts) != 0 {
			t.Fatalf("claimed while the released hold's write may land: %+v %v", acts, err)
		}
		if err := s.HoldAccount(ctx, "AC1", "admin", before, before.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
			t.Fatalf("hold again while the write may land: %v, want ErrHeld", err)
		}
		after := sent.Add(21 * time.Second)
		acts, err := s.ClaimActions(ctx, store.Claim{Owner: "o2", LeaseUntil: after.Add(time.Minute)}, after, 10)
		if err != nil || len(acts) != 1 || acts[0].ID != second.Trip.ID {
			t.Fatalf("claim after the hold: %+v %v", acts, err)
		}
		if _, err := s.CompleteAction(ctx, second.Trip.ID, "o2", store.Completion{State: store.ActionDone,
			Outcome: store.Outcome("suspended"), Attempted: true, WriteSentAt: T0}); err != nil {
			t.Fatal(err)
		}
		h := onAccount("tok-3", "calls")
		h.ReceivedAt, h.ClaimBy = after, &store.Claim{Owner: "o1", LeaseUntil: after.Add(time.Minute)}
		third, err := s.RecordFiring(ctx, h)
		if err != nil || third.Trip.State != store.ActionRunning || !third.LastStatusWrite.Equal(sent) {
			t.Fatalf("a firing after the hold: %+v %v, want its last status write %s", third, err, sent)
		}

		// Released at once: the account is free; a passed hold is
		// replaced by another owner's.
		if err := s.HoldAccount(ctx, "AC2", "admin", T0, T0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseAccount(ctx, "AC2", "admin", T0); err != nil {
			t.Fatal(err)
		}
		if err := s.HoldAccount(ctx, "AC2", "admin-2", T0, T0.Add(time.Minute)); err != nil {
			t.Fatalf("hold after a release: %v", err)
		}
		if err := s.HoldAccount(ctx, "AC2", "admin", T0.Add(time.Minute), T0.Add(2*time.Minute)); err != nil {
			t.Fatalf("hold after the other passed: %v", err)
		}
		if err := s.MarkHoldWriteSent(ctx, "AC2", "admin-2", T0.Add(time.Minute), T0.Add(2*time.Minute)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("mark of a hold that passed and was taken: %v, want ErrNotFound", err)
		}
	})

	t.Run("HoldWriteRefusedAfterAClaim", func(t *testing.T) {
		s := open(t)
		if err := s.HoldAccount(ctx, "AC1", "admin", T0, T0.Add(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		// Another process, whose clock is ahead, finds the hold passed and
		// claims a trip; the holder's mark, by its own clock still inside
		// the hold, is refused: it must not write.
		f := Firing("tok-1", "spend", "AC1")
		f.ReceivedAt, f.ClaimBy = T0.Add(30*time.Second), &store.Claim{Owner: "o2", LeaseUntil: T0.Add(90 * time.Second)}
		if r, err := s.RecordFiring(ctx, f); err != nil || r.Trip.State != store.ActionRunning {
			t.Fatalf("the claim once the hold passed: %+v %v", r, err)
		}
		if err := s.MarkHoldWriteSent(ctx, "AC1", "admin", T0.Add(29*time.Second), T0.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
			t.Fatalf("the hold's mark after another's claim: %v, want ErrHeld", err)
		}
	})

	t.Run("RescueAllEndsHolds", func(t *testing.T) {
		s := open(t)
		// A process that stopped held two accounts; it had sent a write on the second.
		if err := s.HoldAccount(ctx, "AC1", "dead", T0, T0.Add(5*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.HoldAccount(ctx, "AC2", "dead", T0, T0.Add(5*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.MarkHoldWriteSent(ctx, "AC2", "dead", T0, T0.Add(20*time.Second)); err != nil {
			t.Fatal(err)
		}
		start := T0.Add(time.Second)
		if _, err := s.RescueActions(ctx, start, 20*time.Second, true); err != nil {
			t.Fatal(err)
		}
		if err := s.HoldAccount(ctx, "AC1", "new", start, start.Add(time.Minute)); err != nil {
			t.Fatalf("a stopped process's hold without a write lasts past the start: %v", err)
		}
		if err := s.HoldAccount(ctx, "AC2", "new", start.Add(19*time.Second), start.Add(time.Minute)); !errors.Is(err, store.ErrHeld) {
			t.Fatalf("a stopped process's hold whose write may land: %v, want ErrHeld", err)
		}
		if err := s.HoldAccount(ctx, "AC2", "new", start.Add(21*time.Second), start.Add(time.Minute)); err != nil {
			t.Fatalf("after the write lease: %v", err)
		}
	})

	t.Run("ConcurrentClaimersNeverShareAnAccount", func(t *testing.T) {
		s := open(t)
		// 20 accounts, 3 incidents each: 60 trips, of which one per account may run at a time.
		for i := range 60 {
			if _, err := s.RecordFiring(ctx, Firing(fmt.Sprintf("tok-%d", i), fmt.Sprintf("rule-%d", i/20), fmt.Sprintf("AC%02d", i%20))); err != nil {
				t.Fatal(err)
			}
		}
		var (
			mu      sync.Mutex
			running = map[string]int64{} // account -> trip
			claimed = map[int64]string{}
			wg      sync.WaitGroup
			fail    error
		)
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				owner := fmt.Sprintf("w%d", w)
				for idle := 0; idle < 50; {
					got, err := s.ClaimActions(ctx, claim(owner, T0), T0, 3)
					if err != nil {
						mu.Lock()
						fail = err
						mu.Unlock()
						return
					}
					if len(got) == 0 {
						idle++
						continue
					}
					idle = 0
					for _, a := range got {
						mu.Lock()
						if prev, ok := claimed[a.ID]; ok {
							fail = fmt.Errorf("action %d claimed by %s and %s", a.ID, prev, owner)
						}
						claimed[a.ID] = owner
						if a.AccountSID != "" {
							if other, ok := running[a.AccountSID]; ok {
								fail = fmt.Errorf("account %s: action %d claimed while %d runs", a.AccountSID, a.ID, other)
							}
							running[a.AccountSID] = a.ID
						}
						mu.Unlock()
					}
					for _, a := range got {
						mu.Lock()
						delete(running, a.AccountSID)
						mu.Unlock()
						if _, err := s.CompleteAction(ctx, a.ID, owner, store.Completion{State: store.ActionDone, Outcome: store.OutcomeSent}); err != nil {
							mu.Lock()
							fail = err
							mu.Unlock()
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		if fail != nil {
			t.Fatal(fail)
		}
		if len(claimed) != 180 {
			t.Fatalf("%d actions claimed, want 180", len(claimed))
		}
	})
}
