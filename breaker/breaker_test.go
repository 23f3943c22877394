package breaker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

const publicURL = "https://breaker.example.com"

const baseRules = `rules:
  - name: spend-daily
    accounts:
      include: ["*"]
      exclude: ["internal-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-count
    accounts:
      include: ["tenant-a"]
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 1000
    action: notify
  - name: calls-dry
    accounts:
      include: ["tenant-*"]
    usage_category: calls
    trigger_by: usage
    recurring: alltime
    threshold: "120.5"
    action: suspend
    dry_run: true
`

// loadRules writes a rule file and loads it the way the daemon does.
func loadRules(t *testing.T, text string) *rules.Set {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "r.yaml"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	set, _, err := rules.Load([]string{"r.yaml"}, dir)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	return set
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	api   *fakeAPI
	st    store.Store
	b     *Breaker
	m     *Metrics
	clock *clock
	reg   *prometheus.Registry
}

func newFixture(t *testing.T, ruleText string) *fixture {
	t.Helper()
	f := &fixture{api: newFakeAPI(), clock: &clock{t: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}, reg: prometheus.NewRegistry()}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetClock(f.clock.Now) // as the daemon does: the guard's window and SuspendedSince follow the same clock
	f.st = st
	f.m = NewMetrics(f.reg)
	f.b = New(Options{API: f.api, Store: st, Metrics: f.m, Now: f.clock.Now, RetryMin: time.Second, RetryMax: time.Minute,
		Settings: Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, ruleText)}})
	return f
}

func (f *fixture) reconcile(t *testing.T) ReconcileResult {
	t.Helper()
	res, err := f.b.Reconciler().Reconcile(context.Background())
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	return res
}

func names(ts []twilioapi.Trigger) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.FriendlyName)
	}
	return out
}

func TestReconcileCreatesExactlyTheDesiredTriggers(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	b := f.api.addAccount("tenant-b", "active")
	internal := f.api.addAccount("internal-qa", "active")
	susp := f.api.addAccount("tenant-s", "suspended")
	foreign := f.api.addForeign(a.SID, "my own alert")

	res := f.reconcile(t)
	if res.Created != 5 || res.Deleted != 0 || res.Updated != 0 || res.Active != 3 || res.Subaccounts != 4 {
		t.Fatalf("result = %+v", res)
	}
	want := map[string][]string{
		a.SID:        {"my own alert", "usagebreaker:prod:calls-dry", "usagebreaker:prod:sms-count", "usagebreaker:prod:spend-daily"},
		b.SID:        {"usagebreaker:prod:calls-dry", "usagebreaker:prod:spend-daily"},
		internal.SID: nil,
		susp.SID:     nil,
	}
	for sid, w := range want {
		if got := names(f.api.trig(sid)); strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s triggers = %v, want %v", sid, got, w)
		}
	}
	for _, tr := range f.api.trig(a.SID) {
		switch tr.FriendlyName {
		case "my own alert":
			if tr.SID != foreign.SID || tr.CallbackURL != foreign.CallbackURL {
				t.Errorf("foreign trigger changed: %+v", tr)
			}
		case "usagebreaker:prod:spend-daily":
			if tr.CallbackURL != publicURL+"/twilio/usage-triggers/spend-daily" || tr.CallbackMethod != "POST" ||
				tr.UsageCategory != "totalprice" || tr.TriggerBy != "price" || tr.Recurring != "daily" || tr.TriggerValue.String() != "50" {
				t.Errorf("spend-daily trigger = %+v", tr)
			}
		case "usagebreaker:prod:calls-dry":
			if tr.Recurring != "" || tr.TriggerValue.String() != "120.5" {
				t.Errorf("calls-dry trigger = %+v", tr)
			}
		}
	}
	// A suspended subaccount's triggers are listed once after a start (to
	// bring their callback URLs up to date), then only when the
	// URLs change.
	if f.api.count("triggers.list") != 4 {
		t.Errorf("%d lists, want 3 active + 1 suspended", f.api.count("triggers.list"))
	}
	f.reconcile(t)
	if f.api.count("triggers.list") != 7 {
		t.Errorf("suspended account listed again: %d lists", f.api.count("triggers.list"))
	}
	for rule, n := range map[string]float64{"spend-daily": 2, "sms-count": 1, "calls-dry": 2} {
		if got := testutil.ToFloat64(f.m.ManagedTriggers.WithLabelValues(rule)); got != n {
			t.Errorf("managed_triggers{rule=%s} = %v, want %v", rule, got, n)
		}
	}
	if testutil.ToFloat64(f.m.ReconcileLastOK) == 0 {
		t.Error("last success timestamp not set")
	}
	if f.b.Accounts().Len() != 4 {
		t.Errorf("account cache has %d", f.b.Accounts().Len())
	}
}

func TestReconcileSteadyStateWritesNothing(t *testing.T) {
	f := newFixture(t, baseRules)
	for _, n := range []string{"tenant-a", "tenant-b", "tenant-c", "internal-x"} {
		f.api.addAccount(n, "active")
	}
	f.reconcile(t)
	w, lists := f.api.writes(), f.api.count("triggers.list")
	res := f.reconcile(t)
	if f.api.writes() != w {
		t.Fatalf("second reconcile wrote: %v", f.api.writeSeq()[w:])
	}
	if got := f.api.count("triggers.list") - lists; got != 4 {
		t.Errorf("second reconcile listed triggers %d times, want one per active subaccount (4)", got)
	}
	if res.Unchanged != 7 || res.Created != 0 {
		t.Errorf("result = %+v", res)
	}
	if res.Duration <= 0 {
		t.Errorf("duration = %v", res.Duration)
	}
	if last, ok := f.b.Reconciler().LastReconcile(); !ok || last.Duration != res.Duration {
		t.Errorf("LastReconcile = %+v, %v", last, ok)
	}
}

func TestReconcileReplacesChangedTriggerCreateBeforeDelete(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-b", "active")
	f.reconcile(t)
	before := len(f.api.writeSeq())
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, strings.Replace(baseRules, `threshold: "50"`, `threshold: "75.25"`, 1))})
	res := f.reconcile(t)
	seq := f.api.writeSeq()[before:]
	if strings.Join(seq, ";") != "create usagebreaker:prod:spend-daily;delete usagebreaker:prod:spend-daily" {
		t.Fatalf("writes = %v, want create then delete", seq)
	}
	if res.Created != 1 || res.Deleted != 1 {
		t.Errorf("result = %+v", res)
	}
	for _, tr := range f.api.trig(a.SID) {
		if tr.FriendlyName == "usagebreaker:prod:spend-daily" && tr.TriggerValue.String() != "75.25" {
			t.Errorf("value = %s", tr.TriggerValue)
		}
	}
}

func TestReconcileUpdatesURLInPlace(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-b", "active")
	f.reconcile(t)
	sids := map[string]string{}
	for _, tr := range f.api.trig(a.SID) {
		sids[tr.FriendlyName] = tr.SID
	}
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: "https://new.example.com", Rules: loadRules(t, baseRules)})
	res := f.reconcile(t)
	if res.Updated != 2 || res.Created != 0 || res.Deleted != 0 {
		t.Fatalf("result = %+v", res)
	}
	for _, tr := range f.api.trig(a.SID) {
		if tr.SID != sids[tr.FriendlyName] || !strings.HasPrefix(tr.CallbackURL, "https://new.example.com/twilio/usage-triggers/") {
			t.Errorf("trigger = %+v (was %s)", tr, sids[tr.FriendlyName])
		}
	}
}

func TestReconcileDeletesOwnedNoLongerWantedAndDuplicates(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-a", "active")
	f.api.addForeign(a.SID, "usagebreaker:staging:spend-daily") // another instance's: not ours
	f.reconcile(t)
	// A duplicate of an owned trigger (e.g. from a lost create answer).
	spec := loadRules(t, baseRules).Get("spend-daily").Spec("prod", publicURL)
	if _, err := f.api.CreateTrigger(context.Background(), a.SID, spec); err != nil {
		t.Fatal(err)
	}
	// Drop sms-count and calls-dry from the rules.
	only := baseRules[:strings.Index(baseRules, "  - name: sms-count")]
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, only)})
	res := f.reconcile(t)
	if res.Deleted != 3 {
		t.Fatalf("deleted %d, want 3 (2 unwanted + 1 duplicate): %+v", res.Deleted, res)
	}
	got := names(f.api.trig(a.SID))
	if strings.Join(got, ",") != "usagebreaker:prod:spend-daily,usagebreaker:staging:spend-daily" {
		t.Errorf("triggers = %v", got)
	}
	if v := testutil.ToFloat64(f.m.ManagedTriggers.WithLabelValues("spend-daily")); v != 1 {
		t.Errorf("managed = %v", v)
	}
	if n := testutil.CollectAndCount(f.m.ManagedTriggers); n != 1 {
		t.Errorf("managed_triggers has %d series after rules were removed, want 1", n)
	}
}

func TestReconcileRespectsTriggerCap(t *testing.T) {
	f := newFixture(t, baseRules)
	full := f.api.addAccount("tenant-full", "active")
	ok := f.api.addAccount("tenant-ok", "active")
	for i := 0; i < MaxTriggersPerAccount; i++ {
		f.api.addForeign(full.SID, "theirs")
	}
	res, err := f.b.Reconciler().Reconcile(context.Background())
	if err == nil || !strings.Contains(err.Error(), "Twilio's limit is 1000 per account") || !strings.Contains(err.Error(), full.SID) {
		t.Fatalf("err = %v", err)
	}
	if len(res.Errors) != 1 {
		t.Fatalf("errors = %v", res.Errors)
	}
	if got := len(f.api.trig(ok.SID)); got != 2 {
		t.Errorf("the other account got %d triggers, want 2", got)
	}
	if testutil.ToFloat64(f.m.ReconcileLastOK) != 0 {
		t.Error("a reconcile with errors set the last-success timestamp")
	}
}

func TestReconcileKeepsOldTriggerWhenReplacementFails(t *testing.T) {
	f := newFixture(t, baseRules)
	a := f.api.addAccount("tenant-b", "active")
	f.reconcile(t)
	f.api.failNext("triggers.create", &twilioapi.Error{Operation: "triggers.create", Status: 400, Code: 21000, Message: "bad"})
	f.b.SetSettings(Settings{Instance: "prod", PublicURL: publicURL, Rules: loadRules(t, strings.Replace(baseRules, `threshold: "50"`, `threshold: "60"`, 1))})
	if _, err := f.b.Reconciler().Reconcile(context.Background()); err == nil {
		t.Fatal("no error")
	}
	var vals []string
	for _, tr := range f.api.trig(a.SID) {
		if tr.FriendlyName == "usagebreaker:prod:spend-daily" {
			vals = append(vals, tr.TriggerValue.String())
		}
	}
	if strings.Join(vals, ",") != "50" {
		t.Fatalf("spend-daily triggers = %v, want the old one kept", vals)
	}
	f.reconcile(t) // the next reconcile completes the replacement
	vals = nil
	for _, tr := range f.api.trig(a.SID) {
		if tr.FriendlyName == "usagebreaker:prod:spend-daily" {
			vals = append(vals, tr.TriggerValue.String())
		}
	}
	if strings.Join(vals, ",") != "60" {
		t.Fatalf("spend-daily triggers = %v", vals)
	}
}

func TestReconcileListFailure(t *testing.T) {
	f := newFixture(t, baseRules)
	f.api.failNext("accounts.list", &twilioapi.Error{Operation: "accounts.list", Status: 503})
	if _, err := f.b.Reconciler().Reconcile(context.Background()); err == nil || !strings.Contains(err.Error(), "list subaccounts") {
		t.Fatalf("err = %v", err)
	}
}

func TestReconcileNeverRunsTwiceAtOnce(t *testing.T) {
	f := newFixture(t, baseRules)
	for i := 0; i < 20; i++ {
		f.api.addAccount("tenant-x", "active")
	}
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = f.b.Reconciler().Reconcile(context.Background()) }()
	}
	wg.Wait()
	// Serialised runs converge: exactly 2 triggers per account, never duplicates.
	if got := f.api.count("triggers.create"); got != 40 {
		t.Fatalf("creates = %d, want 40", got)
	}
}
