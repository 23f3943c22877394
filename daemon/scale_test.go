package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

const scaleRules = `rules:
  - name: spend-daily
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-monthly
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 20000
    action: suspend
  - name: calls-yearly
    accounts: {include: ["*"]}
    usage_category: calls
    trigger_by: usage
    recurring: yearly
    threshold: "100000"
    action: notify
`

// TestReconcileSteadyStateAtScale reconciles 10,000 subaccounts x 3 rules
// through the real Twilio client and the simulator, then again: the second
// reconcile must make no write call and at most one read per subaccount plus
// the account pages. (USAGEBREAKER_SCALE_ACCOUNTS changes the count.)
func TestReconcileSteadyStateAtScale(t *testing.T) {
	n := 10000
	if v := os.Getenv("USAGEBREAKER_SCALE_ACCOUNTS"); v != "" {
		n, _ = strconv.Atoi(v)
	} else if testing.Short() {
		n = 1000
	}
	sim := testenv.StartSim(t, twiliosim.Options{RetryDelay: -1})
	for i := 0; i < n; i++ {
		sim.CreateSubaccount(fmt.Sprintf("tenant-%05d", i))
	}
	p := sim.Parent()
	api, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: sim.URL, MaxConcurrency: 10})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "r.yaml"), []byte(scaleRules), 0o600)
	set, _, err := rules.Load([]string{"r.yaml"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), filepath.Join(dir, "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := breaker.New(breaker.Options{API: api, Store: st, Fanout: 10,
		Settings: breaker.Settings{Instance: "scale", PublicURL: "https://breaker.example.com", Rules: set}})

	cold, err := b.Reconciler().Reconcile(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cold.Created != 3*n || cold.Active != n {
		t.Fatalf("cold reconcile: %+v", cold)
	}
	before := sim.Requests()
	steady, err := b.Reconciler().Reconcile(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	after := sim.Requests()
	diff := map[string]int{}
	for op, c := range after {
		if d := c - before[op]; d != 0 {
			diff[op] = d
		}
	}
	writes := diff[twiliosim.OpTriggersCreate] + diff[twiliosim.OpTriggersUpdate] + diff[twiliosim.OpTriggersDelete] + diff[twiliosim.OpAccountsUpdate]
	pages := (n + 1 + 999) / 1000 // the parent is listed too
	reads := diff[twiliosim.OpAccountsList] + diff[twiliosim.OpTriggersList] + diff[twiliosim.OpAccountsFetch]
	t.Logf("steady-state reconcile of %d subaccounts x 3 rules: %v in %s", n, diff, steady.Duration)
	if writes != 0 {
		t.Errorf("steady state made %d write calls: %v", writes, diff)
	}
	if reads > n+pages {
		t.Errorf("steady state made %d read calls, want <= %d subaccounts + %d account pages: %v", reads, n, pages, diff)
	}
	if steady.Unchanged != 3*n || steady.Created+steady.Updated+steady.Deleted != 0 {
		t.Errorf("steady reconcile: %+v", steady)
	}
}
