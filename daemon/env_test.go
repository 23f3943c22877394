package daemon_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// env is a simulator on loopback and an in-process daemon configured
// against it, which can be stopped and started again on the same config,
// state and addresses.
type env struct {
	t        *testing.T
	sim      *testenv.Sim
	simURL   string
	dir      string
	cfgPath  string
	cfgText  string
	d        *daemon.Daemon
	admin    string // the admin API's base URL
	public   string // the callbacks' base URL
	logs     *testenv.Buffer
	accounts map[string]twiliosim.Account // by friendly name
	// options, set by a setup func, changes the daemon's options at every start.
	options func(*daemon.Options)

	opts              daemon.Options
	cbAddr, adminAddr string
	quiet             bool
	run               *testenv.Runner
}

// envOpts shape an env (startEnvOpts).
type envOpts struct {
	instance string        // the config's instance ("rel" when empty)
	poll     string        // poll.schedule ("" off)
	timeout  string        // twilio.timeout ("" default)
	watch    time.Duration // daemon.Options.WatchInterval
	shutdown time.Duration // daemon.Options.ShutdownTimeout (default 5s)
	simOpts  twiliosim.Options
	quiet    bool // discard the daemon's logs (floods)
	// config, when set, changes the config before it is written.
	config func(c *testenv.Config)
	// setup runs before the daemon first starts.
	setup func(e *env)
	// install, when set, writes e.cfgText and the rules where it likes and
	// sets e.cfgPath (e.g. through Kubernetes-style symlinks).
	install       func(e *env, ruleText string)
	rulesGlob     string // default rules/*.yaml
	extraConfig   string
	maxConcurrent int
}

// startEnv starts a simulator with a subaccount of each name and a daemon
// (instance e2e) on ruleText; setup runs before the daemon starts.
func startEnv(t *testing.T, names []string, ruleText string, setup func(e *env)) *env {
	t.Helper()
	return startEnvOpts(t, names, ruleText, envOpts{instance: "e2e", setup: setup})
}

// startEnvOpts is startEnv with the config and the daemon shaped by o.
func startEnvOpts(t *testing.T, names []string, ruleText string, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), logs: &testenv.Buffer{}, quiet: o.quiet}
	if o.simOpts.RetryDelay == 0 {
		o.simOpts.RetryDelay = -1
	}
	e.sim = testenv.StartSim(t, o.simOpts)
	e.simURL = e.sim.URL
	e.accounts = e.sim.Subaccounts(names...)
	e.cbAddr, e.adminAddr = testenv.FreeAddr(t), testenv.FreeAddr(t)
	e.admin = "http://" + e.adminAddr
	if o.instance == "" {
		o.instance = "rel"
	}
	if o.rulesGlob == "" {
		o.rulesGlob = "rules/*.yaml"
	}
	if o.maxConcurrent == 0 {
		o.maxConcurrent = 8
	}
	timeout := ""
	if o.timeout != "" {
		timeout = "timeout: " + o.timeout
	}
	p := e.sim.Parent()
	c := testenv.Config{Instance: o.instance, AccountSID: p.SID, AuthToken: p.AuthToken, APIBaseURL: e.simURL,
		MaxConcurrency: o.maxConcurrent, Twilio: timeout,
		Listen: e.cbAddr, PublicURL: "http://" + e.cbAddr, AdminListen: e.adminAddr,
		State: "path: " + filepath.Join(e.dir, "state.db"), RuleFiles: o.rulesGlob, Poll: o.poll,
		AdminTokenFile: filepath.Join(e.dir, "admin-token"), Extra: o.extraConfig}
	if o.config != nil {
		o.config(&c)
	}
	e.public = c.PublicURL
	e.cfgText = c.YAML()
	testenv.WriteFiles(t, e.dir, map[string]string{"admin-token": "s3cretAdminToken\n"})
	if o.install != nil {
		o.install(e, ruleText)
	} else {
		e.cfgPath = filepath.Join(e.dir, "config.yaml")
		testenv.WriteFiles(t, e.dir, map[string]string{"config.yaml": e.cfgText})
		os.MkdirAll(filepath.Join(e.dir, "rules"), 0o755)
		e.writeRules(ruleText)
	}
	if o.shutdown == 0 {
		o.shutdown = 5 * time.Second
	}
	e.opts = daemon.Options{ConfigPath: e.cfgPath, ShutdownTimeout: o.shutdown, WatchInterval: o.watch}
	if o.setup != nil {
		o.setup(e)
	}
	e.restart()
	t.Cleanup(e.stop)
	return e
}

// restart starts the daemon (again) on the same config, state and addresses.
func (e *env) restart() {
	e.t.Helper()
	level := slog.LevelDebug
	if e.quiet {
		level = slog.LevelError
	}
	o := e.opts
	o.Logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: level}))
	// The previous process's sockets may linger a moment.
	o.CallbackListener = testenv.ListenOn(e.t, e.cbAddr)
	o.AdminListener = testenv.ListenOn(e.t, e.adminAddr)
	if e.options != nil {
		e.options(&o)
	}
	d, err := daemon.New(context.Background(), o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.d = d
	e.run = testenv.Run(d.Run)
	e.waitFor("ready", func() bool { return d.Ready() })
}

// stop stops the daemon, showing its logs when the test failed.
func (e *env) stop() {
	if e.run == nil {
		return
	}
	e.run.Stop(e.t)
	e.run = nil
	if e.t.Failed() {
		e.t.Logf("daemon logs:\n%s", e.logs.String())
	}
}

func (e *env) writeRules(text string) {
	if err := os.WriteFile(filepath.Join(e.dir, "rules", "main.yaml"), []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond; the limit is generous because CI is a loaded 2-core machine.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	testenv.WaitFor(e.t, what, 60*time.Second, cond)
}
