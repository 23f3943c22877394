package daemon_test

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// wantTriggers is what e2eRules want on an active account with this name.
func wantTriggers(name string) []string {
	var w []string
	if strings.HasPrefix(name, "tenant-1") || strings.HasPrefix(name, "internal-") {
		w = append(w, "usagebreaker:rel:calls-notify")
	}
	if strings.HasPrefix(name, "tenant-0") {
		w = append(w, "usagebreaker:rel:sms-monthly")
	}
	if !strings.HasPrefix(name, "internal-") {
		w = append(w, "usagebreaker:rel:spend-daily")
	}
	return w
}

// triggersConverged reports whether every active account has exactly the
// triggers the rules want (no duplicate, none missing), and what differs.
func (e *env) triggersConverged() (bool, string) {
	for _, a := range e.state().Accounts {
		if a.Status != "active" {
			continue
		}
		var got []string
		for _, tr := range a.Triggers {
			got = append(got, tr.FriendlyName)
		}
		sort.Strings(got)
		if want := wantTriggers(a.FriendlyName); strings.Join(got, ",") != strings.Join(want, ",") {
			return false, fmt.Sprintf("%s has %v, want %v", a.FriendlyName, got, want)
		}
	}
	return true, ""
}

func totalRequests(s twiliosim.State) int {
	n := 0
	for _, v := range s.Requests {
		n += v
	}
	return n
}

// TestTwilioFaults runs the daemon against a Twilio that fails 30% of all API
// requests (500, 429, an HTML 502, and answers slower than the client's
// timeout), reproducibly (fixed seed): reconciles converge to exactly the
// desired triggers, every action completes with one suspend write per
// account, and the retries are bounded: no hot loop.
func TestTwilioFaults(t *testing.T) {
	const seed = 20261124
	t0 := time.Now()
	var start twiliosim.State
	e := startEnvOpts(t, tenantNames(49), e2eRules, envOpts{
		poll: "@every 1h", timeout: "400ms", quiet: true,
		simOpts: twiliosim.Options{Seed: seed},
		setup: func(e *env) {
			p := 1 - math.Pow(0.7, 0.25) // four faults, each this likely: 30% of requests fail
			for _, f := range []twiliosim.Fault{
				{Status: 500},
				{Status: 429},
				{Status: 502, HTML: true},
				// Past twilio.timeout: the client gives up, and Twilio may still
				// apply the request a little later (the simulator does, for
				// POSTs); a suspend write that may land is waited for (the
				// write lease, twice the timeout), never repeated before.
				{Delay: 450 * time.Millisecond},
			} {
				f.Path, f.Times, f.Probability = `^/2010-04-01/`, -1, p
				if _, err := e.sim.AddFault(f); err != nil {
					t.Fatal(err)
				}
			}
			start = e.state()
		},
	})
	t.Logf("started in %s", time.Since(t0))

	// Reconciles converge (each is retried account by account; failed ones
	// are finished by the next).
	reconciles := 1
	for {
		ok, why := e.triggersConverged()
		if ok && e.metric(`usagebreaker_reconciles_total{result="ok"}`) > 0 {
			break
		}
		if reconciles == 15 {
			t.Fatalf("not converged after %d reconciles: %s", reconciles, why)
		}
		before := e.metric(`usagebreaker_reconciles_total{result="ok"}`) + e.metric(`usagebreaker_reconciles_total{result="error"}`)
		code, _ := e.post(e.admin, "/api/v1/reconcile", nil, map[string]string{"Authorization": "Bearer s3cretAdminToken"})
		if code != 202 {
			t.Fatalf("reconcile: %d", code)
		}
		e.waitFor("the reconcile", func() bool {
			return e.metric(`usagebreaker_reconciles_total{result="ok"}`)+e.metric(`usagebreaker_reconciles_total{result="error"}`) > before
		})
		reconciles++
	}
	t.Logf("converged after %d reconciles, %s", reconciles, time.Since(t0))

	// Twenty tenants cross their limit at once.
	var firings []twiliosim.Firing
	tripped := map[string]bool{}
	for i := 20; i < 40; i++ {
		name := fmt.Sprintf("tenant-%02d", i)
		tripped[name] = true
		firings = append(firings, e.spend(name, "55")...)
	}
	if len(firings) != 20 {
		t.Fatalf("%d firings", len(firings))
	}
	for _, d := range e.wait(firings) {
		if d.Status != 200 && !d.Retryable() {
			t.Fatalf("callback answered %d: %s", d.Status, d.ResponseBody)
		}
	}
	e.waitFor("every action done", func() bool {
		if e.metric("usagebreaker_actions_pending") != 0 {
			return false
		}
		incs := e.incidents("?limit=1000")
		for _, i := range incs {
			if i.State == "pending" {
				return false
			}
		}
		return len(incs) == 20
	})
	t.Logf("actions done after %s", time.Since(t0))
	for _, i := range e.incidents("?limit=1000") {
		if i.State != "done" || (i.Outcome != "suspended" && i.Outcome != "already_suspended") {
			t.Errorf("incident %+v", i)
		}
	}
	s := e.state()
	for _, a := range s.Accounts {
		want := 0
		if tripped[a.FriendlyName] {
			want = 1
		}
		if n := testenv.SuspendWrites(a); n != want {
			t.Errorf("%s: %d suspend writes, want %d", a.FriendlyName, n, want)
		}
	}

	// Bounded retries. Without faults this work is about: per reconcile 1
	// account list + 50 trigger lists, the first one ~70 creates; per trip a
	// fetch and a write; one poll (1 list, ~60 record reads). Each logical
	// call makes at most 5 attempts; actions retry with a backoff of 1s and up.
	used := map[string]int{}
	for op, n := range s.Requests {
		used[op] = n - start.Requests[op]
	}
	logical := reconciles*51 + 70 + 20*2 + 61 + 1
	t.Logf("requests with 30%% faults: %v (total %d; ~%d logical calls; attempt errors %v)", used, totalRequests(s)-totalRequests(start),
		logical, e.metric(`usagebreaker_action_attempt_errors_total{kind="trip"}`))
	if total := totalRequests(s) - totalRequests(start); total > 3*logical {
		t.Errorf("%d requests for ~%d logical calls: retries are not bounded", total, logical)
	}
	if n := used["accounts.update"]; n > 20*4 {
		t.Errorf("%d status writes for 20 suspensions", n)
	}

	// Idle means idle: nothing is retried in a loop once everything is done.
	// The first poll (after the first reconcile) retries through the faults
	// on its own schedule: it is part of "everything", so wait for it too.
	e.waitFor("the first poll finished", func() bool {
		return e.metric(`usagebreaker_polls_total{result="ok"}`)+e.metric(`usagebreaker_polls_total{result="error"}`) >= 1
	})
	idleState := e.state()
	idle := totalRequests(idleState)
	time.Sleep(3 * time.Second)
	if after := e.state(); totalRequests(after) != idle {
		diff := map[string]int{}
		for op, n := range after.Requests {
			if d := n - idleState.Requests[op]; d != 0 {
				diff[op] = d
			}
		}
		t.Errorf("%d requests while idle: %v", totalRequests(after)-idle, diff)
	}
}
