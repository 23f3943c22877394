package daemon_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

func tenantNames(n int) []string {
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("tenant-%02d", i))
	}
	return append(names, "internal-qa")
}

func (e *env) spend(name, price string) []twiliosim.Firing {
	e.t.Helper()
	f, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.accounts[name].SID, Category: "sms",
		Count: decimal.FromInt(1), Usage: decimal.FromInt(1), Price: decimal.MustParse(price)})
	if err != nil {
		e.t.Fatalf("usage on %s: %v", name, err)
	}
	return f
}

func TestPollingCatchesWhatCallbacksMissed(t *testing.T) {
	e := startEnvOpts(t, tenantNames(20), e2eRules, envOpts{poll: "@every 1h"})
	// The first poll ran after the first reconcile and found nothing.
	e.waitFor("the first poll", func() bool { return e.metric(`usagebreaker_polls_total{result="ok"}`) == 1 })
	if n := e.metric(`usagebreaker_incidents_total{rule="spend-daily",source="poll"}`); n != 0 {
		t.Fatalf("incidents from the first poll: %v", n)
	}

	t.Run("one API call per subaccount and period kind", func(t *testing.T) {
		before := e.requests("records.read")
		e.pollNow()
		// tenant-00..09: spend-daily (daily) + sms-monthly (monthly); tenant-10..19:
		// spend-daily and calls-notify (both daily); internal-qa: calls-notify (daily).
		if got, want := e.requests("records.read")-before, 10*2+10+1; got != want {
			t.Fatalf("records.read = %d, want %d", got, want)
		}
	})

	t.Run("callbacks lost in the network", func(t *testing.T) {
		if _, err := e.sim.AddFault(twiliosim.Fault{Target: twiliosim.TargetCallbacks, Drop: true, Times: -1}); err != nil {
			t.Fatal(err)
		}
		defer e.sim.ClearFaults()
		f := e.spend("tenant-03", "50.5")
		if len(f) != 1 {
			t.Fatalf("firings = %+v", f)
		}
		for _, d := range e.wait(f) {
			if d.Status == 200 {
				t.Fatalf("a delivery got through: %+v", d)
			}
		}
		if incs := e.incidents("?account=" + e.accounts["tenant-03"].SID); len(incs) != 0 {
			t.Fatalf("incidents before the poll: %+v", incs)
		}
		e.pollNow()
		e.waitFor("tenant-03 suspended", func() bool { return e.account("tenant-03").Status == "suspended" })
		incs := e.incidents("?account=" + e.accounts["tenant-03"].SID)
		if len(incs) != 1 || incs[0].Source != "poll" || incs[0].Rule != "spend-daily" || incs[0].CurrentValue != "50.5" {
			t.Fatalf("incidents = %+v", incs)
		}
		e.waitFor("the incident done", func() bool {
			i := e.incidents("?account=" + e.accounts["tenant-03"].SID)
			return len(i) == 1 && i[0].Outcome == "suspended"
		})
		if n := e.metric(`usagebreaker_incidents_total{rule="spend-daily",source="poll"}`); n != 1 {
			t.Errorf("incidents_total{poll} = %v", n)
		}
	})

	t.Run("callbacks sent while the daemon was down", func(t *testing.T) {
		e.stop()
		f := e.spend("tenant-04", "75")
		for _, d := range e.wait(f) {
			if d.Status == 200 {
				t.Fatalf("delivered to a stopped daemon: %+v", d)
			}
		}
		e.restart() // the poll after the first reconcile catches it
		e.waitFor("tenant-04 suspended", func() bool { return e.account("tenant-04").Status == "suspended" })
		incs := e.incidents("?account=" + e.accounts["tenant-04"].SID)
		if len(incs) != 1 || incs[0].Source != "poll" {
			t.Fatalf("incidents = %+v", incs)
		}
	})

	t.Run("a callback and a poll land on one incident", func(t *testing.T) {
		f := e.spend("tenant-05", "51")
		if ds := e.wait(f); ds[len(ds)-1].Status != 200 {
			t.Fatalf("deliveries = %+v", ds)
		}
		e.waitFor("tenant-05 suspended", func() bool { return e.account("tenant-05").Status == "suspended" })
		// A notify rule leaves the account active and over its threshold: polls
		// see it every time, and open nothing new.
		in := twiliosim.UsageInput{AccountSID: e.accounts["tenant-12"].SID, Category: "calls", Count: decimal.FromInt(10), Usage: decimal.FromInt(700)}
		fs, err := e.sim.AddUsage(in)
		if err != nil || len(fs) != 1 {
			t.Fatalf("firings %+v %v", fs, err)
		}
		e.wait(fs)
		before := e.metric(`usagebreaker_incidents_total{rule="calls-notify",source="poll"}`)
		e.pollNow()
		e.pollNow()
		if n := e.metric(`usagebreaker_incidents_total{rule="calls-notify",source="poll"}`); n != before {
			t.Errorf("polls opened another incident: %v", n)
		}
		incs := e.incidents("?account=" + e.accounts["tenant-12"].SID)
		if len(incs) != 1 || incs[0].Source != "callback" || incs[0].Firings != 1 {
			t.Fatalf("incidents = %+v", incs)
		}
		if s := testenv.SuspendWrites(e.account("tenant-05")); s != 1 {
			t.Errorf("tenant-05 suspend writes = %d", s)
		}
	})

	t.Run("a subaccount created since the last reconcile", func(t *testing.T) {
		fresh := e.sim.CreateSubaccount("tenant-new")
		e.accounts["tenant-new"] = fresh
		if fs := e.spend("tenant-new", "90"); len(fs) != 0 {
			t.Fatalf("fired without triggers: %+v", fs)
		}
		other := e.sim.CreateSubaccount("tenant-newer") // under any threshold
		e.pollNow()
		e.waitFor("tenant-new suspended", func() bool { return e.account("tenant-new").Status == "suspended" })
		// The poll asked for a reconcile, which armed the other new account.
		e.waitFor("tenant-newer armed", func() bool {
			for _, a := range e.state().Accounts {
				if a.SID == other.SID {
					return len(a.Triggers) == 1 && strings.HasSuffix(a.Triggers[0].FriendlyName, ":spend-daily")
				}
			}
			return false
		})
	})

	if s := e.logs.String(); strings.Contains(s, `"level":"ERROR"`) {
		t.Errorf("errors logged:\n%s", s)
	}
}
