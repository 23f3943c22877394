package webhook

import (
	"crypto/sha256"
	"crypto/subtle"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/rules"
)

// Callback outcomes the edge adds to usagebreaker_callbacks_total.
const (
	// OutcomeUnauthorized: server.basic_auth is set and the request lacked the
	// credentials or had wrong ones (401).
	OutcomeUnauthorized = "unauthorized"
	// OutcomeRateLimited: the client made too many rejected requests (429).
	OutcomeRateLimited = "rate_limited"
)

// Realm is the Basic auth realm in the 401 challenge.
const Realm = "usagebreaker"

// Credential is one accepted Basic auth user name and password.
type Credential struct {
	Username string
	Password config.Secret
}

// AuthPolicy is what the callback listener asks of a request now.
type AuthPolicy struct {
	// Required: a request without matching credentials gets 401. When false
	// (no basic_auth, or basic_auth being turned on and not yet registered
	// everywhere), any request passes.
	Required bool
	// Accept lists the credentials that pass: the configured ones first,
	// then earlier ones still registered at Twilio after a change.
	Accept []Credential
}

// EdgeOptions configure NewEdge.
type EdgeOptions struct {
	// Auth returns the policy in force (it follows reloads); nil: none.
	Auth func() AuthPolicy
	// ClientKey names a request's client for the rate limit; nil: ClientKey
	// with no trusted proxies.
	ClientKey func(r *http.Request) string
	// Limiter counts rejected requests per client; nil: DefaultRejectLimit.
	Limiter *RejectLimiter
	Metrics *breaker.Metrics
	Logger  *slog.Logger
}

// Edge is the whole callback listener: it serves only
// rules.CallbackPathPrefix (everything else is a bare 404), checks Basic auth
// before anything costly, and answers 429 to clients that made too many
// rejected requests, before reading their body. What passes goes to the
// callback handler.
type Edge struct {
	next      http.Handler
	auth      func() AuthPolicy
	clientKey func(r *http.Request) string
	lim       *RejectLimiter
	m         *breaker.Metrics
	log       *slog.Logger
	xffOnce   sync.Once
	rejects   rejectLog // 401s are logged by sample (logsample.go)
}

// NewEdge wraps the callback handler.
func NewEdge(callbacks http.Handler, o EdgeOptions) *Edge {
	e := &Edge{next: callbacks, auth: o.Auth, clientKey: o.ClientKey, lim: o.Limiter, m: o.Metrics, log: o.Logger}
	if e.auth == nil {
		e.auth = func() AuthPolicy { return AuthPolicy{} }
	}
	if e.clientKey == nil {
		e.clientKey = func(r *http.Request) string { return ClientKey(r, nil) }
	}
	if e.lim == nil {
		e.lim = NewRejectLimiter(DefaultRejectLimit, nil)
	}
	if e.m == nil {
		e.m = breaker.NewMetrics(nil)
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.m.Callbacks.WithLabelValues(OutcomeUnauthorized) // export zeros so rate() works from the start
	e.m.Callbacks.WithLabelValues(OutcomeRateLimited)
	return e
}

func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := e.clientKey(r)
	// A loopback client is a local proxy (a sidecar) that everyone comes
	// through: limiting it would limit Twilio too. List it in
	// server.trusted_proxies to limit by X-Forwarded-For instead.
	limited := !isLoopbackKey(key)
	if r.Header.Get("X-Forwarded-For") != "" && key == ClientKey(r, nil) {
		e.xffOnce.Do(func() {
			e.log.Warn("callbacks arrive through a proxy that is not in server.trusted_proxies: the per-client "+
				"rate limit treats all of them as one client; add the proxy's address to server.trusted_proxies",
				"peer", r.RemoteAddr)
		})
	}

	if !strings.HasPrefix(r.URL.Path, rules.CallbackPathPrefix) {
		if limited && e.gate(w, r, key, bucketUnauthenticated) {
			return
		}
		if limited {
			e.lim.reject(key, bucketUnauthenticated)
		}
		// Not a callback: no detail, no log line, not a callback outcome.
		plain(w, http.StatusNotFound, "not found")
		return
	}

	pol := e.auth()
	if pol.Required {
		user, pass, has := r.BasicAuth()
		if idx := pol.match(user, pass, has); idx < 0 {
			if limited && e.gate(w, r, key, bucketUnauthenticated) {
				return
			}
			if limited {
				e.lim.reject(key, bucketUnauthenticated)
			}
			e.m.Callbacks.WithLabelValues(OutcomeUnauthorized).Inc()
			why := "missing credentials"
			if has {
				why = "wrong credentials"
			}
			if e.rejects.allow(r.Context(), e.log, OutcomeUnauthorized) {
				e.log.Warn("callback", "outcome", OutcomeUnauthorized, "status", http.StatusUnauthorized,
					"remote", r.RemoteAddr, "client", key, "path", r.URL.Path, "why", why)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`", charset="UTF-8"`)
			plain(w, http.StatusUnauthorized, "unauthorized")
			return
		} else if idx > 0 {
			e.log.Info("callback authenticated with earlier basic_auth credentials, still registered on some triggers",
				"remote", r.RemoteAddr, "path", r.URL.Path)
		}
		// The right credentials: Twilio, or whoever holds the URL. Never
		// throttled, so that no flood from a shared address (Twilio's
		// egress, a proxy) can hold back a real callback.
		e.next.ServeHTTP(w, r)
		return
	}

	if !limited {
		e.next.ServeHTTP(w, r)
		return
	}
	if e.gate(w, r, key, bucketAuthenticated) {
		return
	}
	rec := &statusRecorder{ResponseWriter: w}
	e.next.ServeHTTP(rec, r)
	if rejected(rec.status) {
		e.lim.reject(key, bucketAuthenticated)
	}
}

// gate answers 429 and returns true when the client is throttled in b.
func (e *Edge) gate(w http.ResponseWriter, r *http.Request, key string, b bucket) bool {
	throttled, wait, first := e.lim.throttled(key, b)
	if !throttled {
		return false
	}
	if first {
		e.log.Warn("client throttled: too many rejected requests on the callback listener; answering 429 "+
			"without further detail or logs until it slows down", "client", key, "remote", r.RemoteAddr, "kind", b.String())
	}
	e.m.Callbacks.WithLabelValues(OutcomeRateLimited).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	plain(w, http.StatusTooManyRequests, "too many rejected requests")
	return true
}

// match returns the index in Accept of the credentials given, or -1. Every
// candidate is compared, each in constant time (over SHA-256 digests, so not
// even the lengths leak).
func (p AuthPolicy) match(user, pass string, has bool) int {
	if !has {
		return -1
	}
	hu, hp := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
	found := -1
	for i := len(p.Accept) - 1; i >= 0; i-- {
		c := p.Accept[i]
		cu, cp := sha256.Sum256([]byte(c.Username)), sha256.Sum256([]byte(c.Password.Reveal()))
		ok := subtle.ConstantTimeCompare(hu[:], cu[:]) & subtle.ConstantTimeCompare(hp[:], cp[:])
		found = subtle.ConstantTimeSelect(ok, i, found)
	}
	return found
}

// rejected reports a status that counts against the client: any 4xx but 429.
func rejected(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusTooManyRequests
}

func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// isLoopbackKey reports whether a client key (see ClientKey) is a loopback address.
func isLoopbackKey(key string) bool {
	if p, err := netip.ParsePrefix(key); err == nil {
		return p.Addr().IsLoopback()
	}
	a, err := netip.ParseAddr(key)
	return err == nil && a.IsLoopback()
}
