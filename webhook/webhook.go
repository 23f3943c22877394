// Package webhook serves the Twilio-facing listener: Usage Trigger callbacks
// at /twilio/usage-triggers/{rule}. It checks each request's X-Twilio-Signature
// with the subaccount's own auth token, hands verified firings to the breaker,
// and answers 200 only once the breaker has recorded the firing durably.
package webhook

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// MaxBodyBytes bounds a callback body. Twilio's usage-trigger callbacks are
// well under 2 KiB.
const MaxBodyBytes = 64 << 10

// Breaker is what the handler needs from the core; *breaker.Breaker has it.
type Breaker interface {
	Rule(name string) *rules.Rule
	PublicURL() string
	LookupAccount(ctx context.Context, sid string) (twilioapi.Account, error)
	RefreshAccount(ctx context.Context, sid string) (twilioapi.Account, bool)
	Accept(ctx context.Context, r *rules.Rule, acct twilioapi.Account, cb breaker.Callback) (breaker.AcceptResult, error)
}

// Handler answers Usage Trigger callbacks.
type Handler struct {
	b       Breaker
	log     *slog.Logger
	m       *breaker.Metrics
	timeout time.Duration // for recording a firing
	rejects rejectLog     // rejected callbacks are logged by sample (logsample.go)
	urls    urlMismatch   // Twilio-shaped callbacks failing verification (public_url wrong?)
}

// New returns the callback handler. Mount it at rules.CallbackPathPrefix.
func New(b Breaker, m *breaker.Metrics, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = breaker.NewMetrics(nil)
	}
	return &Handler{b: b, log: log, m: m, timeout: 10 * time.Second}
}

// required are the callback parameters without which a firing means nothing.
var required = []string{"AccountSid", "UsageTriggerSid", "IdempotencyToken", "UsageCategory", "TriggerBy", "CurrentValue"}

// recorded are the callback parameters a firing records: text, as Twilio
// sends them (valid UTF-8, no control characters).
var recorded = []string{"AccountSid", "UsageTriggerSid", "DateFired", "Recurring", "UsageCategory", "TriggerBy",
	"TriggerValue", "CurrentValue", "UsageRecordUri", "IdempotencyToken"}

// isText reports a value with no control character, in valid UTF-8.
func isText(v string) bool {
	if !utf8.ValidString(v) {
		return false
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// answer ends a request: status, a short plain-text body, one log line, one metric.
type answer struct {
	status  int
	outcome string
	msg     string
	attrs   []any
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := h.handle(w, r, time.Now())
	h.m.Callbacks.WithLabelValues(a.outcome).Inc()
	if a.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodPost)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.msg+"\n")

	level := slog.LevelInfo
	if a.status >= 500 {
		level = slog.LevelError
	} else if a.status >= 400 {
		level = slog.LevelWarn
	}
	if a.status >= 400 && (!h.log.Enabled(r.Context(), level) || !h.rejects.allow(r.Context(), h.log, a.outcome)) {
		return
	}
	attrs := append([]any{"outcome", a.outcome, "status", a.status, "remote", r.RemoteAddr, "path", r.URL.Path}, a.attrs...)
	if a.status != http.StatusOK {
		attrs = append(attrs, "why", a.msg)
	}
	h.log.Log(r.Context(), level, "callback", attrs...)
}

// handle answers a callback that arrived at arrived.
func (h *Handler) handle(w http.ResponseWriter, r *http.Request, arrived time.Time) answer {
	ruleName, ok := strings.CutPrefix(r.URL.Path, rules.CallbackPathPrefix)
	if !ok || ruleName == "" || strings.Contains(ruleName, "/") {
		return answer{http.StatusNotFound, breaker.OutcomeUnknownRule, "not found", nil}
	}
	if r.Method != http.MethodPost {
		return answer{http.StatusMethodNotAllowed, breaker.OutcomeBadRequest, "only POST", nil}
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, _ := strings.Cut(ct, ";"); !strings.EqualFold(strings.TrimSpace(mt), "application/x-www-form-urlencoded") {
		return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "content type must be application/x-www-form-urlencoded", nil}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "body too large", nil}
		}
		return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "cannot read body", nil}
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "malformed form body", nil}
	}
	for k, v := range form {
		if len(v) > 1 {
			// Twilio sends each parameter once; a repeated one could be read
			// differently by the signature check and by us.
			return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "repeated parameter " + k, nil}
		}
	}
	sid := form.Get("AccountSid")
	if sid == "" {
		return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "missing AccountSid", nil}
	}
	attrs := []any{"account", sid, "rule", ruleName}
	sig := r.Header.Get("X-Twilio-Signature")
	if sig == "" {
		return answer{http.StatusForbidden, breaker.OutcomeBadSignature, "missing X-Twilio-Signature", attrs}
	}

	acct, err := h.b.LookupAccount(r.Context(), sid)
	switch {
	case errors.Is(err, breaker.ErrNotSubaccount):
		return answer{http.StatusForbidden, breaker.OutcomeUnknownAccount, "not a subaccount of this parent account", attrs}
	case errors.Is(err, breaker.ErrLookupLimited):
		// Not in the cache, and the lookup budget is spent (a flood of made-up
		// SIDs): as unknown as one looked up. A 403, not a 503: a forgery is
		// not a failure to record (it must not page), and it counts against
		// the client's limit on rejected requests. A subaccount created since
		// the last listing is found by the next poll.
		return answer{http.StatusForbidden, breaker.OutcomeUnknownAccount, "not a known subaccount of this parent account",
			append(attrs, "lookup", "rate-limited")}
	case err != nil:
		return answer{http.StatusServiceUnavailable, breaker.OutcomeError, "cannot look up the account now", append(attrs, "err", err)}
	}
	attrs = append(attrs, "account_name", acct.FriendlyName)

	// The signed URL is the public URL Twilio was given plus the path and raw
	// query it requested, never the Host header (which a proxy or an attacker
	// sets). twilio-go accepts it with and without the default port.
	signedURL := strings.TrimRight(h.b.PublicURL(), "/") + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		signedURL += "?" + r.URL.RawQuery
	}
	if !validRequestSignature(acct.AuthToken, r, signedURL, body, sig) {
		// The subaccount's token may have been rotated: re-fetch it (rate-limited).
		fresh, changed := h.b.RefreshAccount(r.Context(), sid)
		if !changed || !validRequestSignature(fresh.AuthToken, r, signedURL, body, sig) {
			checked := withoutCredentials(signedURL)
			if twilioShaped(r, form) {
				h.urls.failed(r.Context(), h.log, arrived, checked, requestHost(r))
			}
			return answer{http.StatusForbidden, breaker.OutcomeBadSignature, "invalid X-Twilio-Signature",
				append(attrs, "checked_url", checked)}
		}
		acct = fresh
	}
	h.urls.verified()

	rule := h.b.Rule(ruleName)
	if rule == nil {
		return answer{http.StatusNotFound, breaker.OutcomeUnknownRule, "unknown rule", attrs}
	}
	for _, k := range required {
		if strings.TrimSpace(form.Get(k)) == "" {
			return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, "missing " + k, attrs}
		}
	}
	for _, k := range recorded {
		if !isText(form.Get(k)) {
			return answer{http.StatusBadRequest, breaker.OutcomeBadRequest, k + " is not text (a control character or invalid UTF-8)", attrs}
		}
	}
	cb := breaker.Callback{
		AccountSID:       sid,
		UsageTriggerSID:  form.Get("UsageTriggerSid"),
		DateFired:        form.Get("DateFired"),
		Recurring:        form.Get("Recurring"),
		UsageCategory:    form.Get("UsageCategory"),
		TriggerBy:        form.Get("TriggerBy"),
		TriggerValue:     form.Get("TriggerValue"),
		CurrentValue:     form.Get("CurrentValue"),
		UsageRecordURI:   form.Get("UsageRecordUri"),
		IdempotencyToken: form.Get("IdempotencyToken"),
		Arrived:          arrived,
	}
	attrs = append(attrs, "token", cb.IdempotencyToken, "current_value", cb.CurrentValue)

	// Record durably before answering. The request's context is not used:
	// a client that hangs up must not abort a half-done write.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.timeout)
	defer cancel()
	res, err := h.b.Accept(ctx, rule, acct, cb)
	if err != nil {
		return answer{http.StatusServiceUnavailable, breaker.OutcomeError, "cannot record the firing now; retry", append(attrs, "err", err)}
	}
	attrs = append(attrs, "incident", res.Incident.ID)
	if res.Duplicate {
		return answer{http.StatusOK, breaker.OutcomeDuplicate, "ok (already recorded)", attrs}
	}
	return answer{http.StatusOK, breaker.OutcomeAccepted, "ok", attrs}
}

// A wrong server.public_url looks like an attack: every genuine callback gets
// 403 "invalid X-Twilio-Signature". When callbacks that look like Twilio's
// (its user agent, every field, a known subaccount) keep failing
// verification with none verifying in between, the log says what probably
// happened.
const (
	// URLMismatchAfter Twilio-shaped failures in a row, with none verified,
	// are reported...
	URLMismatchAfter = 3
	// ...and again at most this often while it goes on.
	URLMismatchEvery = 10 * time.Minute
)

type urlMismatch struct {
	mu     sync.Mutex
	run    int       // Twilio-shaped callbacks that failed verification since the last verified one
	warned time.Time // when it was last reported
}

func (m *urlMismatch) verified() {
	m.mu.Lock()
	m.run = 0
	m.mu.Unlock()
}

func (m *urlMismatch) failed(ctx context.Context, log *slog.Logger, now time.Time, checked, host string) {
	m.mu.Lock()
	m.run++
	n := m.run
	report := n >= URLMismatchAfter && (m.warned.IsZero() || now.Sub(m.warned) >= URLMismatchEvery)
	if report {
		m.warned = now
	}
	m.mu.Unlock()
	if !report {
		return
	}
	log.Log(ctx, slog.LevelError, "every callback that looks like Twilio's fails signature verification: "+
		"server.public_url probably differs from the URL Twilio calls (scheme, host, port or a path prefix added by a proxy); "+
		"compare it with the triggers' CallbackUrl",
		"failed_in_a_row", n, "checked_url", checked, "request_host", host)
}

// twilioShaped reports a request that looks like Twilio's callback: its user
// agent and every field a firing has (the account was found a subaccount).
func twilioShaped(r *http.Request, form url.Values) bool {
	if !strings.HasPrefix(r.UserAgent(), "TwilioProxy/") {
		return false
	}
	for _, k := range required {
		if form.Get(k) == "" {
			return false
		}
	}
	return true
}

// requestHost is the host the client asked for, as a proxy forwards it.
func requestHost(r *http.Request) string {
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		return h
	}
	return r.Host
}

// withoutCredentials strips user:password@ from a URL for the logs.
func withoutCredentials(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return u.String()
}
