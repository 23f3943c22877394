package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// `incidents` showed the threshold as Twilio's echo.
func TestIncidentsTableShowsTheRulesThreshold(t *testing.T) {
	var b strings.Builder
	printIncidents(&b, []daemon.IncidentJSON{{ID: 1, Rule: "sms", AccountSID: "AC" + strings.Repeat("0", 32),
		TriggerValue: "5.000000", CurrentValue: "5.100000", Outcome: "notified", State: "done"}})
	if !strings.Contains(b.String(), "5.1 / 5 ") || strings.Contains(b.String(), "5.000000") {
		t.Errorf("table:\n%s", b.String())
	}
}

// fakeAdmin is an admin listener on loopback that records what it was asked.
func fakeAdmin(t *testing.T) (string, func() []string) {
	t.Helper()
	var (
		mu   sync.Mutex
		seen []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		switch r.URL.Path {
		case "/-/healthy":
			w.Write([]byte("ok"))
		case "/api/v1/incidents":
			w.Write([]byte("[]"))
		case "/api/v1/guard/release":
			w.Write([]byte(`{"released": 2}`))
		case "/api/v1/reconcile/release":
			w.Write([]byte(`{"released": 7}`))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// USAGEBREAKER_ADMIN_URL on every command, the release command,
// a wrong address said plainly, and a malformed SID as bad usage.
func TestCLIAdminURLFromTheEnvironment(t *testing.T) {
	base, seen := fakeAdmin(t)
	t.Setenv(adminURLEnv, base)
	t.Setenv(tokenEnv, "tok")
	for _, c := range []struct {
		args []string
		out  string
	}{
		{[]string{"incidents"}, "no incidents"},
		{[]string{"release", "guard"}, "released 2 held suspension(s)"},
		{[]string{"release", "deletes"}, "released 7 held trigger deletion(s)"},
		{[]string{"healthcheck"}, "healthy"},
	} {
		var out, errb strings.Builder
		if code := dispatch(c.args, &out, &errb); code != 0 || !strings.Contains(out.String(), c.out) {
			t.Errorf("%v: exit %d, out %q, err %q", c.args, code, out.String(), errb.String())
		}
	}
	want := []string{"GET /api/v1/incidents Bearer tok", "POST /api/v1/guard/release Bearer tok",
		"POST /api/v1/reconcile/release Bearer tok", "GET /-/healthy "}
	if strings.Join(seen(), "|") != strings.Join(want, "|") {
		t.Errorf("requests %q", seen())
	}
	var out, errb strings.Builder
	if code := dispatch([]string{"release", "everything"}, &out, &errb); code != 2 {
		t.Errorf("release everything: exit %d", code)
	}
}

func TestCLIUnreachableAdminSaysWhatItTried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	t.Setenv(tokenEnv, "tok")
	for _, c := range []struct {
		env  string
		args []string
		from string
	}{
		{dead, []string{"incidents"}, "from " + adminURLEnv},
		{"", []string{"release", "guard", "--admin-url", dead}, "from --admin-url"},
		{dead, []string{"healthcheck"}, "from " + adminURLEnv},
	} {
		t.Setenv(adminURLEnv, c.env)
		var out, errb strings.Builder
		code := dispatch(c.args, &out, &errb)
		msg := errb.String()
		if code != 1 || !strings.Contains(msg, dead) || !strings.Contains(msg, c.from) ||
			!strings.Contains(msg, "--admin-url") || !strings.Contains(msg, adminURLEnv) {
			t.Errorf("%v: exit %d, %q", c.args, code, msg)
		}
	}
}

func TestCLIReactivateMalformedSIDIsBadUsage(t *testing.T) {
	base, seen := fakeAdmin(t)
	t.Setenv(tokenEnv, "tok")
	for _, sid := range []string{"AC123", "ac0123456789abcdef0123456789abcdef"} {
		var out, errb strings.Builder
		if code := dispatch([]string{"reactivate", sid, "--reason", "x", "--admin-url", base}, &out, &errb); code != 2 ||
			!strings.Contains(errb.String(), "not an account SID") {
			t.Errorf("reactivate %s: exit %d, %q", sid, code, errb.String())
		}
	}
	if len(seen()) != 0 {
		t.Errorf("requests made: %q", seen())
	}
}

// `run` with parent credentials Twilio refuses exits 1, naming
// the keys to fix.
func TestRunRefusedCredentialsExit1(t *testing.T) {
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1})
	srv := httptest.NewServer(sim)
	t.Cleanup(func() { srv.Close(); sim.Close() })
	sim.CreateSubaccount("tenant-a")
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "rules"), 0o755)
	os.WriteFile(filepath.Join(dir, "rules", "r.yaml"), []byte(`rules:
  - name: spend
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`), 0o644)
	cfg := fmt.Sprintf(`instance: t
twilio:
  account_sid: %s
  auth_token: wrongToken0123456789abcdef012345
  api_base_url: %s
server:
  listen: "127.0.0.1:0"
  public_url: http://127.0.0.1:8080
  admin_listen: "127.0.0.1:0"
state:
  path: state.db
rule_files: ["rules/*.yaml"]
`, sim.Parent().SID, srv.URL)
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	var out, errb strings.Builder
	code := dispatch([]string{"run", "--config", path}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "twilio.account_sid") || !strings.Contains(errb.String(), "twilio.auth_token") {
		t.Fatalf("run: exit %d, stderr %q", code, errb.String())
	}
}

// Through `check`: no rules is refused (exit 1, saying
// how to disarm on purpose); a rule that can match nothing is a FILE:LINE
// warning and check still passes.
func TestCheckDisarmAndMatchNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("instance: prod\ntwilio:\n  account_sid: AC0123456789abcdef0123456789abcdef\n  auth_token: abc\n"+
		"server:\n  public_url: https://breaker.example.com\nrule_files: [\"rules.yaml\"]\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte("rules: []\n"), 0o600)
	code, out, errOut := runCheck("--config", cfg)
	if code != 1 || !strings.Contains(errOut, "config.yaml:7: the rule files have no rules") || !strings.Contains(errOut, "allow_disarm: true") {
		t.Errorf("rules: []: exit %d, %q %q", code, out, errOut)
	}
	os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(`rules:
  - name: a
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 10
    action: suspend
  - name: b
    accounts: {include: ["tenant-a"], exclude: ["tenant-*"]}
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 10
    action: suspend
`), 0o600)
	code, out, errOut = runCheck("--config", cfg)
	if code != 0 || out != "ok: 2 rules\n" || !strings.Contains(errOut, `rules.yaml:9: warning: rule "b" matches no subaccount`) {
		t.Errorf("a rule that matches nothing: exit %d, %q %q", code, out, errOut)
	}
}
