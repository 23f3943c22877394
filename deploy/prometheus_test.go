package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

const alertsFile = "deploy/prometheus/alerts.yaml"

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleFile struct {
	Groups []struct {
		Name  string      `yaml:"name"`
		Rules []alertRule `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlerts(t *testing.T) []alertRule {
	t.Helper()
	var f ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(readRepoFile(t, alertsFile))))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var out []alertRule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no rules", alertsFile)
	}
	return out
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestAlertRulesContent: the alerts the issue asks for exist; each has a
// severity, a summary, a description and a runbook_url pointing at a section
// of docs/RUNBOOK.md that exists; each has a promtool unit test; and every
// metric they use is exported by the daemon (or named in the contract).
func TestAlertRulesContent(t *testing.T) {
	rules := loadAlerts(t)
	runbook := string(readRepoFile(t, "docs/RUNBOOK.md"))
	anchors := map[string]bool{}
	for _, line := range strings.Split(runbook, "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors[githubAnchor(h)] = true
		}
	}
	// The alerts an operator needs (the list).
	required := map[string]string{
		"UsagebreakerTripped":            "a trip happened",
		"UsagebreakerGuardHeld":          "suspensions held by the guard",
		"UsagebreakerForgedCallbacks":    "forged callbacks spiking",
		"UsagebreakerReconcileStale":     "no successful reconcile for too long",
		"UsagebreakerTwilioErrors":       "Twilio API errors high",
		"UsagebreakerActionsPending":     "actions pending too long",
		"UsagebreakerConfigReloadFailed": "config reload failing",
		"UsagebreakerDown":               "daemon down",
	}
	tests := string(readRepoFile(t, "deploy/prometheus/alerts_test.yaml"))
	var refs []exprRef
	seen := map[string]bool{}
	for _, r := range rules {
		if r.Alert == "" {
			t.Errorf("rule %q is not an alert", r.Record)
			continue
		}
		seen[r.Alert] = true
		refs = append(refs, exprRef{"alert " + r.Alert, r.Expr})
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
		}
		for _, k := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[k]) == "" {
				t.Errorf("%s: no %s annotation", r.Alert, k)
			}
		}
		u, err := url.Parse(r.Annotations["runbook_url"])
		if err != nil || u.Scheme != "https" || !strings.HasSuffix(u.Path, "/docs/RUNBOOK.md") {
			t.Errorf("%s: runbook_url %q does not point at docs/RUNBOOK.md", r.Alert, r.Annotations["runbook_url"])
		} else if u.Fragment != githubAnchor(r.Alert) || !anchors[u.Fragment] {
			t.Errorf("%s: runbook_url anchor #%s: want #%s, a \"## %s\" section in docs/RUNBOOK.md", r.Alert, u.Fragment, githubAnchor(r.Alert), r.Alert)
		}
		if !strings.Contains(tests, "alertname: "+r.Alert+"\n") {
			t.Errorf("%s has no promtool unit test in alerts_test.yaml", r.Alert)
		}
	}
	for name, what := range required {
		if !seen[name] {
			t.Errorf("no alert %s (%s)", name, what)
		}
	}
	checkExported(t, refs)
}

// TestAlertRulesPromtool runs `promtool check rules` and the unit tests.
func TestAlertRulesPromtool(t *testing.T) {
	promtool := tool(t, "promtool", "Debian: apt-get install prometheus")
	dir := repoFile(t, "deploy/prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
	// The compose demo's Prometheus config, with its rule file path mapped
	// to the repository's.
	tmpCfg := t.TempDir()
	composeProm := strings.ReplaceAll(string(readRepoFile(t, "deploy/compose/prometheus.yml")),
		"/etc/prometheus/alerts.yaml", repoFile(t, alertsFile))
	os.WriteFile(filepath.Join(tmpCfg, "prometheus.yml"), []byte(composeProm), 0o644)
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(tmpCfg, "prometheus.yml")).CombinedOutput(); err != nil {
		t.Errorf("promtool check config deploy/compose/prometheus.yml: %v\n%s", err, out)
	}
	if !t.Failed() {
		// A wrong expectation must fail the unit tests, or they test nothing.
		broken := strings.Replace(string(readRepoFile(t, "deploy/prometheus/alerts_test.yaml")),
			`summary: "usagebreaker tripped rule spend-daily"`, `summary: "usagebreaker tripped rule other"`, 1)
		tmp := t.TempDir()
		os.WriteFile(filepath.Join(tmp, "alerts.yaml"), readRepoFile(t, alertsFile), 0o644)
		os.WriteFile(filepath.Join(tmp, "alerts_test.yaml"), []byte(broken), 0o644)
		cmd := exec.Command(promtool, "test", "rules", "alerts_test.yaml")
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("promtool test rules passed with a wrong expectation:\n%s", out)
		}
	}
}

// promServer is a real Prometheus server on loopback.
type promServer struct {
	url  string
	cmd  *exec.Cmd
	logs *testenv.Buffer
	done chan struct{}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln := testenv.Listen(t)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPrometheus starts Prometheus scraping target every second, with
// evaluation every second and the given rule files.
func startPrometheus(t *testing.T, bin, target string, ruleFiles ...string) *promServer {
	t.Helper()
	dir := t.TempDir()
	quoted := make([]string, len(ruleFiles))
	for i, f := range ruleFiles {
		quoted[i] = fmt.Sprintf("%q", f)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%s]
scrape_configs:
  - job_name: usagebreaker
    static_configs:
      - targets: [%q]
`, strings.Join(quoted, ", "), target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var last string
	for attempt := 0; attempt < 3; attempt++ { // a free port can be taken before Prometheus binds it
		p := &promServer{logs: &testenv.Buffer{}, done: make(chan struct{})}
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p.url = "http://" + addr
		p.cmd = exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+addr, "--log.level=info")
		p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("starting prometheus: %v", err)
		}
		go func() { p.cmd.Wait(); close(p.done) }()
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-p.done:
				deadline = time.Time{}
				continue
			default:
			}
			if code, _, err := httpGet(p.url + "/-/ready"); err == nil && code == 200 {
				t.Cleanup(func() { p.stop(t) })
				return p
			}
			time.Sleep(100 * time.Millisecond)
		}
		p.stop(t)
		last = p.logs.String()
	}
	t.Fatalf("prometheus did not become ready; its log:\n%s", last)
	return nil
}

func (p *promServer) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	if t.Failed() {
		t.Logf("prometheus log:\n%s", p.logs.String())
	}
}

// api GETs a Prometheus API path and decodes its data.
func (p *promServer) api(t *testing.T, path string, data any) {
	t.Helper()
	code, body, err := httpGet(p.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil || code != 200 || env.Status != "success" {
		t.Fatalf("GET %s: %d %s (%v)", path, code, body, err)
	}
	if err := json.Unmarshal(env.Data, data); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

// TestPrometheusSeesTrip: a real Prometheus scrapes an in-process daemon with
// deploy/prometheus/alerts.yaml loaded; a simulated subaccount crosses its
// threshold, and UsagebreakerTripped goes pending/firing through
// Prometheus's HTTP API. Every rule must evaluate without error against the
// real metrics.
func TestPrometheusSeesTrip(t *testing.T) {
	bin := tool(t, "prometheus", "Debian: apt-get install prometheus")
	t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
	t.Setenv("TWILIO_AUTH_TOKEN", simParentToken)
	s := startStack(t, stackOptions{Config: []byte(tripConfig), Files: map[string]string{"rules/main.yaml": tripRules},
		ParentSID: simParentSID, ParentToken: simParentToken})
	tenant := s.sim.CreateSubaccount("tenant-a")
	s.d.RequestReconcile()
	waitFor(t, 60*time.Second, "the trigger on tenant-a", func() bool { return len(s.sim.Triggers(tenant.SID)) == 1 })

	p := startPrometheus(t, bin, strings.TrimPrefix(s.admin, "http://"), repoFile(t, alertsFile))

	// The baseline: Prometheus has scraped the trip counter at 0, so the
	// trip is an increase.
	q := "/api/v1/query?query=" + url.QueryEscape(`usagebreaker_incidents_total{job="usagebreaker",rule="spend-daily",source="callback"} == 0`)
	waitFor(t, 90*time.Second, "Prometheus to scrape the incident counter at 0", func() bool {
		var r struct {
			Result []json.RawMessage `json:"result"`
		}
		p.api(t, q, &r)
		return len(r.Result) == 1
	})

	f, err := s.sim.AddUsage(twiliosim.UsageInput{AccountSID: tenant.SID, Category: "sms", Count: decimal.MustParse("700"),
		Usage: decimal.MustParse("700"), Price: decimal.MustParse("55.30")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.sim.Wait(ctx, f...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "tenant-a suspended", func() bool { return s.accountStatus(t, tenant.SID) == "suspended" })

	var tripped promAlert
	waitFor(t, 120*time.Second, "UsagebreakerTripped to go pending or firing in Prometheus", func() bool {
		var r struct {
			Alerts []promAlert `json:"alerts"`
		}
		p.api(t, "/api/v1/alerts", &r)
		for _, a := range r.Alerts {
			if a.Labels["alertname"] == "UsagebreakerTripped" && a.Labels["rule"] == "spend-daily" &&
				(a.State == "pending" || a.State == "firing") {
				tripped = a
				return true
			}
		}
		return false
	})
	t.Logf("Prometheus: %s %s: %s", tripped.Labels["alertname"], tripped.State, tripped.Annotations["description"])
	if tripped.Labels["severity"] == "" || tripped.Labels["job"] != "usagebreaker" ||
		!strings.Contains(tripped.Annotations["summary"], "spend-daily") ||
		!strings.HasSuffix(tripped.Annotations["runbook_url"], "#usagebreakertripped") {
		t.Errorf("the trip alert's labels and annotations: %+v", tripped)
	}

	// Every rule evaluated against the real metrics without an error (a
	// matching problem in an expression would only show here), and nothing
	// else fires for a healthy daemon that just tripped.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Name      string      `json:"name"`
				Health    string      `json:"health"`
				LastError string      `json:"lastError"`
				State     string      `json:"state"`
				Alerts    []promAlert `json:"alerts"`
			} `json:"rules"`
		} `json:"groups"`
	}
	p.api(t, "/api/v1/rules", &rules)
	n := 0
	var names []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			names = append(names, r.Name)
			if r.Health != "ok" || r.LastError != "" {
				t.Errorf("rule %s: health %q, error %q", r.Name, r.Health, r.LastError)
			}
			for _, a := range r.Alerts {
				if a.State == "firing" && r.Name != "UsagebreakerTripped" {
					t.Errorf("unexpected firing alert %s %v", r.Name, a.Labels)
				}
			}
		}
	}
	if want := len(loadAlerts(t)); n != want {
		t.Errorf("Prometheus loaded %d rules (%v), alerts.yaml has %d", n, names, want)
	}
	if !slices.Contains(names, "UsagebreakerTripped") {
		t.Error("UsagebreakerTripped not loaded")
	}

	checkDashboardQueries(t, p)
}

// checkDashboardQueries runs every query of the Grafana dashboard against
// the Prometheus that watched the trip, with the dashboard's variables
// filled in as Grafana would: each must be valid PromQL, and the panels a
// person looks at first must show data.
func checkDashboardQueries(t *testing.T, p *promServer) {
	t.Helper()
	vars := strings.NewReplacer(`$__rate_interval`, "10s", `$job`, "usagebreaker", `$instance`, ".+")
	withData := map[string]bool{}
	for _, pn := range allPanels(loadDashboard(t).Panels) {
		for i, raw := range pn.Targets {
			var tg target
			if err := json.Unmarshal(raw, &tg); err != nil {
				t.Fatal(err)
			}
			q := vars.Replace(tg.Expr)
			code, body, err := httpGet(p.url + "/api/v1/query?query=" + url.QueryEscape(q))
			var r struct {
				Status string `json:"status"`
				Error  string `json:"error"`
				Data   struct {
					Result []json.RawMessage `json:"result"`
				} `json:"data"`
			}
			if err != nil || json.Unmarshal([]byte(body), &r) != nil || code != 200 || r.Status != "success" {
				t.Errorf("panel %q target %d: Prometheus refused %q: %d %s %v", pn.Title, i, q, code, r.Error, err)
				continue
			}
			if len(r.Data.Result) > 0 {
				withData[pn.Title] = true
			}
		}
	}
	for _, title := range []string{"Up", "Version", "Trips (24h)", "Suspended (24h)", "Since last good reconcile", "Config",
		"Callbacks by outcome", "Managed triggers by rule", "Time since last good reconcile", "Requests by operation",
		"Latency p95 by operation", "Config reload status", "Memory and goroutines"} {
		if !withData[title] {
			t.Errorf("dashboard panel %q shows no data after a trip", title)
		}
	}
}
