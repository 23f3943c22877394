package daemon

import (
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/webhook"
)

// DefaultCallbackAuthGrace is how long, after every owned trigger was
// re-registered with new basic_auth credentials, the earlier ones are still
// accepted: Twilio may have evaluated a trigger just before its update and
// deliver (or retry) its callback with the old URL a little later.
const DefaultCallbackAuthGrace = 10 * time.Minute

// edgeState is the callback listener's security state (see docs/SECURITY.md).
type edgeState struct {
	certs   *certReloader // nil without server.tls
	limiter *webhook.RejectLimiter
	grace   time.Duration

	mu         sync.Mutex
	reconciles uint64      // reconciles started
	change     *authChange // the last basic_auth change, while its grace lasts
}

// authChange: basic_auth changed on reload. Until every owned trigger has
// been re-registered (a reconcile that started after the change finished
// without errors) and the grace period after that has passed, the credentials
// accepted before the change are still accepted.
type authChange struct {
	prev  webhook.AuthPolicy
	after uint64    // a clean reconcile numbered above this ends it...
	until time.Time // ...at this time (zero until then)
}

// setupEdge builds the edge state: the certificate reloader (which loads the
// pair now, so a bad one fails the start) and the rejected-request limiter.
func (d *Daemon) setupEdge(cfg *config.Config) error {
	grace := d.opts.CallbackAuthGrace
	if grace == 0 {
		grace = DefaultCallbackAuthGrace
	}
	d.edge = &edgeState{limiter: webhook.NewRejectLimiter(d.opts.RejectLimit, nil), grace: max(grace, 0)}
	s := cfg.Server
	if s.TLS != nil {
		interval := d.opts.TLSCheckInterval
		if interval == 0 {
			interval = DefaultTLSCheckInterval
		}
		certs, err := newCertReloader(func() *config.TLS { return d.cfg.Load().Server.TLS }, interval,
			d.log.With("component", "tls"), d.reg)
		if err != nil {
			return err
		}
		d.edge.certs = certs
	}
	proxies := 0
	if s.TrustedProxies != nil {
		proxies = len(s.TrustedProxies.Prefixes)
	}
	d.log.Info("callback listener security", "tls", s.TLS != nil, "basic_auth", s.BasicAuth != nil,
		"trusted_proxies", proxies, "public_url", s.PublicURL)
	if u, err := url.Parse(s.PublicURL); err == nil && u.Scheme == "http" && !config.IsLoopbackHost(u.Hostname()) {
		d.log.Warn("server.allow_insecure_public_url is set: Twilio sends callbacks (and any basic_auth password) "+
			"in plain HTTP, readable and replayable on the way; use an https:// public_url", "public_url", s.PublicURL)
	}
	return nil
}

// callbackEdge puts the edge (only the callback path, Basic auth, per-client
// limit on rejected requests) in front of the callback handler.
func (d *Daemon) callbackEdge(callbacks http.Handler) http.Handler {
	return webhook.NewEdge(callbacks, webhook.EdgeOptions{
		Auth: d.callbackAuth,
		ClientKey: func(r *http.Request) string {
			return webhook.ClientKey(r, d.cfg.Load().Server.TrustedProxies)
		},
		Limiter: d.edge.limiter,
		Metrics: d.bm,
		Logger:  d.log.With("component", "webhook"),
	})
}

func policyOf(ba *config.BasicAuth) webhook.AuthPolicy {
	if ba == nil {
		return webhook.AuthPolicy{}
	}
	return webhook.AuthPolicy{Required: true, Accept: []webhook.Credential{{Username: ba.Username, Password: ba.Password}}}
}

// merge accepts what either accepts.
func merge(cur, prev webhook.AuthPolicy) webhook.AuthPolicy {
	return webhook.AuthPolicy{
		Required: cur.Required && prev.Required,
		Accept:   append(append([]webhook.Credential(nil), cur.Accept...), prev.Accept...),
	}
}

func callbackAuthOf(cfg *config.Config) *breaker.CallbackAuth {
	if ba := cfg.Server.BasicAuth; ba != nil {
		return &breaker.CallbackAuth{Username: ba.Username, Password: ba.Password}
	}
	return nil
}

// callbackAuth is the Basic auth policy in force: the configured credentials,
// plus the earlier ones while a change is being rolled out to the triggers.
func (d *Daemon) callbackAuth() webhook.AuthPolicy {
	pol := policyOf(d.cfg.Load().Server.BasicAuth)
	e := d.edge
	e.mu.Lock()
	defer e.mu.Unlock()
	ch := e.change
	if ch == nil {
		return pol
	}
	if !ch.until.IsZero() && d.opts.Now().After(ch.until) {
		e.change = nil
		d.log.Info("basic_auth: every owned trigger has the new credentials; the earlier ones are no longer accepted")
		return pol
	}
	return merge(pol, ch.prev)
}

// noteCallbackAuth records a basic_auth change made by a reload.
func (d *Daemon) noteCallbackAuth(old, cfg *config.Config) {
	a, b := old.Server.BasicAuth, cfg.Server.BasicAuth
	if a == b || a != nil && b != nil && *a == *b {
		return
	}
	e := d.edge
	e.mu.Lock()
	prev := policyOf(a)
	if ch := e.change; ch != nil && (ch.until.IsZero() || !d.opts.Now().After(ch.until)) {
		prev = merge(prev, ch.prev) // a change during another's grace: keep accepting both
	}
	e.change = &authChange{prev: prev, after: e.reconciles}
	e.mu.Unlock()
	d.log.Info("basic_auth changed: re-registering every owned trigger's callback URL (an update, keeping its "+
		"state); the earlier credentials are accepted until that is done", "grace_after", e.grace)
}

// reconcileStarting and reconcileFinished bracket every reconcile, so that a
// basic_auth change knows when all triggers carry the new credentials.
func (d *Daemon) reconcileStarting() uint64 {
	e := d.edge
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reconciles++
	return e.reconciles
}

func (d *Daemon) reconcileFinished(n uint64, err error) {
	e := d.edge
	e.mu.Lock()
	defer e.mu.Unlock()
	if ch := e.change; ch != nil && ch.until.IsZero() && n > ch.after && err == nil {
		ch.until = d.opts.Now().Add(e.grace)
	}
}

// reloadableEdge rejects edge changes a reload cannot apply.
func reloadableEdge(old, cfg *config.Config) error {
	if (old.Server.TLS == nil) != (cfg.Server.TLS == nil) {
		return errors.New("server.tls cannot be turned on or off on reload; restart usagebreaker to apply it " +
			"(its cert_file and key_file may change)")
	}
	return nil
}

// adminAudit logs the admin listener's state-changing and revealing calls
// outside /api/v1 (which authed logs) with the caller's address.
func (d *Daemon) adminAudit(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/config" || r.URL.Path == "/-/reload" {
			d.log.Info("admin listener", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		}
		h.ServeHTTP(w, r)
	})
}
