package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A step firing is recorded once with its rearm_step action (no incident);
// the action is claimed and completed like any other; Steps returns an
// account's latest firings of a rule, oldest first.
func TestVelocityRecordStep(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	base := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	step := func(tok string, at time.Time) StepFiring {
		return StepFiring{IdempotencyToken: tok, Rule: "sms-velocity", AccountSID: "AC1", UsageTriggerSID: "UT" + tok,
			UsageCategory: "sms", TriggerBy: "count", TriggerValue: "125", CurrentValue: "126",
			DateFired: at.Format(time.RFC1123Z), FiredAt: at, ReceivedAt: at.Add(time.Second)}
	}
	var rearms []Action
	for i, tok := range []string{"a", "b", "c"} {
		res, err := s.RecordStep(ctx, step(tok, base.Add(time.Duration(i)*time.Minute)))
		if err != nil || res.Duplicate || res.Rearm.ID == 0 {
			t.Fatalf("record %s: %+v, %v", tok, res, err)
		}
		if a := res.Rearm; a.Kind != ActionRearmStep || a.Step != tok || a.IncidentID != 0 || a.State != ActionAvailable || a.AccountSID != "" {
			t.Fatalf("rearm action %+v", a)
		}
		rearms = append(rearms, res.Rearm)
	}
	if res, err := s.RecordStep(ctx, step("b", base)); err != nil || !res.Duplicate || res.Rearm.ID != 0 {
		t.Fatalf("repeat: %+v, %v", res, err)
	}
	if _, err := s.RecordStep(ctx, StepFiring{IdempotencyToken: "x", Rule: "other", AccountSID: "AC1", FiredAt: base, ReceivedAt: base}); err != nil {
		t.Fatal(err)
	}
	stale := step("s", base.Add(3*time.Minute))
	stale.Stale = true
	if res, err := s.RecordStep(ctx, stale); err != nil || res.Rearm.ID == 0 {
		t.Fatalf("stale step: %+v, %v", res, err)
	}
	got, err := s.Steps(ctx, "sms-velocity", "AC1", time.Time{}, 2)
	if err != nil || len(got) != 2 || got[0].IdempotencyToken != "b" || got[1].IdempotencyToken != "c" || !got[1].FiredAt.Equal(base.Add(2*time.Minute)) {
		t.Fatalf("latest 2 steps: %+v, %v", got, err)
	}
	if got, _ := s.Steps(ctx, "sms-velocity", "AC1", base, 10); len(got) != 2 {
		t.Fatalf("steps after the first: %+v", got)
	}
	if f, err := s.Step(ctx, "a"); err != nil || f.UsageTriggerSID != "UTa" || f.CurrentValue != "126" {
		t.Fatalf("step a: %+v, %v", f, err)
	}
	if _, err := s.Step(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing step: %v", err)
	}

	if f, err := s.Step(ctx, "s"); err != nil || !f.Stale {
		t.Fatalf("stale step: %+v, %v", f, err)
	}
	if n := pending(t, s); n != 5 {
		t.Fatalf("pending %d, want 5 rearm actions", n)
	}
	acts := claim(t, s, testOwner, base.Add(time.Hour), base.Add(time.Hour), 10)
	if len(acts) != 5 {
		t.Fatalf("claimed %d rearm actions, want 4 (they lock no account)", len(acts))
	}
	done, err := s.CompleteAction(ctx, rearms[0].ID, testOwner, Completion{State: ActionDone, Outcome: OutcomeArmed, Detail: "armed UT2"})
	if err != nil || done.Paged {
		t.Fatal(err)
	}
	if a := actionByID(t, s, rearms[0].ID); a.State != ActionDone || a.Step != "a" || a.IncidentID != 0 {
		t.Fatalf("completed rearm %+v", a)
	}
}
