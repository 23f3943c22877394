package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/rules"
)

const (
	testSID  = "AC0123456789abcdef0123456789abcdef"
	ruleYAML = `rules:
  - name: %s
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`
)

// writeTree writes files (slash paths relative to a new temp dir) and
// returns the dir.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s):\n%v", path, err)
	}
	return cfg
}

func TestLoadDefaults(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"config.yaml": `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token: abc123
server:
  public_url: https://breaker.example.com/
rule_files: ["rules/*.yaml"]
`,
		"rules/a.yaml": fmt.Sprintf(ruleYAML, "a"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))

	want := &Config{
		Path:     filepath.Join(dir, "config.yaml"),
		Instance: "prod",
		Twilio: Twilio{
			AccountSID:     testSID,
			AuthToken:      "abc123",
			APIBaseURL:     "https://api.twilio.com",
			MaxConcurrency: 10,
			Timeout:        10 * time.Second,
		},
		Server: Server{
			Listen:      ":8080",
			PublicURL:   "https://breaker.example.com", // trailing slash trimmed
			AdminListen: "127.0.0.1:9111",
		},
		State:     State{Path: filepath.Join(dir, "data", "usagebreaker.db")},
		Reconcile: Reconcile{Schedule: "@every 10m", MaxDeletes: DefaultMaxDeletes},
		RuleFiles: []string{"rules/*.yaml"},
		Poll:      Poll{Schedule: "@every 5m"},
		Admin:     Admin{Token: ""},
		Files:     []string{filepath.Join(dir, "config.yaml"), filepath.Join(dir, "rules", "a.yaml")},
	}
	got := *cfg
	if got.Rules.Len() != 1 || got.Rules.Get("a") == nil {
		t.Errorf("rules: %+v", got.Rules)
	}
	got.Rules = nil
	if !configEqual(&got, want) {
		t.Errorf("config\n got: %#v\nwant: %#v", got, *want)
	}
}

func configEqual(a, b *Config) bool {
	return a.Path == b.Path && a.Instance == b.Instance && a.Twilio == b.Twilio && a.Server == b.Server &&
		a.State == b.State && a.Reconcile == b.Reconcile && slices.Equal(a.RuleFiles, b.RuleFiles) &&
		a.Poll == b.Poll && a.Admin == b.Admin && slices.Equal(a.Files, b.Files)
}

func TestLoadEverything(t *testing.T) {
	t.Setenv("UB_INSTANCE", "staging-2")
	t.Setenv("UB_SID", testSID)
	t.Setenv("UB_PORT", "9000")
	t.Setenv("UB_EMPTY", "")
	stateDir := t.TempDir()
	dir := writeTree(t, map[string]string{
		"config.yaml": `# every key
instance: ${UB_INSTANCE}
twilio:
  account_sid: "${UB_SID}"
  auth_token_file: secrets/twilio-token
  api_base_url: http://127.0.0.1:${UB_PORT}/
  max_concurrency: 3
  timeout: 2500ms
server:
  listen: "0.0.0.0:18080"
  public_url: https://breaker.example.com/
  admin_listen: "127.0.0.1:19111"
state:
  path: ` + filepath.Join(stateDir, "ub.db") + `
reconcile:
  schedule: "*/15 * * * *"
rule_files:
  - rules/a.yaml
  - rules/*.yaml
  - more/*.yml
poll:
  schedule: ""
admin:
  token: "pa$$word$5${UB_EMPTY}-x"
`,
		"secrets/twilio-token": "tok123\n\n",
		"rules/a.yaml":         fmt.Sprintf(ruleYAML, "a"),
		"rules/b.yaml":         fmt.Sprintf(ruleYAML, "b"),
		"more/c.yml":           fmt.Sprintf(ruleYAML, "c"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	want := &Config{
		Path:     filepath.Join(dir, "config.yaml"),
		Instance: "staging-2",
		Twilio: Twilio{
			AccountSID:     testSID,
			AuthToken:      "tok123", // trailing newlines trimmed
			APIBaseURL:     "http://127.0.0.1:9000",
			MaxConcurrency: 3,
			Timeout:        2500 * time.Millisecond,
		},
		Server: Server{
			Listen:      "0.0.0.0:18080",
			PublicURL:   "https://breaker.example.com",
			AdminListen: "127.0.0.1:19111",
		},
		State:     State{Path: filepath.Join(stateDir, "ub.db")},
		Reconcile: Reconcile{Schedule: "*/15 * * * *", MaxDeletes: DefaultMaxDeletes},
		RuleFiles: []string{"rules/a.yaml", "rules/*.yaml", "more/*.yml"},
		Poll:      Poll{Schedule: ""}, // off
		Admin:     Admin{Token: "pa$word$5-x"},
		Files: []string{
			filepath.Join(dir, "config.yaml"),
			filepath.Join(dir, "secrets", "twilio-token"),
			filepath.Join(dir, "rules", "a.yaml"),
			filepath.Join(dir, "rules", "b.yaml"),
			filepath.Join(dir, "more", "c.yml"),
		},
	}
	got := *cfg
	var names []string
	for _, r := range got.Rules.Rules {
		names = append(names, r.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Errorf("rules %v, want [a b c] (each file once, in pattern order)", names)
	}
	got.Rules = nil
	if !configEqual(&got, want) {
		t.Errorf("config\n got: %#v\nwant: %#v", got, *want)
	}
	if tok := cfg.Twilio.AuthToken.Reveal(); tok != "tok123" {
		t.Errorf("auth token %q", tok)
	}
}

// TestLoadRelativePaths: relative config paths stay relative in messages and
// Rule.File; rule globs and secret files are relative to the config file's
// directory; state.path is resolved and absolute.
func TestLoadRelativePaths(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"deploy/config.yaml": `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token_file: token
server:
  public_url: https://breaker.example.com
state:
  path: ./state/db.sqlite
rule_files: ["rules/*.yaml"]
`,
		"deploy/token":        "abc\n",
		"deploy/rules/a.yaml": fmt.Sprintf(ruleYAML, "a"),
		"deploy/rules/b.yaml": "rules:\n  - name: b\n",
	})
	t.Chdir(dir)
	_, err := Load("deploy/config.yaml")
	want := strings.Join([]string{
		`deploy/rules/b.yaml:2: rule "b": accounts is required`,
		`deploy/rules/b.yaml:2: rule "b": usage_category is required`,
		`deploy/rules/b.yaml:2: rule "b": recurring is required`,
		`deploy/rules/b.yaml:2: rule "b": threshold is required`,
		`deploy/rules/b.yaml:2: rule "b": action is required`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}

	os.WriteFile("deploy/rules/b.yaml", []byte(fmt.Sprintf(ruleYAML, "b")), 0o600)
	cfg := mustLoad(t, "deploy/config.yaml")
	if cfg.Rules.Get("a").File != filepath.FromSlash("deploy/rules/a.yaml") {
		t.Errorf("Rule.File = %q", cfg.Rules.Get("a").File)
	}
	if want := filepath.Join(dir, "deploy", "state", "db.sqlite"); cfg.State.Path != want {
		t.Errorf("state.path %q, want %q", cfg.State.Path, want)
	}
	if cfg.Path != filepath.Join(dir, "deploy", "config.yaml") {
		t.Errorf("Path %q", cfg.Path)
	}
	for _, f := range cfg.Files {
		if !filepath.IsAbs(f) {
			t.Errorf("Files has relative %q", f)
		}
	}
	if len(cfg.Files) != 4 || cfg.Twilio.AuthToken.Reveal() != "abc" {
		t.Errorf("Files %v, token %q", cfg.Files, cfg.Twilio.AuthToken.Reveal())
	}
}

func TestLoadEnvExpansion(t *testing.T) {
	t.Setenv("UB_A", "${UB_B}") // values are not expanded again
	t.Setenv("UB_B", "bee")
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"$$", "$"},
		{"$$$$", "$$"},
		{"$${UB_B}", "${UB_B}"},
		{"$5", "$5"},
		{"a$", "a$"},
		{"${UB_B}${UB_B}", "beebee"},
		{"x${UB_A}y", "x${UB_B}y"},
		{"$$${UB_B}", "$bee"},
	} {
		dir := writeTree(t, map[string]string{
			"config.yaml": "instance: prod\ntwilio: {account_sid: " + testSID + ", auth_token: abc}\n" +
				"server: {public_url: 'https://x.example.com'}\nrule_files: [r.yaml]\nadmin:\n  token: '" + tc.in + "'\n",
			"r.yaml": fmt.Sprintf(ruleYAML, "a"),
		})
		cfg, err := Load(filepath.Join(dir, "config.yaml"))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := cfg.Admin.Token.Reveal(); got != tc.want {
			t.Errorf("%q expanded to %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestLoadSecretFileAbsolute(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "admin")
	os.WriteFile(secret, []byte("s3cr3t-token\r\n"), 0o600)
	dir := writeTree(t, map[string]string{
		"config.yaml": "instance: prod\ntwilio: {account_sid: " + testSID + ", auth_token: abc}\n" +
			"server: {public_url: 'https://x.example.com'}\nrule_files: [r.yaml]\nadmin:\n  token_file: " + secret + "\n",
		"r.yaml": fmt.Sprintf(ruleYAML, "a"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	if cfg.Admin.Token.Reveal() != "s3cr3t-token" {
		t.Errorf("token %q", cfg.Admin.Token.Reveal())
	}
	if !slices.Contains(cfg.Files, secret) {
		t.Errorf("Files %v lacks %s", cfg.Files, secret)
	}
}

func TestLoadMissingFile(t *testing.T) {
	cfg, err := Load("testdata/no-such.yaml")
	if want := "testdata/no-such.yaml: cannot read: no such file or directory"; cfg != nil || err == nil || err.Error() != want {
		t.Errorf("got %v, %v; want %s", cfg, err, want)
	}
}

// TestLoadCollectsAll: every problem in the config and its rule files, sorted
// by file and line, not just the first.
func TestLoadCollectsAll(t *testing.T) {
	unsetEnv(t, "UB_UNSET")
	_, err := Load("testdata/many-errors.yaml")
	want := `testdata/many-errors.yaml:1: instance: "Prod!" must be 1 to 16 characters of a-z, 0-9 and "-"
testdata/many-errors.yaml:2: twilio.auth_token is required (or twilio.auth_token_file)
testdata/many-errors.yaml:3: twilio.account_sid: environment variable UB_UNSET is not set
testdata/many-errors.yaml:4: twilio.max_concurrency: "ten" is not an integer
testdata/many-errors.yaml:5: unknown key "listn" in twilio
testdata/many-errors.yaml:8: server.tls: is empty: give cert_file and key_file, or remove server.tls
testdata/many-errors.yaml:9: server.public_url: "ftp://x" is not an absolute http or https URL
testdata/many-errors.yaml:12: rule_files[1]: "nothing/*.yaml" matches no files
testdata/many-errors.yaml:13: guard.window needs guard.max_suspensions
testdata/badrules/bad.yaml:5: rule "sms-spend-daily": unknown usage_category "totalprices" (did you mean "totalprice"?)`
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 10 || errs[2].File != "testdata/many-errors.yaml" || errs[2].Line != 3 {
		t.Errorf("Errors: %#v", errs)
	}
}

func TestFriendlyNameLimit(t *testing.T) {
	set := rules.NewSet([]*rules.Rule{{Name: "a-rule-name-that-is-32-chars-lng", File: "r.yaml", Line: 7}})
	if errs := checkFriendlyNames("sixteen-chars-16", set); len(errs) != 0 {
		t.Errorf("62 characters rejected: %v", errs)
	}
	if errs := checkFriendlyNames("eighteen-chars-xyz", set); len(errs) != 0 {
		t.Errorf("64 characters rejected: %v", errs)
	}
	errs := checkFriendlyNames("nineteen-chars-xyz0", set)
	want := `r.yaml:7: rule "a-rule-name-that-is-32-chars-lng": trigger FriendlyName "usagebreaker:nineteen-chars-xyz0:a-rule-name-that-is-32-chars-lng" is 65 characters; Twilio allows at most 64`
	if errs.Error() != want {
		t.Errorf("got %v\nwant %s", errs, want)
	}
}

func exampleEnv(t *testing.T) {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "admin-token")
	os.WriteFile(tok, []byte("example-admin-token\n"), 0o600)
	t.Setenv("TWILIO_ACCOUNT_SID", testSID)
	t.Setenv("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef")
	t.Setenv("USAGEBREAKER_ADMIN_TOKEN_FILE", tok)
}

func TestLoadExample(t *testing.T) {
	exampleEnv(t)
	cfg := mustLoad(t, "../config.example.yaml")
	if cfg.Rules.Len() != 5 || cfg.Instance != "prod" || cfg.Admin.Token.Reveal() != "example-admin-token" ||
		cfg.Server.AdminListen != "127.0.0.1:9111" || cfg.Server.PublicURL != "https://breaker.example.com" {
		t.Errorf("example config: %+v", cfg)
	}
	repo, _ := filepath.Abs("..")
	if want := filepath.Join(repo, "data", "usagebreaker.db"); cfg.State.Path != want {
		t.Errorf("state.path %q, want %q", cfg.State.Path, want)
	}
	if f := cfg.Rules.Rules[0].File; f != filepath.FromSlash("../rules/example.yaml") {
		t.Errorf("rule file %q", f)
	}
}

func TestRedacted(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"config.yaml": "instance: prod\ntwilio: {account_sid: " + testSID + ", auth_token: TwilioTokenValue42}\n" +
			"server: {public_url: 'https://x.example.com'}\nrule_files: [r.yaml]\nadmin:\n  token: AdminTokenValue42\n",
		"r.yaml": fmt.Sprintf(ruleYAML, "a"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "TwilioTokenValue42") || strings.Contains(s, "AdminTokenValue42") {
		t.Fatalf("Redacted shows a secret:\n%s", s)
	}
	var m map[string]any
	if err := yaml.Unmarshal(out, &m); err != nil {
		t.Fatalf("Redacted is not YAML: %v\n%s", err, s)
	}
	tw := m["twilio"].(map[string]any)
	if tw["auth_token"] != "<secret>" || tw["timeout"] != "10s" || tw["max_concurrency"] != 10 || tw["account_sid"] != testSID {
		t.Errorf("twilio: %v", tw)
	}
	if m["admin"].(map[string]any)["token"] != "<secret>" || m["poll"].(map[string]any)["schedule"] != "@every 5m" ||
		m["instance"] != "prod" || m["server"].(map[string]any)["admin_listen"] != "127.0.0.1:9111" {
		t.Errorf("redacted:\n%s", s)
	}

	// An empty secret (admin API off) shows as "".
	cfg.Admin.Token = ""
	out, _ = cfg.Redacted()
	if !strings.Contains(string(out), "token: \"\"") {
		t.Errorf("empty admin token:\n%s", out)
	}
	if _, err := (*Config)(nil).Redacted(); err == nil {
		t.Error("nil Config redacted")
	}
}

func TestSecretNeverPrints(t *testing.T) {
	const value = "hunter2SecretValue"
	s := Secret(value)
	cfg := &Config{Instance: "prod", Twilio: Twilio{AuthToken: s}, Admin: Admin{Token: s}}

	var outs []string
	for _, verb := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%X", "%d", "%10s", "%-20v"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, *cfg), fmt.Sprintf(verb, &s))
	}
	outs = append(outs, fmt.Sprint(s), fmt.Sprintln(cfg), s.String(), s.GoString(), fmt.Sprint([]Secret{s}), fmt.Sprint(map[string]Secret{"k": s}))

	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("m", "secret", s, "config", cfg, slog.Any("ptr", &s))
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("m", "secret", s, "config", cfg)
	outs = append(outs, buf.String())

	for _, v := range []any{s, cfg, map[string]any{"s": s}} {
		j, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		y, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(j), string(y))
	}
	txt, _ := s.MarshalText()
	outs = append(outs, string(txt))

	for _, o := range outs {
		if strings.Contains(o, value) || strings.Contains(o, fmt.Sprintf("%x", value)) {
			t.Errorf("secret printed: %s", o)
		}
	}
	for _, want := range []string{"<secret>", `"<secret>"`, `config.Secret("<secret>")`} {
		if !slices.ContainsFunc(outs, func(o string) bool { return strings.Contains(o, want) }) {
			t.Errorf("no output shows %s", want)
		}
	}
	if fmt.Sprintf("%#v", s) != `config.Secret("<secret>")` || fmt.Sprintf("%q", s) != `"<secret>"` || fmt.Sprint(s) != "<secret>" {
		t.Errorf("formats: %#v %q %v", s, s, s)
	}
	var fromJSON string
	if j, _ := json.Marshal(s); json.Unmarshal(j, &fromJSON) != nil || fromJSON != "<secret>" {
		t.Errorf("json %s", j)
	}
	if !strings.Contains(buf.String(), `"secret":"<secret>"`) {
		t.Errorf("slog JSON: %s", buf.String())
	}
	if s.Reveal() != value {
		t.Error("Reveal")
	}
	if e := Secret(""); fmt.Sprint(e) != "" || e.String() != "" {
		t.Errorf("empty secret prints %q", fmt.Sprint(e))
	}
}

func FuzzLoadConfig(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	seeds = append(seeds, "testdata/many-errors.yaml", "../config.example.yaml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	dir := f.TempDir()
	os.MkdirAll(filepath.Join(dir, "rules"), 0o755)
	os.WriteFile(filepath.Join(dir, "rules", "ok.yaml"), []byte(fmt.Sprintf(ruleYAML, "a")), 0o600)
	os.WriteFile(filepath.Join(dir, "token"), []byte("abc123\n"), 0o600)
	path := filepath.Join(dir, "config.yaml")
	env := map[string]string{"TWILIO_ACCOUNT_SID": testSID, "TWILIO_AUTH_TOKEN": "abc", "USAGEBREAKER_ADMIN_TOKEN_FILE": "token"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := load(path, data, lookup)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for _, p := range errs {
				if p.File == "" || p.Msg == "" || p.Line < 0 || strings.Contains(p.Msg, "\n") {
					t.Fatalf("bad problem %#v", p)
				}
			}
			if cfg != nil {
				t.Fatal("config with an error")
			}
			return
		}
		if cfg.Rules.Len() == 0 || cfg.Twilio.AuthToken == "" || cfg.Server.PublicURL == "" ||
			!instanceRE.MatchString(cfg.Instance) || cfg.Twilio.MaxConcurrency < 1 || cfg.Twilio.Timeout <= 0 {
			t.Fatalf("invalid config accepted: %#v", cfg)
		}
		out, err := cfg.Redacted()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), cfg.Twilio.AuthToken.Reveal()) && len(cfg.Twilio.AuthToken) > 8 {
			t.Fatalf("Redacted shows the auth token:\n%s", out)
		}
	})
}
