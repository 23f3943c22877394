package daemon_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// relOpts shape a reliability test environment (startRel).
type relOpts struct {
	poll     string        // poll.schedule ("" off)
	timeout  string        // twilio.timeout ("" default)
	watch    time.Duration // daemon.Options.WatchInterval
	shutdown time.Duration // daemon.Options.ShutdownTimeout (default 5s)
	simOpts  twiliosim.Options
	quiet    bool // discard the daemon's logs (floods)
	// setup runs before the daemon first starts.
	setup func(e *relEnv)
	// install, when set, writes e.cfgText and the rules where it likes and
	// sets e.cfgPath (e.g. through Kubernetes-style symlinks).
	install       func(e *relEnv, ruleText string)
	rulesGlob     string // default rules/*.yaml
	extraConfig   string
	maxConcurrent int
}

// relEnv is an env whose daemon can be stopped and started again on the same
// config, state and addresses.
type relEnv struct {
	*env
	cfgText           string
	opts              daemon.Options
	cbAddr, adminAddr string
	quiet             bool
}

// startRel starts a simulator and a daemon like startEnv, with the config
// shaped by o.
func startRel(t *testing.T, names []string, ruleText string, o relOpts) *relEnv {
	t.Helper()
	e := &relEnv{env: &env{t: t, dir: t.TempDir(), logs: &syncBuffer{}, accounts: map[string]twiliosim.Account{}}}
	if o.simOpts.RetryDelay == 0 {
		o.simOpts.RetryDelay = -1
	}
	e.sim = twiliosim.New(o.simOpts)
	simLn := listen(t)
	simSrv := &http.Server{Handler: e.sim}
	go simSrv.Serve(simLn)
	t.Cleanup(func() { simSrv.Close(); e.sim.Close() })
	e.simURL = "http://" + simLn.Addr().String()
	for _, n := range names {
		e.accounts[n] = e.sim.CreateSubaccount(n)
	}
	cbLn, adminLn := listen(t), listen(t)
	e.public = "http://" + cbLn.Addr().String()
	e.admin = "http://" + adminLn.Addr().String()
	p := e.sim.Parent()
	if o.rulesGlob == "" {
		o.rulesGlob = "rules/*.yaml"
	}
	if o.maxConcurrent == 0 {
		o.maxConcurrent = 8
	}
	os.WriteFile(filepath.Join(e.dir, "admin-token"), []byte("s3cretAdminToken\n"), 0o600)
	timeout := ""
	if o.timeout != "" {
		timeout = "\n  timeout: " + o.timeout
	}
	e.cfgText = fmt.Sprintf(`instance: rel
twilio:
  account_sid: %s
  auth_token: %s
  api_base_url: %s
  max_concurrency: %d%s
server:
  listen: %q
  public_url: %s
  admin_listen: %q
state:
  path: %s
reconcile:
  schedule: "@every 1h"
rule_files: [%q]
poll:
  schedule: %q
admin:
  token_file: %s
%s`, p.SID, p.AuthToken, e.simURL, o.maxConcurrent, timeout, cbLn.Addr().String(), e.public, adminLn.Addr().String(),
		filepath.Join(e.dir, "state.db"), o.rulesGlob, o.poll, filepath.Join(e.dir, "admin-token"), o.extraConfig)
	if o.install != nil {
		o.install(e, ruleText)
	} else {
		e.cfgPath = filepath.Join(e.dir, "config.yaml")
		os.WriteFile(e.cfgPath, []byte(e.cfgText), 0o600)
		os.MkdirAll(filepath.Join(e.dir, "rules"), 0o755)
		e.writeRules(ruleText)
	}
	if o.shutdown == 0 {
		o.shutdown = 5 * time.Second
	}
	e.opts = daemon.Options{ConfigPath: e.cfgPath, ShutdownTimeout: o.shutdown, WatchInterval: o.watch}
	e.cbAddr, e.adminAddr = cbLn.Addr().String(), adminLn.Addr().String()
	e.quiet = o.quiet
	cbLn.Close()
	adminLn.Close()
	if o.setup != nil {
		o.setup(e)
	}
	e.restart()
	t.Cleanup(e.stop)
	return e
}

// restart starts the daemon (again) on the same config, state and addresses.
func (e *relEnv) restart() {
	e.t.Helper()
	var h slog.Handler = slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})
	if e.quiet {
		h = slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelError})
	}
	o := e.opts
	o.Logger = slog.New(h)
	var err error
	// The previous process's sockets may linger a moment.
	for i := 0; ; i++ {
		o.CallbackListener, err = net.Listen("tcp", e.cbAddr)
		if err == nil {
			break
		}
		if i == 100 {
			e.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if o.AdminListener, err = net.Listen("tcp", e.adminAddr); err != nil {
		e.t.Fatal(err)
	}
	d, err := daemon.New(context.Background(), o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.d = d
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- d.Run(ctx) }()
	e.waitFor("ready", func() bool { return d.Ready() })
}

// metric returns a sample's value from /metrics (0 when absent).
func (e *env) metric(sample string) float64 {
	e.t.Helper()
	_, m := e.get("/metrics", false)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	if g := re.FindStringSubmatch(m); g != nil {
		v, _ := strconv.ParseFloat(g[1], 64)
		return v
	}
	return 0
}

// pollNow asks for a poll through the admin API and waits until it ran.
func (e *env) pollNow() {
	e.t.Helper()
	before := e.metric(`usagebreaker_polls_total{result="ok"}`) + e.metric(`usagebreaker_polls_total{result="error"}`)
	code, body := e.post(e.admin, "/api/v1/poll", nil, map[string]string{"Authorization": "Bearer s3cretAdminToken"})
	if code != 202 {
		e.t.Fatalf("poll: %d %s", code, body)
	}
	e.waitFor("the poll", func() bool {
		return e.metric(`usagebreaker_polls_total{result="ok"}`)+e.metric(`usagebreaker_polls_total{result="error"}`) > before
	})
}

func (e *env) requests(op string) int { return e.sim.State().Requests[op] }

func (e *env) logLines(substr string) int { return strings.Count(e.logs.String(), substr) }
