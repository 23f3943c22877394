// Package daemon assembles usagebreaker from a config file: the store, the
// Twilio client, the breaker, the two listeners, the schedules and reload. It
// is what `usagebreaker run` and `usagebreaker demo` start; cmd/usagebreaker
// stays a thin layer of flags and signals.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/robfig/cron/v3"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/internal/version"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
	"github.com/usagebreaker/usagebreaker/webhook"
)

// Options configure a Daemon beyond its config file.
type Options struct {
	ConfigPath string
	Logger     *slog.Logger
	// CallbackListener and AdminListener, when set, are used instead of
	// listening on server.listen and server.admin_listen (tests, the demo).
	CallbackListener net.Listener
	AdminListener    net.Listener
	// TwilioTransport, when set, is the base HTTP transport to Twilio.
	TwilioTransport http.RoundTripper
	// ShutdownTimeout bounds the graceful shutdown (default 10s).
	ShutdownTimeout time.Duration
	// Now is the clock for periods and retries (default time.Now).
	Now func() time.Time

	// The callback listener's edge (edge.go, tls.go). TLSCheckInterval is how
	// often the certificate files are checked (default 5s; negative: on every
	// handshake); RejectLimit the per-client limit on rejected requests
	// (zero: webhook.DefaultRejectLimit); CallbackAuthGrace how long earlier
	// basic_auth credentials stay accepted after a change reached every
	// trigger (default 10m; negative: not at all).
	TLSCheckInterval  time.Duration
	RejectLimit       webhook.RejectLimit
	CallbackAuthGrace time.Duration
	// WatchInterval is how often the config, rule and secret files are
	// checked for changes (by checksum) to reload them; 0 turns it off.
	WatchInterval time.Duration
	// DryRun makes every rule a dry run whatever the config says (run
	// --dry-run; dryrun.go).
	DryRun bool
	// AuthProbeInterval is how often the parent credentials are tried while
	// running (default DefaultAuthProbeInterval).
	AuthProbeInterval time.Duration
	// Replica names this replica in logs, metrics and claims (--replica;
	// default: the host name).
	Replica string
}

// Daemon is a running usagebreaker.
type Daemon struct {
	opts     Options
	log      *slog.Logger
	reg      *prometheus.Registry
	st       store.Store
	api      twilioapi.API
	br       *breaker.Breaker
	bm       *breaker.Metrics
	cfg      atomic.Pointer[config.Config]
	ready    atomic.Bool
	reloadMu sync.Mutex

	reconcileReq chan struct{}
	cron         *cron.Cron
	cronMu       sync.Mutex
	cronIDs      []cron.EntryID

	cbLn, adminLn   net.Listener
	cbSrv, adminSrv *http.Server

	edge *edgeState // TLS, Basic auth, rejected-request limits (edge.go)

	reloadOK      prometheus.Gauge
	reloadOKTime  prometheus.Gauge
	reconcileRuns *prometheus.CounterVec

	bg  background // polling fallback and file watcher
	rep *replicas  // leases and the state database's health (replicas.go)
}

// New loads the config, opens the state and builds everything; it starts
// nothing. A bad config or an unusable state gives an error naming why.
func New(ctx context.Context, o Options) (*Daemon, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	d := &Daemon{opts: o, log: o.Logger, reg: prometheus.NewRegistry(), reconcileReq: make(chan struct{}, 1)}
	cfg, err := d.loadConfig()
	if err != nil {
		return nil, err
	}
	d.cfg.Store(cfg)
	d.registerOwnMetrics()
	d.registerDryRun()
	if err := d.setupEdge(cfg); err != nil {
		return nil, err
	}
	d.initBackground(d.reg)
	d.remember(d.snapshot(cfg))

	var st *store.DB
	if pg := cfg.State.Postgres; pg != nil {
		// Several replicas share the database: no lock file.
		if st, err = store.OpenPostgres(ctx, pg.DSN.Reveal()); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		d.st = st
	} else {
		lock, err := lockState(cfg.State.Path)
		if err != nil {
			return nil, err
		}
		if st, err = store.Open(ctx, cfg.State.Path); err != nil {
			lock.Close()
			return nil, fmt.Errorf("state: %w", err)
		}
		d.st = &lockedStore{Store: st, lock: lock}
	}
	st.SetClock(o.Now) // the guard's window follows the daemon's clock
	d.rep = newReplicas(d.reg, o.Replica, st)
	if d.rep.shared {
		d.log = d.log.With("replica", d.rep.name)
		o.Logger = d.log
	}
	api, err := twilioapi.New(twilioapi.Options{
		AccountSID:     cfg.Twilio.AccountSID,
		AuthToken:      cfg.Twilio.AuthToken.Reveal(),
		BaseURL:        cfg.Twilio.APIBaseURL,
		MaxConcurrency: cfg.Twilio.MaxConcurrency,
		Timeout:        cfg.Twilio.Timeout,
		Registerer:     d.reg,
		Logger:         o.Logger.With("component", "twilio"),
		Transport:      o.TwilioTransport,
	})
	if err != nil {
		d.st.Close()
		return nil, fmt.Errorf("twilio client: %w", err)
	}
	d.api = api
	settings, err := d.fullSettings(cfg) // with the notifiers (reactivation.go)
	if err != nil {
		d.st.Close()
		return nil, err
	}
	d.bm = breaker.NewMetrics(d.reg)
	d.br = breaker.New(breaker.Options{
		API:      api,
		Store:    st,
		Settings: settings,
		Logger:   o.Logger,
		Metrics:  d.bm,
		Now:      o.Now,
		Fanout:   cfg.Twilio.MaxConcurrency,
		Workers:  cfg.Twilio.MaxConcurrency, // the Twilio client bounds requests in flight to as many
		// A status write that got no answer may land up to about a request
		// timeout later; none is repeated before twice that.
		WriteLease: 2 * cfg.Twilio.Timeout,
		Owner:      d.rep.holder,
		Lease:      claimLease(cfg),
		// On Postgres other replicas claim from the same queue.
		SharedQueue: d.rep.shared,
	})
	d.br.SetReconcileRequester(d.RequestReconcile)
	primeRuleSeries(d.bm, cfg.Rules)
	d.logWarnings(cfg)
	d.reloadOK.Set(1)
	d.reloadOKTime.SetToCurrentTime()
	return d, nil
}

func (d *Daemon) authProbeInterval() time.Duration {
	if d.opts.AuthProbeInterval > 0 {
		return d.opts.AuthProbeInterval
	}
	return DefaultAuthProbeInterval
}

// claimLease is how long a claim on an action lasts: the engine's default
// alone on SQLite (a restart rescues every claim at once), the configured
// lease on Postgres, where only an expired claim is rescued.
func claimLease(cfg *config.Config) time.Duration {
	if cfg.State.Postgres == nil {
		return 0
	}
	return max(cfg.State.Postgres.ClaimLease, 2*cfg.Twilio.Timeout)
}

func settingsOf(cfg *config.Config) breaker.Settings {
	return breaker.Settings{Instance: cfg.Instance, PublicURL: cfg.Server.PublicURL, Rules: cfg.Rules, CallbackAuth: callbackAuthOf(cfg),
		DryRun: cfg.DryRun, MaxDeletes: cfg.Reconcile.MaxDeletes, AllowDisarm: cfg.AllowDisarm}
}

func (d *Daemon) registerOwnMetrics() {
	d.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "usagebreaker_config_last_reload_successful",
		Help: "1 if the last config reload succeeded (or none was tried), 0 if it was rejected.",
	})
	d.reloadOKTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "usagebreaker_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful config load or reload.",
	})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "usagebreaker_build_info",
		Help: "Always 1; the labels say which build is running.",
	}, []string{"version", "revision", "goversion"})
	buildInfo.WithLabelValues(version.Version, version.Rev(), version.GoVersion()).Set(1)
	d.reconcileRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "usagebreaker_reconciles_total",
		Help: "Reconciles run, by result (ok, error).",
	}, []string{"result"})
	d.reg.MustRegister(d.reloadOK, d.reloadOKTime, buildInfo, d.reconcileRuns,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// Breaker is the core (tests use it to step the pipeline).
func (d *Daemon) Breaker() *breaker.Breaker { return d.br }

// Registry is the daemon's metrics registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Config is the config in force.
func (d *Daemon) Config() *config.Config { return d.cfg.Load() }

// Ready reports whether the first reconcile is done.
func (d *Daemon) Ready() bool { return d.ready.Load() && d.rep.backendUp.Load() }

// Listen opens both listeners (unless given in Options). Run calls it if it
// was not called; calling it first lets a caller learn the addresses.
func (d *Daemon) Listen() error {
	cfg := d.cfg.Load()
	if d.cbLn == nil {
		d.cbLn = d.opts.CallbackListener
		if d.cbLn == nil {
			ln, err := net.Listen("tcp", cfg.Server.Listen)
			if err != nil {
				return fmt.Errorf("server.listen %s: %w", cfg.Server.Listen, err)
			}
			d.cbLn = ln
		}
	}
	if d.adminLn == nil {
		d.adminLn = d.opts.AdminListener
		if d.adminLn == nil {
			ln, err := net.Listen("tcp", cfg.Server.AdminListen)
			if err != nil {
				return fmt.Errorf("server.admin_listen %s: %w", cfg.Server.AdminListen, err)
			}
			d.adminLn = ln
		}
	}
	return nil
}

// Run serves until ctx ends, then shuts down gracefully: it stops taking
// callbacks, lets in-flight requests and actions finish (within
// ShutdownTimeout; unfinished actions stay pending for the next start), and
// closes the state. It returns nil after a clean shutdown.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.checkTwilioAuth(ctx); err != nil {
		d.st.Close()
		return err
	}
	if err := d.Listen(); err != nil {
		d.st.Close()
		return err
	}
	cfg := d.cfg.Load()
	d.cbSrv = &http.Server{
		Handler:           d.callbackMux(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       20 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          d.callbackErrorLog(),
		TLSConfig:         d.callbackTLSConfig(),

		DisableGeneralOptionsHandler: true, // "OPTIONS *" gets the edge's 404 too
	}
	d.adminSrv = &http.Server{
		Handler:           d.adminAudit(d.adminMux()),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 2)
	go func() { errc <- d.serveCallbacks() }()
	go func() { errc <- serve(d.adminSrv, d.adminLn, "admin") }()
	d.log.Info("usagebreaker started", "version", version.Version, "instance", cfg.Instance,
		"rules", cfg.Rules.Len(), "callback_listener", d.cbLn.Addr().String(), "admin_listener", d.adminLn.Addr().String(),
		"public_url", cfg.Server.PublicURL, "dry_run", cfg.DryRun)
	d.logDryRun(nil, cfg)

	// The schedules exist before anything can reload (SIGHUP, the watcher);
	// reloadMu orders this with a reload already under way.
	d.reloadMu.Lock()
	d.cron = cron.New(cron.WithLocation(time.UTC))
	err := d.schedule(d.cfg.Load())
	if err == nil {
		err = d.schedulePoll(d.cfg.Load())
	}
	d.reloadMu.Unlock()
	if err != nil {
		d.cbSrv.Close()
		d.adminSrv.Close()
		d.st.Close()
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLeases()
	info := func(msg string, args ...any) { d.log.Info(msg, args...) }
	d.rep.renewAll(runCtx, info)                            // the loops below start as leaders or not
	d.rep.leases[loopReconcile].gained = d.RequestReconcile // later: the previous leader may have stopped mid-way
	leasesDone := make(chan struct{})
	go func() { defer close(leasesDone); d.rep.runLeases(leaseCtx, info) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.rep.monitorBackend(runCtx, func(msg string, args ...any) { d.log.Warn(msg, args...) })
	}()
	wg.Add(4)
	go func() { defer wg.Done(); d.br.RunExecutor(runCtx, d.opts.ShutdownTimeout) }()
	go func() { defer wg.Done(); d.reconcileLoop(runCtx) }()
	go func() { defer wg.Done(); d.br.RunOperator(runCtx, 0) }()
	go func() { defer wg.Done(); d.pollLoop(runCtx) }()
	if d.opts.WatchInterval > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); d.watchLoop(runCtx, d.opts.WatchInterval) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); d.authProbeLoop(runCtx, d.authProbeInterval()) }()
	if d.edge.certs != nil {
		// The certificate files are checked in the background too, so a
		// broken rotation shows in the metric and the log before a client
		// connects (Twilio rarely does).
		wg.Add(1)
		go func() { defer wg.Done(); d.edge.certs.watch(runCtx) }()
	}
	d.cron.Start()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = err
	}
	d.log.Info("shutting down", "timeout", d.opts.ShutdownTimeout)
	d.ready.Store(false) // /-/ready: 503 from now, so a load balancer stops sending callbacks here
	shCtx, cancel := context.WithTimeout(context.Background(), d.opts.ShutdownTimeout)
	defer cancel()
	// Stop taking callbacks (a callback being recorded finishes) and, at the
	// same time, stop starting actions (those running get the same timeout;
	// what is unfinished stays pending for the next start), so the whole
	// shutdown fits in ShutdownTimeout.
	cbDone := make(chan struct{})
	go func() {
		defer close(cbDone)
		if err := d.cbSrv.Shutdown(shCtx); err != nil {
			d.log.Warn("callback listener did not drain", "err", err)
		}
	}()
	<-d.cron.Stop().Done()
	stop()
	wg.Wait()
	stopLeases() // after the loops stopped: resign, so another replica takes over at once
	<-leasesDone
	<-cbDone
	adminCtx, adminCancel := context.WithTimeout(context.Background(), time.Second)
	defer adminCancel()
	if err := d.adminSrv.Shutdown(adminCtx); err != nil {
		d.log.Warn("admin listener did not drain", "err", err)
		d.adminSrv.Close()
	}
	if err := d.st.Close(); err != nil {
		d.log.Error("closing state", "err", err)
	}
	d.log.Info("stopped")
	return runErr
}

func serve(srv *http.Server, ln net.Listener, name string) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s listener: %w", name, err)
	}
	return nil
}

// callbackMux is the callback listener's handler: the edge serves only
// rules.CallbackPathPrefix (a bare 404 for anything else, never a redirect).
func (d *Daemon) callbackMux() http.Handler {
	return d.callbackEdge(d.rep.gateCallbacks(webhook.New(d.br, d.bm, d.log.With("component", "webhook"))))
}

// schedule (re)installs the reconcile schedule.
func (d *Daemon) schedule(cfg *config.Config) error {
	d.cronMu.Lock()
	defer d.cronMu.Unlock()
	id, err := d.cron.AddFunc(cfg.Reconcile.Schedule, d.RequestReconcile)
	if err != nil {
		return fmt.Errorf("reconcile.schedule %q: %w", cfg.Reconcile.Schedule, err)
	}
	for _, old := range d.cronIDs {
		d.cron.Remove(old)
	}
	d.cronIDs = []cron.EntryID{id}
	return nil
}

// RequestReconcile asks for a reconcile soon; requests made while one runs
// coalesce into one more run afterwards, with the settings then in force.
func (d *Daemon) RequestReconcile() {
	select {
	case d.reconcileReq <- struct{}{}:
	default:
	}
}

func (d *Daemon) reconcileLoop(ctx context.Context) {
	d.reconcileOnce(ctx) // at start
	d.ready.Store(true)
	d.firstPoll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.reconcileReq:
			d.reconcileOnce(ctx)
		}
	}
}

func (d *Daemon) reconcileOnce(ctx context.Context) {
	ctx, cancel, leading := d.rep.lead(ctx, loopReconcile)
	defer cancel()
	if !leading {
		// Another replica reconciles; this one keeps its list of
		// subaccounts current for the callbacks it verifies.
		if err := d.br.Reconciler().RefreshAccounts(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("cannot list the subaccounts", "err", err)
		}
		return
	}
	n := d.reconcileStarting()
	res, err := d.br.Reconciler().Reconcile(ctx)
	d.reconcileFinished(n, err)
	if err != nil {
		d.reconcileRuns.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			d.log.Error("reconcile finished with errors", "err", err, "created", res.Created, "updated", res.Updated,
				"deleted", res.Deleted, "unchanged", res.Unchanged, "accounts", res.Active, "duration", res.Duration)
		}
		return
	}
	d.reconcileRuns.WithLabelValues("ok").Inc()
	d.log.Info("reconcile done", "created", res.Created, "updated", res.Updated, "deleted", res.Deleted,
		"unchanged", res.Unchanged, "accounts", res.Active, "subaccounts", res.Subaccounts, "duration", res.Duration)
}

// Reload re-reads the config and every rule file. The new set is validated in
// full first; if anything is wrong the old set keeps running and the error is
// returned. A good reload swaps atomically and starts a reconcile.
func (d *Daemon) Reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.cfg.Load()
	tried, triedParts := d.snapshot(old) // before reading: a save after it is a change
	cfg, err := d.loadConfig()
	if err == nil {
		err = reloadable(old, cfg)
	}
	if err == nil {
		err = d.disarmable(cfg)
	}
	var settings breaker.Settings
	if err == nil {
		settings, err = d.fullSettings(cfg)
	}
	if err != nil {
		d.reloadOK.Set(0)
		d.remember(tried, triedParts)
		d.log.Error("config reload rejected; the old config keeps running", "err", err)
		return err
	}
	if d.cron != nil && cfg.Reconcile.Schedule != old.Reconcile.Schedule {
		if err := d.schedule(cfg); err != nil {
			d.reloadOK.Set(0)
			d.remember(tried, triedParts)
			return err
		}
	}
	if d.cron != nil && cfg.Poll.Schedule != old.Poll.Schedule {
		if err := d.schedulePoll(cfg); err != nil {
			d.reloadOK.Set(0)
			d.remember(tried, triedParts)
			return err
		}
	}
	d.remember(d.snapshot(cfg))
	d.cfg.Store(cfg)
	d.br.SetSettings(settings)
	d.noteCallbackAuth(old, cfg)
	primeRuleSeries(d.bm, cfg.Rules)
	d.reloadOK.Set(1)
	d.reloadOKTime.SetToCurrentTime()
	d.logWarnings(cfg)
	d.log.Info("config reloaded", "rules", cfg.Rules.Len(), "dry_run", cfg.DryRun)
	d.logDryRun(old, cfg)
	d.RequestReconcile()
	return nil
}

// disarmable rejects a reloaded rule set that matches none of the active
// subaccounts (as of the last listing), unless allow_disarm is set: its
// reconcile would delete every owned trigger.
func (d *Daemon) disarmable(cfg *config.Config) error {
	if cfg.AllowDisarm {
		return nil
	}
	if disarm, active, owned := d.br.Reconciler().WouldDisarm(cfg.Rules); disarm {
		return fmt.Errorf("the new rules match none of the %d active subaccounts: the reconcile would delete the %d triggers "+
			"this instance owns (as of the last reconcile) and guard nothing; set allow_disarm: true to disarm on purpose", active, owned)
	}
	return nil
}

// logWarnings logs the config's warnings (rules that can match nothing).
func (d *Daemon) logWarnings(cfg *config.Config) {
	for _, w := range cfg.Warnings {
		d.log.Warn(w.Msg, "file", w.File, "line", w.Line)
	}
}

// reloadable rejects changes that a reload cannot apply safely.
func reloadable(old, cfg *config.Config) error {
	var errs []error
	check := func(what, a, b string) {
		if a != b {
			errs = append(errs, fmt.Errorf("%s cannot change on reload (%q -> %q); restart usagebreaker to apply it", what, a, b))
		}
	}
	check("instance", old.Instance, cfg.Instance)
	check("server.listen", old.Server.Listen, cfg.Server.Listen)
	check("server.admin_listen", old.Server.AdminListen, cfg.Server.AdminListen)
	check("state.path", old.State.Path, cfg.State.Path)
	if (old.State.Postgres == nil) != (cfg.State.Postgres == nil) ||
		old.State.Postgres != nil && (old.State.Postgres.DSN != cfg.State.Postgres.DSN || old.State.Postgres.ClaimLease != cfg.State.Postgres.ClaimLease) {
		errs = append(errs, errors.New("state.postgres cannot change on reload; restart usagebreaker to use it"))
	}
	check("twilio.account_sid", old.Twilio.AccountSID, cfg.Twilio.AccountSID)
	check("twilio.api_base_url", old.Twilio.APIBaseURL, cfg.Twilio.APIBaseURL)
	check("twilio.max_concurrency", strconv.Itoa(old.Twilio.MaxConcurrency), strconv.Itoa(cfg.Twilio.MaxConcurrency))
	check("twilio.timeout", old.Twilio.Timeout.String(), cfg.Twilio.Timeout.String())
	if old.Twilio.AuthToken != cfg.Twilio.AuthToken {
		errs = append(errs, errors.New("twilio.auth_token cannot change on reload; restart usagebreaker to use the new token"))
	}
	errs = append(errs, reloadableEdge(old, cfg))
	return errors.Join(errs...)
}
