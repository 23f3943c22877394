package daemon_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// The whole loop with a velocity rule: the daemon arms a step on start,
// signed step callbacks are recorded and re-armed by the running engine
// (one live step at a time), and a burst suspends the subaccount. The
// time from the usage that completes the last step to the suspension is
// logged (docs/BENCHMARKS.md).
func TestEndToEndVelocity(t *testing.T) {
	e := startEnv(t, []string{"tenant-a"}, `rules:
  - name: sms-velocity
    accounts: {include: ["tenant-*"]}
    usage_category: sms
    trigger_by: count
    velocity: {amount: "100", within: 1h}
    action: suspend
`, nil)
	const name = "usagebreaker:e2e:sms-velocity"
	live := func() (twiliosim.Trigger, bool) {
		a := e.account("tenant-a")
		var out []twiliosim.Trigger
		for _, tr := range a.Triggers {
			if tr.FriendlyName == name {
				out = append(out, tr)
			}
		}
		if len(out) != 1 || out[0].DateFired != nil {
			return twiliosim.Trigger{}, false
		}
		return out[0], true
	}
	first, ok := live()
	if !ok || first.TriggerValue.String() != "25" || first.Recurring != "" {
		t.Fatalf("after the first reconcile: %+v", e.account("tenant-a").Triggers)
	}
	var lastUsage time.Time // on the simulator's clock: the real clock plus what the test advanced
	for i := 0; e.account("tenant-a").Status == "active"; i++ {
		if i > 10 {
			t.Fatal("a burst of 10 steps did not trip")
		}
		e.sim.Advance(time.Minute)
		lastUsage = e.sim.Now()
		ds := e.wait(e.addUsage("tenant-a", "sms", "25", ""))
		if len(ds) != 1 || ds[0].Status != http.StatusOK {
			t.Fatalf("step %d: deliveries %+v", i, ds)
		}
		e.waitFor("the next step armed, or the suspension", func() bool {
			_, ok := live()
			return ok || e.account("tenant-a").Status != "active"
		})
	}
	e.waitFor("suspended", func() bool { return e.account("tenant-a").Status == "suspended" })
	var took time.Duration
	for _, h := range e.account("tenant-a").StatusHistory {
		if h.Status == "suspended" {
			took = h.At.Sub(lastUsage)
		}
	}
	incs := e.incidents("")
	if len(incs) != 1 || incs[0].Rule != "sms-velocity" || !strings.HasPrefix(incs[0].Period, "velocity:") {
		t.Fatalf("incidents %+v", incs)
	}
	e.waitFor("the last re-arm", func() bool { _, ok := live(); return ok })
	t.Logf("velocity trip on the simulator: %s from the last step's usage to the suspension (callback, record, trip, suspend write); incident %s", took, incs[0].Period)
}
