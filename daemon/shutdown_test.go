package daemon_test

import (
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

func TestShutdownIsBoundedAndKeepsUnfinishedWork(t *testing.T) {
	const shutdown = 300 * time.Millisecond
	e := startEnvOpts(t, tenantNames(3), e2eRules, envOpts{timeout: "2s", shutdown: shutdown})
	// The suspend write hangs at Twilio longer than the shutdown may take.
	if _, err := e.sim.AddFault(twiliosim.Fault{Path: `^/2010-04-01/Accounts/AC[0-9a-f]{32}\.json$`, Method: "POST",
		Delay: 1500 * time.Millisecond, Times: -1}); err != nil {
		t.Fatal(err)
	}
	ds := e.wait(e.spend("tenant-01", "60"))
	if ds[len(ds)-1].Status != 200 {
		t.Fatalf("deliveries = %+v", ds)
	}
	// The callback's commit claimed the trip for this process, which marks
	// the write once it is on its way (it waits at the simulator).
	e.waitFor("the write in flight", func() bool {
		incs := e.incidents("")
		if len(incs) != 1 {
			return false
		}
		for _, a := range incs[0].Actions {
			if a.Kind == "trip" && a.State == "running" && a.WriteSentAt != nil {
				return true
			}
		}
		return false
	})
	start := time.Now()
	e.stop()
	if took := time.Since(start); took > shutdown+10*time.Second {
		t.Fatalf("shutdown took %s with --shutdown-timeout %s", took, shutdown)
	}
	if !strings.Contains(e.logs.String(), "actions still running after the drain timeout") {
		t.Errorf("the cut-off action was not logged")
	}

	// The next start finishes it, once the cancelled write can no longer land
	// (the simulator, like Twilio may, still applies it a moment later).
	e.sim.ClearFaults()
	e.restart()
	e.waitFor("tenant-01 suspended", func() bool { return e.account("tenant-01").Status == "suspended" })
	e.waitFor("the incident done", func() bool {
		incs := e.incidents("")
		return len(incs) == 1 && incs[0].State == "done" && incs[0].Outcome == "suspended"
	})
	if n := testenv.SuspendWrites(e.account("tenant-01")); n != 1 {
		t.Fatalf("%d suspend writes", n)
	}
}
