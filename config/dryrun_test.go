package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

func TestDryRun(t *testing.T) {
	base := "instance: prod\ntwilio: {account_sid: " + testSID + ", auth_token: TwilioTokenValue42}\n" +
		"server: {public_url: 'https://x.example.com'}\nrule_files: [r.yaml]\n"
	for _, c := range []struct {
		extra string
		want  bool
	}{{"", false}, {"dry_run: false\n", false}, {"dry_run: true\n", true}} {
		dir := writeTree(t, map[string]string{"config.yaml": base + c.extra, "r.yaml": fmt.Sprintf(ruleYAML, "a")})
		cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
		if cfg.DryRun != c.want {
			t.Errorf("%q: DryRun = %v", c.extra, cfg.DryRun)
		}
		out, err := cfg.Redacted()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.HasPrefix(string(out), DryRunBanner+"\n") && strings.Contains(string(out), "\ndry_run: true\n"); got != c.want {
			t.Errorf("%q: /config says dry run: %v\n%s", c.extra, got, out)
		}
	}
	dir := writeTree(t, map[string]string{"config.yaml": base + "dry_run: yes please\n", "r.yaml": fmt.Sprintf(ruleYAML, "a")})
	_, err := Load(filepath.Join(dir, "config.yaml"))
	if err == nil || !strings.Contains(err.Error(), "config.yaml:5: dry_run:") {
		t.Fatalf("bad dry_run: %v", err)
	}
}
