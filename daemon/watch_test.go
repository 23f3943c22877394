package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const watchEvery = 20 * time.Millisecond

// save writes a file the way editors and config management do: a new file
// renamed over the old one, so the watcher never reads half a file. (It
// copes with in-place writes too, by waiting for two reads to agree, but
// on a loaded machine a write can stall longer than that.)
func save(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func (e *env) saveRules(text string) { save(e.t, filepath.Join(e.dir, "rules", "main.yaml"), text) }

// spendTriggerValues are the values of the spend-daily triggers on active tenants.
func (e *env) spendTriggerValues() map[string]bool {
	vals := map[string]bool{}
	for _, a := range e.state().Accounts {
		if a.Status != "active" {
			continue
		}
		for _, tr := range a.Triggers {
			if strings.HasSuffix(tr.FriendlyName, ":spend-daily") {
				vals[tr.TriggerValue.String()] = true
			}
		}
	}
	return vals
}

func (e *env) waitSpendThreshold(v string) {
	e.t.Helper()
	e.waitFor("spend-daily triggers at "+v, func() bool {
		vals := e.spendTriggerValues()
		return len(vals) == 1 && vals[v]
	})
}

// quietFor checks that nothing matching substr is logged for a while (many
// watch intervals): an absence can only be observed by waiting.
func (e *env) quietFor(substr string) {
	e.t.Helper()
	before := e.logLines(substr)
	time.Sleep(25 * watchEvery)
	if after := e.logLines(substr); after != before {
		e.t.Fatalf("%q logged %d more times with nothing changed", substr, after-before)
	}
}

func TestWatcherReloadsChangedFiles(t *testing.T) {
	e := startEnvOpts(t, tenantNames(4), e2eRules, envOpts{watch: watchEvery})
	e.quietFor("config files changed")

	// A bad save: rejected, the old rules keep running, the gauge drops, the
	// log names FILE:LINE.
	e.saveRules(strings.Replace(e2eRules, `threshold: "50"`, `threshold: "-1"`, 1))
	e.waitFor("the rejected reload", func() bool {
		return e.metric("usagebreaker_config_last_reload_successful") == 0 && e.logLines("config reload rejected") >= 1
	})
	if !strings.Contains(e.logs.String(), `main.yaml:9: rule \"spend-daily\": threshold`) {
		t.Fatalf("the log does not name FILE:LINE:\n%s", e.logs.String())
	}
	if r := e.d.Config().Rules.Get("spend-daily"); r == nil || r.Threshold.String() != "50" {
		t.Fatalf("the old rules are not running: %+v", r)
	}
	e.quietFor("config reload rejected") // the same bad files are not tried again

	// The next good save recovers.
	e.saveRules(strings.Replace(e2eRules, `threshold: "50"`, `threshold: "75"`, 1))
	e.waitFor("the good reload", func() bool { return e.metric("usagebreaker_config_last_reload_successful") == 1 })
	e.waitSpendThreshold("75")
	reloads := e.logLines(`"msg":"config reloaded"`)
	if reloads != 1 {
		t.Fatalf("%d reloads", reloads)
	}

	// Saving the same bytes again is no change.
	e.saveRules(strings.Replace(e2eRules, `threshold: "50"`, `threshold: "75"`, 1))
	e.quietFor(`"msg":"config reloaded"`)

	// A new file matching a rule_files glob is noticed.
	extra := "rules:\n  - name: extra-calls\n    accounts:\n      include: [\"tenant-00\"]\n    usage_category: calls\n    trigger_by: count\n    recurring: daily\n    threshold: 5\n    action: notify\n"
	save(t, filepath.Join(e.dir, "rules", "extra.yaml"), extra)
	e.waitFor("the new rule file", func() bool { return e.d.Config().Rules.Get("extra-calls") != nil })
	e.waitFor("its trigger", func() bool { return len(triggerNames(e.account("tenant-00"))) == 3 })

	// A removed one too.
	os.Remove(filepath.Join(e.dir, "rules", "extra.yaml"))
	e.waitFor("the rule file removed", func() bool { return e.d.Config().Rules.Get("extra-calls") == nil })

	// And a changed secret file: the new admin token works at once.
	save(t, filepath.Join(e.dir, "admin-token"), "anotherAdminToken\n")
	e.waitFor("the new admin token", func() bool { return e.d.Config().Admin.Token.Reveal() == "anotherAdminToken" })

	// SIGHUP-style reloads update the checksum: the watcher does not reload again.
	before := e.logLines(`"msg":"config reloaded"`)
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	e.quietFor("config files changed")
	if n := e.logLines(`"msg":"config reloaded"`); n != before+1 {
		t.Fatalf("%d reloads after one manual reload", n-before)
	}
}

// configMap lays files out like a Kubernetes ConfigMap volume: the data in a
// timestamped directory, "..data" a symlink to it, and each file a symlink
// through "..data". update swaps "..data" in one rename, as the kubelet does.
type configMap struct {
	t   *testing.T
	dir string
	gen int
}

func (c *configMap) update(files map[string]string) {
	c.t.Helper()
	c.gen++
	ts := fmt.Sprintf("..2026_11_24_10_00_%02d.%d", c.gen, c.gen)
	if err := os.MkdirAll(filepath.Join(c.dir, ts), 0o755); err != nil {
		c.t.Fatal(err)
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(c.dir, ts, name), []byte(text), 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(c.dir, "..data"))
	tmp := filepath.Join(c.dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(ts, tmp); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(c.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	if old != "" {
		os.RemoveAll(filepath.Join(c.dir, old))
	}
}

func TestWatcherFollowsKubernetesConfigMapSwaps(t *testing.T) {
	var cfgMap, rulesMap *configMap
	e := startEnvOpts(t, tenantNames(4), e2eRules, envOpts{watch: watchEvery, rulesGlob: "../rules/*.yaml",
		install: func(e *env, ruleText string) {
			cfgMap = &configMap{t: t, dir: filepath.Join(e.dir, "config")}
			rulesMap = &configMap{t: t, dir: filepath.Join(e.dir, "rules")}
			cfgMap.update(map[string]string{"config.yaml": e.cfgText})
			rulesMap.update(map[string]string{"main.yaml": ruleText})
			e.cfgPath = filepath.Join(cfgMap.dir, "config.yaml")
		}})
	e.waitSpendThreshold("50")

	rulesMap.update(map[string]string{"main.yaml": strings.Replace(e2eRules, `threshold: "50"`, `threshold: "60"`, 1)})
	e.waitSpendThreshold("60")

	// A bad ConfigMap: the old set keeps running.
	rulesMap.update(map[string]string{"main.yaml": strings.Replace(e2eRules, "trigger_by: price", "trigger_by: dollars", 1)})
	e.waitFor("the rejected reload", func() bool { return e.metric("usagebreaker_config_last_reload_successful") == 0 })
	if !strings.Contains(e.logs.String(), filepath.Join(rulesMap.dir, "main.yaml")+`:7: rule \"spend-daily\": trigger_by`) {
		t.Fatalf("the log does not name FILE:LINE:\n%s", e.logs.String())
	}
	if e.d.Config().Rules.Get("spend-daily").Threshold.String() != "60" {
		t.Fatal("the old rules are not running")
	}
	// The next good one recovers; a new key in the ConfigMap is a new file.
	extra := "rules:\n  - name: extra-calls\n    accounts:\n      include: [\"tenant-00\"]\n    usage_category: calls\n    trigger_by: count\n    recurring: daily\n    threshold: 5\n    action: notify\n"
	rulesMap.update(map[string]string{"main.yaml": strings.Replace(e2eRules, `threshold: "50"`, `threshold: "65"`, 1), "extra.yaml": extra})
	e.waitFor("the good reload", func() bool { return e.metric("usagebreaker_config_last_reload_successful") == 1 })
	e.waitSpendThreshold("65")
	if e.d.Config().Rules.Get("extra-calls") == nil {
		t.Fatal("the new ConfigMap key was not loaded")
	}
	// The config file's own ConfigMap too (poll.schedule is reloadable).
	cfgMap.update(map[string]string{"config.yaml": strings.Replace(e.cfgText, `schedule: ""`, `schedule: "@every 2h"`, 1)})
	e.waitFor("the config ConfigMap", func() bool { return e.d.Config().Poll.Schedule == "@every 2h" })
	e.quietFor("config files changed")
}
