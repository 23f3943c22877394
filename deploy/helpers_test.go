// Package deploy_test proves the deployment artefacts in this directory and
// the Dockerfile: the container build, the Prometheus alerts (with promtool and
// a real Prometheus), the Grafana dashboard, the Kubernetes manifests and the
// compose setup. There is no Go code to deploy here, only tests.
//
// Tests that need an outside tool (promtool, prometheus, curl, root for a
// chroot) skip with a message when it is missing; with
// USAGEBREAKER_REQUIRE_DEPLOY_TESTS=1 (set by .ci/run) they fail instead, so
// CI cannot pass by skipping them.
package deploy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// requireEnv is the variable that turns "skip: tool missing" into a failure.
const requireEnv = "USAGEBREAKER_REQUIRE_DEPLOY_TESTS"

// root is the repository root (tests run in deploy/).
func root(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(abs, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s: %v", abs, err)
	}
	return abs
}

func repoFile(t testing.TB, rel string) string {
	t.Helper()
	return filepath.Join(root(t), filepath.FromSlash(rel))
}

func readRepoFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unavailable skips the test, or fails it when CI requires every deploy test.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireEnv) == "1" {
		t.Fatalf("%s (%s=1 requires this test to run)", msg, requireEnv)
	}
	t.Skip(msg)
}

// tool finds an outside program or calls unavailable.
func tool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not found in PATH; install it (%s) to run this test", name, install)
	}
	return p
}

// waitFor polls cond until it holds; the limit is generous because CI is a
// loaded 2-core machine.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, limit, cond)
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ---- YAML config editing ----

// setYAML sets the scalar at a dotted path ("server.listen") in a YAML
// document, creating mappings as needed. The deploy tests take the shipped
// config files and change only what a test must (addresses, secret paths).
func setYAML(t testing.TB, doc *yaml.Node, path, value string) {
	t.Helper()
	n := doc
	if n.Kind == yaml.DocumentNode {
		n = n.Content[0]
	}
	keys := strings.Split(path, ".")
	for i, k := range keys {
		if n.Kind != yaml.MappingNode {
			t.Fatalf("setYAML %s: %s is not a mapping", path, strings.Join(keys[:i], "."))
		}
		var next *yaml.Node
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == k {
				next = n.Content[j+1]
				break
			}
		}
		if next == nil {
			next = &yaml.Node{Kind: yaml.MappingNode}
			if i == len(keys)-1 {
				next = &yaml.Node{Kind: yaml.ScalarNode}
			}
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, next)
		}
		n = next
	}
	*n = yaml.Node{Kind: yaml.ScalarNode, Value: value, Style: yaml.DoubleQuotedStyle}
}

// getYAML returns the scalar at a dotted path, or "" when absent.
func getYAML(doc *yaml.Node, path string) string {
	n := doc
	if n.Kind == yaml.DocumentNode {
		n = n.Content[0]
	}
	for _, k := range strings.Split(path, ".") {
		if n.Kind != yaml.MappingNode {
			return ""
		}
		var next *yaml.Node
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == k {
				next = n.Content[j+1]
			}
		}
		if next == nil {
			return ""
		}
		n = next
	}
	return n.Value
}

func parseYAML(t testing.TB, data []byte) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	return &doc
}

func marshalYAML(t testing.TB, doc *yaml.Node) []byte {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- an in-process simulator and daemon ----

// stackOptions describe a daemon run against the simulator on loopback.
type stackOptions struct {
	Config      []byte            // the config file as shipped
	Set         map[string]string // dotted config keys to override (besides the addresses)
	Files       map[string]string // more files, relative to the config's directory
	ParentSID   string            // the simulator's parent credentials (random when empty)
	ParentToken string
}

// stack is a simulator and a daemon configured against it.
type stack struct {
	sim    *testenv.Sim
	simURL string
	d      *daemon.Daemon
	admin  string // http://127.0.0.1:PORT of the admin listener
	public string // the callback listener's base URL
	dir    string
	logs   *testenv.Buffer
}

// startStack starts the simulator and the daemon, with the config's listen
// addresses, public_url, api_base_url and state.path pointed at loopback and
// a temp dir, and waits until the daemon is ready.
func startStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	s := &stack{dir: t.TempDir(), logs: &testenv.Buffer{}}
	s.sim = testenv.StartSim(t, twiliosim.Options{ParentSID: o.ParentSID, ParentAuthToken: o.ParentToken, RetryDelay: -1})
	s.simURL = s.sim.URL

	cbLn, adminLn := testenv.Listen(t), testenv.Listen(t)
	s.public = "http://" + cbLn.Addr().String()
	s.admin = "http://" + adminLn.Addr().String()
	doc := parseYAML(t, o.Config)
	setYAML(t, doc, "server.listen", cbLn.Addr().String())
	setYAML(t, doc, "server.admin_listen", adminLn.Addr().String())
	setYAML(t, doc, "server.public_url", s.public)
	setYAML(t, doc, "twilio.api_base_url", s.simURL)
	setYAML(t, doc, "state.path", filepath.Join(s.dir, "state", "usagebreaker.db"))
	for k, v := range o.Set {
		setYAML(t, doc, k, v)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.WriteFiles(t, s.dir, o.Files)
	cfgPath := filepath.Join(s.dir, "config.yaml")
	if err := os.WriteFile(cfgPath, marshalYAML(t, doc), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := daemon.New(context.Background(), daemon.Options{ConfigPath: cfgPath, Logger: log,
		CallbackListener: cbLn, AdminListener: adminLn, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		cbLn.Close()
		adminLn.Close()
		t.Fatalf("daemon: %v", err)
	}
	s.d = d
	run := testenv.Run(d.Run)
	t.Cleanup(func() {
		run.Stop(t)
		if t.Failed() {
			t.Logf("daemon logs:\n%s", s.logs.String())
		}
	})
	waitFor(t, 60*time.Second, "the daemon to be ready", d.Ready)
	return s
}

// accountStatus is a subaccount's status in the simulator.
func (s *stack) accountStatus(t testing.TB, sid string) string {
	t.Helper()
	for _, a := range s.sim.State().Accounts {
		if a.SID == sid {
			return a.Status
		}
	}
	t.Fatalf("no account %s in the simulator", sid)
	return ""
}
