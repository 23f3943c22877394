package config

import (
	"path/filepath"
	"strings"
	"testing"
)

func loudConfig(extra string) string {
	return `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token: abc123
server:
  public_url: https://breaker.example.com/
rule_files: ["rules/*.yaml"]
` + extra
}

const loudRule = `rules:
  - name: a
    accounts:
      include: %s
      exclude: %s
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 10
    action: suspend
`

func loudRules(include, exclude string) string {
	return strings.Replace(strings.Replace(loudRule, "%s", include, 1), "%s", exclude, 1)
}

// `rules: []` (or rules that can match nothing) would disarm
// every subaccount: refused unless allow_disarm: true.
func TestNoRulesIsRefusedUnlessAllowDisarm(t *testing.T) {
	for name, c := range map[string]struct {
		rules, extra string
		want         string // "" = loads
	}{
		"no rules":                 {"rules: []\n", "", "config.yaml:7: the rule files have no rules"},
		"no rules, allowed":        {"rules: []\n", "allow_disarm: true\n", ""},
		"all excluded":             {loudRules(`["tenant-a"]`, `["tenant-*"]`), "", "config.yaml:7: no rule can match a subaccount"},
		"exclude star":             {loudRules(`["*"]`, `["*"]`), "", "config.yaml:7: no rule can match a subaccount"},
		"exclude star, allowed":    {loudRules(`["*"]`, `["*"]`), "allow_disarm: true\n", ""},
		"a glob may match":         {loudRules(`["tenant-*"]`, `["tenant-a"]`), "", ""},
		"max_deletes 0":            {loudRules(`["*"]`, `[]`), "reconcile:\n  max_deletes: 0\n", "config.yaml:9: reconcile.max_deletes: must be at least 1"},
		"max_deletes not a number": {loudRules(`["*"]`, `[]`), "reconcile:\n  max_deletes: lots\n", "config.yaml:9:"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := writeTree(t, map[string]string{"config.yaml": loudConfig(c.extra), "rules/a.yaml": c.rules})
			cfg, err := Load(filepath.Join(dir, "config.yaml"))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			case c.want == "" && cfg.Reconcile.MaxDeletes != DefaultMaxDeletes:
				t.Errorf("max_deletes = %d", cfg.Reconcile.MaxDeletes)
			}
			if c.want != "" && strings.Contains(c.want, "disarm") && !strings.Contains(err.Error(), "allow_disarm: true") {
				t.Errorf("the message does not say how to disarm on purpose: %v", err)
			}
		})
	}
	dir := writeTree(t, map[string]string{"config.yaml": loudConfig("reconcile:\n  max_deletes: 7\n"), "rules/a.yaml": loudRules(`["*"]`, `[]`)})
	if cfg := mustLoad(t, filepath.Join(dir, "config.yaml")); cfg.Reconcile.MaxDeletes != 7 {
		t.Errorf("max_deletes = %d", cfg.Reconcile.MaxDeletes)
	}
}

// A rule that can match nothing is a warning (FILE:LINE), and a
// lower-case SID is an error, as docs/RULES.md says of a mistyped SID.
func TestRuleThatMatchesNothingWarns(t *testing.T) {
	dir := writeTree(t, map[string]string{"config.yaml": loudConfig(""),
		"rules/a.yaml": loudRules(`["tenant-a"]`, `["tenant-*"]`) + strings.Replace(strings.TrimPrefix(loudRules(`["*"]`, `[]`), "rules:\n"), "name: a", "name: b", 1)})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0].String(), `a.yaml:2: warning: rule "a" matches no subaccount`) {
		t.Errorf("warnings %v", cfg.Warnings)
	}
	dir = writeTree(t, map[string]string{"config.yaml": loudConfig(""), "rules/a.yaml": loudRules(`["ac0123456789abcdef0123456789abcdef"]`, `[]`)})
	if _, err := Load(filepath.Join(dir, "config.yaml")); err == nil || !strings.Contains(err.Error(), "a.yaml:4:") ||
		!strings.Contains(err.Error(), "looks like an account SID") {
		t.Errorf("a lower-case SID: %v", err)
	}
}
