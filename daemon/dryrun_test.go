package daemon_test

import (
	"os"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

const dryRunRules = `rules:
  - name: spend-daily
    accounts: {include: ["tenant-*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`

// waitOutcome waits until the account's incident of rule has an outcome.
func (e *env) waitOutcome(rule, account string) daemon.IncidentJSON {
	e.t.Helper()
	var inc daemon.IncidentJSON
	e.waitFor(rule+" on "+account+" has an outcome", func() bool {
		incs := e.incidents("?rule=" + rule + "&account=" + e.accounts[account].SID)
		if len(incs) == 0 || incs[0].Outcome == "" {
			return false
		}
		inc = incs[0]
		return true
	})
	return inc
}

// TestGlobalDryRun: with dry_run: true in the config, a suspend rule that
// trips records dry_run and writes nothing to Twilio; /config, the metric
// and the start log say so. A reload without it makes the rule act again.
func TestGlobalDryRun(t *testing.T) {
	e := startEnvOpts(t, []string{"tenant-a", "tenant-b"}, dryRunRules, envOpts{extraConfig: "dry_run: true\n"})
	if v := e.metric("usagebreaker_dry_run"); v != 1 {
		t.Errorf("usagebreaker_dry_run = %v, want 1", v)
	}
	if code, body := e.get("/config", false); code != 200 || !strings.HasPrefix(body, config.DryRunBanner+"\n") || !strings.Contains(body, "\ndry_run: true\n") {
		t.Errorf("/config does not say dry run: %d\n%s", code, body)
	}
	if e.logLines("DRY RUN: every rule is a dry run") != 1 || e.logLines(`"by":"config dry_run: true"`) != 1 {
		t.Errorf("the start log does not say dry run:\n%s", e.logs.String())
	}

	e.wait(e.addUsage("tenant-a", "totalprice", "", "60"))
	inc := e.waitOutcome("spend-daily", "tenant-a")
	if inc.Outcome != "dry_run" || !inc.DryRun || !strings.Contains(inc.Detail, "global dry_run") {
		t.Fatalf("incident %+v, want a global dry run", inc)
	}
	if a := e.account("tenant-a"); a.Status != "active" || testenv.SuspendWrites(a) != 0 {
		t.Fatalf("tenant-a %s, %d suspend writes: a dry run wrote to Twilio", a.Status, testenv.SuspendWrites(a))
	}
	if v := e.metric(`usagebreaker_suspensions_total{outcome="dry_run",rule="spend-daily"}`); v != 1 {
		t.Errorf(`suspensions_total{outcome="dry_run"} = %v`, v)
	}

	// Reloaded without dry_run, the rule acts again.
	if err := os.WriteFile(e.cfgPath, []byte(strings.Replace(e.cfgText, "dry_run: true\n", "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := e.post(e.admin, "/-/reload", nil, nil); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if v := e.metric("usagebreaker_dry_run"); v != 0 {
		t.Errorf("usagebreaker_dry_run after the reload = %v, want 0", v)
	}
	if e.logLines("dry run ended by a reload") != 1 {
		t.Error("the reload did not say the dry run ended")
	}
	e.wait(e.addUsage("tenant-b", "totalprice", "", "60"))
	if inc := e.waitOutcome("spend-daily", "tenant-b"); inc.Outcome != "suspended" {
		t.Fatalf("after the reload: %+v", inc)
	}
	if a := e.account("tenant-b"); a.Status != "suspended" {
		t.Fatalf("tenant-b is %s", a.Status)
	}
}

// TestDryRunFlag: run --dry-run (Options.DryRun) makes every rule a dry run
// whatever the config says, also after a reload.
func TestDryRunFlag(t *testing.T) {
	e := startEnvOpts(t, []string{"tenant-a"}, dryRunRules, envOpts{setup: func(e *env) { e.opts.DryRun = true }})
	if e.logLines(`"by":"run --dry-run"`) != 1 {
		t.Errorf("the start log does not say --dry-run:\n%s", e.logs.String())
	}
	if code, body := e.post(e.admin, "/-/reload", nil, nil); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if v := e.metric("usagebreaker_dry_run"); v != 1 {
		t.Errorf("usagebreaker_dry_run = %v, want 1", v)
	}
	e.wait(e.addUsage("tenant-a", "totalprice", "", "75"))
	if inc := e.waitOutcome("spend-daily", "tenant-a"); inc.Outcome != "dry_run" {
		t.Fatalf("incident %+v", inc)
	}
	if a := e.account("tenant-a"); a.Status != "active" || testenv.SuspendWrites(a) != 0 {
		t.Fatalf("tenant-a %s, %d suspend writes", a.Status, testenv.SuspendWrites(a))
	}
}
