package breaker

import (
	"context"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func coverageOf(t *testing.T, f *fixture) map[string]AccountCoverage {
	t.Helper()
	c, ok := f.b.Reconciler().LastCoverage()
	if !ok {
		t.Fatal("no coverage after a reconcile")
	}
	if strings.Join(c.Rules, ",") != "spend-daily,sms-count,calls-dry" {
		t.Fatalf("rules %v", c.Rules)
	}
	out := map[string]AccountCoverage{}
	for _, a := range c.Accounts {
		out[a.FriendlyName] = a
	}
	return out
}

func TestCoverageIsWhatTheReconcileLeft(t *testing.T) {
	f := newFixture(t, baseRules)
	if _, ok := f.b.Reconciler().LastCoverage(); ok {
		t.Fatal("coverage before any reconcile")
	}
	f.api.addAccount("tenant-a", "active")
	f.api.addAccount("internal-qa", "active")
	f.api.addAccount("tenant-s", "suspended")
	// tenant-a is the only account with triggers to create; its first (spend-daily) fails.
	f.api.failNext("triggers.create", &twilioapi.Error{Operation: "triggers.create", Status: 400, Code: 21000, Message: "bad"})
	if _, err := f.b.Reconciler().Reconcile(context.Background()); err == nil {
		t.Fatal("the failed create is not reported")
	}
	c := coverageOf(t, f)
	want := map[string]string{ // spend-daily, sms-count, calls-dry
		"tenant-a":    "missing,guarded,guarded",
		"internal-qa": "not matched,not matched,not matched",
		"tenant-s":    "suspended,not matched,suspended",
	}
	for name, w := range want {
		if got := strings.Join(c[name].States, ","); got != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	if e := c["tenant-a"].Error; !strings.HasPrefix(e, "create trigger usagebreaker:prod:spend-daily: ") {
		t.Errorf("tenant-a's error: %q (without the account's SID and name: the row says them)", e)
	}
	if c["tenant-s"].Status != "suspended" || c["internal-qa"].Error != "" {
		t.Errorf("coverage: %+v", c)
	}

	f.reconcile(t)
	if got := strings.Join(coverageOf(t, f)["tenant-a"].States, ","); got != "guarded,guarded,guarded" {
		t.Fatalf("after a clean reconcile: %s", got)
	}

	// A new threshold needs a replacement; it fails, and the old trigger stays: drifted.
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, strings.Replace(baseRules, `threshold: "50"`, `threshold: "60"`, 1))})
	f.api.failNext("triggers.create", &twilioapi.Error{Operation: "triggers.create", Status: 400, Code: 21000, Message: "bad"})
	_, _ = f.b.Reconciler().Reconcile(context.Background())
	if got := strings.Join(coverageOf(t, f)["tenant-a"].States, ","); got != "drifted,guarded,guarded" {
		t.Fatalf("after a failed replacement: %s", got)
	}
	// A failed in-place update leaves the old URL: drifted.
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: "https://new.example.com", Rules: loadRules(t, strings.Replace(baseRules, `threshold: "50"`, `threshold: "60"`, 1))})
	f.api.failNext("triggers.update", &twilioapi.Error{Operation: "triggers.update", Status: 400, Code: 21000, Message: "bad"})
	_, _ = f.b.Reconciler().Reconcile(context.Background())
	states := coverageOf(t, f)["tenant-a"].States
	if n := strings.Count(strings.Join(states, ","), "drifted"); n != 1 || states[0] != "guarded" {
		t.Fatalf("after a failed update: %v, want spend-daily guarded (created anew) and one other drifted", states)
	}
}
