package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCheck(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = cmdCheck(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestCheckExample runs check on the real example files.
func TestCheckExample(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "admin-token")
	os.WriteFile(tok, []byte("example-admin-token\n"), 0o600)
	t.Setenv("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
	t.Setenv("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef")
	t.Setenv("USAGEBREAKER_ADMIN_TOKEN_FILE", tok)
	for _, args := range [][]string{
		{"--config", "../../config.example.yaml"},
		{"--config=../../config.example.yaml"},
		{"-config", "../../config.example.yaml"},
	} {
		code, stdout, stderr := runCheck(args...)
		if code != 0 || stdout != "ok: 5 rules\n" || stderr != "" {
			t.Errorf("check %v = %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

func TestCheckInvalid(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("instance: Prod\ntwilio:\n  account_sid: AC0123456789abcdef0123456789abcdef\n  auth_token: abc\n"+
		"server:\n  listn: x\n  public_url: https://breaker.example.com\nrule_files: [rules.yaml]\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte("rules:\n  - name: a\n    accounts: {include: ['*']}\n"+
		"    usage_category: totalprices\n    recurring: daily\n    threshold: 0.1\n    action: suspend\n"), 0o600)
	code, stdout, stderr := runCheck("--config", cfg)
	want := cfg + `:1: instance: "Prod" must be 1 to 16 characters of a-z, 0-9 and "-"` + "\n" +
		cfg + `:6: unknown key "listn" in server (did you mean "listen"?)` + "\n" +
		filepath.Join(dir, "rules.yaml") + `:4: rule "a": unknown usage_category "totalprices" (did you mean "totalprice"?)` + "\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("check = %d, stdout %q, stderr:\n%s\nwant:\n%s", code, stdout, stderr, want)
	}

	code, _, stderr = runCheck("--config", filepath.Join(dir, "missing.yaml"))
	if code != 1 || stderr != filepath.Join(dir, "missing.yaml")+": cannot read: no such file or directory\n" {
		t.Errorf("missing file: %d %q", code, stderr)
	}
}

func TestCheckUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"--bogus"}, {"--config"}, {"--config", "a.yaml", "extra"}} {
		code, stdout, stderr := runCheck(args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, "usage: usagebreaker check --config FILE") {
			t.Errorf("check %v = %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	if code, _, stderr := runCheck(); !strings.HasPrefix(stderr, "usagebreaker check: --config is required\n") {
		t.Errorf("no --config: %d %q", code, stderr)
	}
	if code, _, _ := runCheck("-h"); code != 0 {
		t.Errorf("-h = %d", code)
	}
}
