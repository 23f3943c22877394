package breaker

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/rules"
)

const spendOnly = `rules:
  - name: spend-daily
    accounts:
      include: [%s]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`

func spendRules(t *testing.T, include string) *rules.Set {
	t.Helper()
	return loadRules(t, strings.Replace(spendOnly, "%s", include, 1))
}

// One edit that deletes more than max_deletes owned triggers is
// held: the metric shows it, every notifier is paged once, and a release
// lets them go.
func TestReconcileHoldsMassDeletions(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	for i := 0; i < 5; i++ {
		f.api.addAccount(fmt.Sprintf("tenant-%d", i), "active")
	}
	s := f.b.Settings()
	s.Rules, s.MaxDeletes = spendRules(t, `"tenant-*"`), 3
	f.b.SetSettings(s)
	if res := f.reconcile(t); res.Created != 5 {
		t.Fatalf("created %d", res.Created)
	}
	s.Rules = spendRules(t, `"tenant-0"`) // 4 of 5 to go: more than 3
	f.b.SetSettings(s)
	for i := 0; i < 2; i++ {
		res := f.reconcile(t)
		if res.Deleted != 0 || res.HeldDeletes != 4 || strings.Join(res.HeldRules, ",") != "spend-daily" || f.api.count("triggers.delete") != 0 {
			t.Fatalf("reconcile %d: %+v", i, res)
		}
		if v := testutil.ToFloat64(f.m.DeletesHeld); v != 4 {
			t.Errorf("deletes_held = %v", v)
		}
	}
	for _, n := range []*recNotifier{f.chat, f.pager} {
		evs := n.events()
		if len(evs) != 1 || evs[0].Kind != notify.KindDeletes || evs[0].Deletes.Held != 4 || evs[0].Deletes.Rules[0] != "spend-daily" ||
			!strings.Contains(evs[0].Headline, "TRIGGER DELETIONS HELD") {
			t.Fatalf("%s paged %d times: %+v", n.name, len(evs), evs)
		}
	}
	if n := f.b.Reconciler().ReleaseDeletes(); n != 4 {
		t.Fatalf("released %d", n)
	}
	if res := f.reconcile(t); res.Deleted != 4 || res.HeldDeletes != 0 {
		t.Fatalf("after the release: %+v", res)
	}
	if v := testutil.ToFloat64(f.m.DeletesHeld); v != 0 {
		t.Errorf("deletes_held = %v after the release", v)
	}
	if n := f.b.Reconciler().ReleaseDeletes(); n != 0 {
		t.Errorf("released %d with nothing held", n)
	}
}

// Rules that match no subaccount hold every deletion, however
// few, unless AllowDisarm.
func TestReconcileHoldsDisarmUnlessAllowed(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	f.api.addAccount("tenant-a", "active")
	f.api.addAccount("tenant-b", "active")
	s := f.b.Settings()
	s.Rules = spendRules(t, `"tenant-*"`)
	f.b.SetSettings(s)
	f.reconcile(t)
	s.Rules = spendRules(t, `"tenat-*"`) // a typo: matches nothing
	f.b.SetSettings(s)
	res := f.reconcile(t)
	if res.HeldDeletes != 2 || res.Deleted != 0 || !strings.Contains(res.HeldWhy, "match none") {
		t.Fatalf("%+v", res)
	}
	if v := testutil.ToFloat64(f.m.RuleMatched.WithLabelValues("spend-daily")); v != 0 {
		t.Errorf("rule_matched_subaccounts = %v", v)
	}
	s.AllowDisarm = true
	f.b.SetSettings(s)
	if res := f.reconcile(t); res.HeldDeletes != 0 || res.Deleted != 2 {
		t.Fatalf("with allow_disarm: %+v", res)
	}
}

// Usagebreaker_rule_matched_subaccounts per rule.
func TestRuleMatchedSubaccounts(t *testing.T) {
	f := newFixture(t, baseRules)
	f.api.addAccount("tenant-a", "active")
	f.api.addAccount("tenant-b", "active")
	f.api.addAccount("internal-qa", "active")
	f.api.addAccount("tenant-s", "suspended") // not counted: not guarded now
	res := f.reconcile(t)
	for rule, want := range map[string]float64{"spend-daily": 2, "sms-count": 1, "calls-dry": 2} {
		if v := testutil.ToFloat64(f.m.RuleMatched.WithLabelValues(rule)); v != want || float64(res.Matched[rule]) != want {
			t.Errorf("%s: gauge %v, result %d, want %v", rule, v, res.Matched[rule], want)
		}
	}
}

// A password change reaches the owned triggers of suspended
// subaccounts too (in place, nothing created or deleted), so that a
// reactivation after the grace period does not leave triggers whose
// callbacks get 401.
func TestPasswordChangeReachesSuspendedSubaccounts(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.api.addAccount("tenant-b", "active")
	s := f.b.Settings()
	s.CallbackAuth = &CallbackAuth{Username: "twilio", Password: config.Secret("first-password-0123")}
	f.b.SetSettings(s)
	f.reconcile(t)
	before := map[string]string{}
	for _, tr := range f.api.trig(a.SID) {
		before[tr.FriendlyName] = tr.SID
	}
	if _, err := f.api.SetAccountStatus(context.Background(), a.SID, "suspended"); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t) // the suspended account is looked at once after the status change
	creates, deletes := f.api.count("triggers.create"), f.api.count("triggers.delete")
	s.CallbackAuth = &CallbackAuth{Username: "twilio", Password: config.Secret("second-password-456")}
	f.b.SetSettings(s)
	res := f.reconcile(t)
	if res.Suspended != 1 || f.api.count("triggers.create") != creates || f.api.count("triggers.delete") != deletes {
		t.Fatalf("%+v; creates %d, deletes %d", res, f.api.count("triggers.create")-creates, f.api.count("triggers.delete")-deletes)
	}
	for _, tr := range f.api.trig(a.SID) {
		if before[tr.FriendlyName] != tr.SID || !strings.Contains(tr.CallbackURL, "twilio:second-password-456@") {
			t.Errorf("%s on the suspended account: %s %s", tr.FriendlyName, tr.SID, tr.CallbackURL)
		}
	}
	lists := f.api.count("triggers.list")
	f.reconcile(t)
	if got := f.api.count("triggers.list") - lists; got != 1 {
		t.Errorf("%d lists at steady state, want 1 (tenant-b; the suspended one is up to date)", got)
	}
}
