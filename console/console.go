// Package console is the operator console: server-rendered pages under /ui/
// on the admin listener, for reading the breaker's state and for the few
// actions an operator takes at night (reconcile now, reactivate, release the
// guard). It needs no JavaScript and no build step: html/template, embed.FS
// and one stylesheet.
//
// Security: signing in takes the admin token (compared in constant time);
// the session is an in-memory, expiring cookie (HttpOnly, SameSite=Strict,
// Secure over TLS); every form that changes something carries the session's
// CSRF token and is refused without it, before anything is done; nothing but
// the sign-in page and the stylesheet is served to a request without a
// session; the Content-Security-Policy allows no script at all. Without a
// configured admin token the console is off (404), like the admin API.
//
// The console depends only on Backend (backend.go).
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// MaxReasonLength bounds a reactivation or veto reason (as the admin API).
const MaxReasonLength = 1000

// Options configure a Handler.
type Options struct {
	Backend Backend
	// Token returns the admin token in force ("" turns the console off). It
	// is read on every request, so a rotated token applies at once and ends
	// the sessions signed in with the old one.
	Token      func() string
	Logger     *slog.Logger
	SessionTTL time.Duration    // default 8h
	Now        func() time.Time // default time.Now
}

// Handler serves the console under Prefix.
type Handler struct {
	o     Options
	log   *slog.Logger
	ss    *sessions
	pages map[string]*template.Template
	mux   *http.ServeMux
}

// New builds the console.
func New(o Options) (*Handler, error) {
	if o.Backend == nil || o.Token == nil {
		return nil, errors.New("console: Backend and Token are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 8 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &Handler{o: o, log: o.Logger, ss: newSessions(o.SessionTTL, o.Now), pages: map[string]*template.Template{}}
	if err := h.parse(); err != nil {
		return nil, err
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	m := http.NewServeMux()
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /ui/signin", h.signinPage)
	m.HandleFunc("POST /ui/signin", h.signin)
	m.HandleFunc("POST /ui/signout", h.authed(h.signout))
	m.HandleFunc("GET /ui/{$}", h.authed(h.overview))
	m.HandleFunc("GET /ui/coverage", h.authed(h.coverage))
	m.HandleFunc("POST /ui/coverage/reconcile", h.authed(h.reconcile))
	m.HandleFunc("GET /ui/rules", h.authed(h.rules))
	m.HandleFunc("GET /ui/incidents", h.authed(h.incidents))
	m.HandleFunc("GET /ui/incidents/{id}", h.authed(h.incident))
	m.HandleFunc("POST /ui/incidents/{id}/reactivate", h.authed(h.reactivate))
	m.HandleFunc("POST /ui/incidents/{id}/approve", h.authed(h.approve))
	m.HandleFunc("POST /ui/incidents/{id}/veto", h.authed(h.veto))
	m.HandleFunc("GET /ui/guard", h.authed(h.guard))
	m.HandleFunc("POST /ui/guard/release", h.authed(h.release))
	m.HandleFunc("/ui/", h.authed(func(w http.ResponseWriter, r *http.Request, _ *session) {
		h.fail(w, r, nil, http.StatusNotFound, "no such page")
	}))
	h.mux = m
	return h, nil
}

// contentSecurityPolicy allows the console's own stylesheet and nothing else:
// no script, no frame, no form to elsewhere.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'"

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	if h.o.Token() == "" {
		http.Error(w, "the console is off: set admin.token or admin.token_file", http.StatusNotFound)
		return
	}
	h.mux.ServeHTTP(w, r)
}

type authedFunc func(w http.ResponseWriter, r *http.Request, ss *session)

// authed serves only a signed-in session; others are sent to sign in (a
// POST is refused: nothing it asked for is done). A POST must carry the
// session's CSRF token.
func (h *Handler) authed(fn authedFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := h.ss.get(r, h.o.Token())
		if ss == nil {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				h.log.Warn("console: refused, not signed in", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
				http.Error(w, "not signed in", http.StatusForbidden)
				return
			}
			http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !ss.validCSRF(r) {
				h.log.Warn("console: refused, missing or wrong CSRF token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
				h.fail(w, r, ss, http.StatusForbidden,
					"refused: the form did not carry this session's CSRF token, so nothing was done. Go back, reload the page and try again.")
				return
			}
			h.log.Info("console", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		}
		fn(w, r, ss)
	}
}

// who is the operator as the audit records them.
func who(r *http.Request) string { return "console from " + r.RemoteAddr }

func (h *Handler) signinPage(w http.ResponseWriter, r *http.Request) {
	if h.ss.get(r, h.o.Token()) != nil {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	h.renderSignin(w, r, http.StatusOK, "")
}

func (h *Handler) renderSignin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	nonce := randomToken()
	http.SetCookie(w, cookie(r, signinCookie, nonce, "/ui/signin", 15*time.Minute))
	h.render(w, r, status, "signin", nil, map[string]any{"CSRF": nonce, "Error": msg})
}

func (h *Handler) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(signinCookie)
	if err != nil || c.Value == "" || !tokenMatches(r.PostFormValue(csrfField), c.Value) {
		h.log.Warn("console: sign-in refused, missing or wrong CSRF token", "remote", r.RemoteAddr)
		h.renderSignin(w, r, http.StatusForbidden, "The sign-in form had expired. Try again.")
		return
	}
	want := h.o.Token()
	if !tokenMatches(r.PostFormValue("token"), want) {
		h.log.Warn("console: sign-in refused, wrong admin token", "remote", r.RemoteAddr)
		h.renderSignin(w, r, http.StatusUnauthorized, "Wrong token.")
		return
	}
	ss := h.ss.create(want)
	h.log.Info("console: signed in", "remote", r.RemoteAddr)
	http.SetCookie(w, cookie(r, signinCookie, "", "/ui/signin", -1))
	http.SetCookie(w, cookie(r, sessionCookie, ss.id, Prefix, h.o.SessionTTL))
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (h *Handler) signout(w http.ResponseWriter, r *http.Request, ss *session) {
	h.ss.drop(ss)
	http.SetCookie(w, cookie(r, sessionCookie, "", Prefix, -1))
	http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
}

// done ends a form: the outcome is shown once on the page it goes back to.
func (h *Handler) done(w http.ResponseWriter, r *http.Request, ss *session, to string, f flash) {
	h.ss.setFlash(ss, f)
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, ss *session) {
	ov, err := h.o.Backend.Overview(r.Context())
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	h.render(w, r, http.StatusOK, "overview", ss, ov)
}

func (h *Handler) coverage(w http.ResponseWriter, r *http.Request, ss *session) {
	v, err := h.o.Backend.Coverage(r.Context())
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	p := pageOf(v, coverageFilter(r.URL.Query()))
	h.render(w, r, http.StatusOK, "coverage", ss, map[string]any{"View": v, "Page": p,
		"States": []string{StateUnguarded, StateGuarded, StateNotMatched, StateMissing, StateDrifted, StateSuspended}})
}

func (h *Handler) reconcile(w http.ResponseWriter, r *http.Request, ss *session) {
	if err := h.o.Backend.Reconcile(r.Context(), who(r)); err != nil {
		h.done(w, r, ss, "/ui/coverage", flash{Text: "Reconcile not started: " + err.Error(), Error: true})
		return
	}
	h.done(w, r, ss, "/ui/coverage", flash{Text: "Reconcile requested. This page shows its view once it has finished: reload it."})
}

// ruleRow is a rule with the subaccounts it matched in the last reconcile.
type ruleRow struct {
	Rule
	Matches int
	Sample  []AccountCoverage
	InView  bool // the last reconcile knew the rule
}

const ruleSample = 10

func (h *Handler) rules(w http.ResponseWriter, r *http.Request, ss *session) {
	rs, err := h.o.Backend.Rules(r.Context())
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	v, err := h.o.Backend.Coverage(r.Context())
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	rows := make([]ruleRow, len(rs))
	for i, rule := range rs {
		rows[i].Rule = rule
		j := slices.Index(v.Rules, rule.Name)
		if j < 0 {
			continue
		}
		rows[i].InView = true
		for _, a := range v.Accounts {
			if a.States[j] != StateNotMatched {
				rows[i].Matches++
				if len(rows[i].Sample) < ruleSample {
					rows[i].Sample = append(rows[i].Sample, a)
				}
			}
		}
	}
	h.render(w, r, http.StatusOK, "rules", ss, map[string]any{"Rules": rows, "At": v.At})
}

func (h *Handler) incidents(w http.ResponseWriter, r *http.Request, ss *session) {
	q := r.URL.Query()
	f := IncidentFilter{Rule: strings.TrimSpace(q.Get("rule")), AccountSID: strings.TrimSpace(q.Get("account")), Limit: 100}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n >= 1 && n <= 1000 {
		f.Limit = n
	}
	incs, err := h.o.Backend.Incidents(r.Context(), f)
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	h.render(w, r, http.StatusOK, "incidents", ss, map[string]any{"Filter": f, "Incidents": incs})
}

func (h *Handler) incidentOf(w http.ResponseWriter, r *http.Request, ss *session) (IncidentDetail, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		h.fail(w, r, ss, http.StatusNotFound, "no such incident")
		return IncidentDetail{}, false
	}
	inc, err := h.o.Backend.Incident(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		h.fail(w, r, ss, http.StatusNotFound, fmt.Sprintf("no incident %d", id))
		return IncidentDetail{}, false
	}
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return IncidentDetail{}, false
	}
	return inc, true
}

func (h *Handler) incident(w http.ResponseWriter, r *http.Request, ss *session) {
	inc, ok := h.incidentOf(w, r, ss)
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, "incident", ss, map[string]any{
		"I":              inc,
		"Events":         timeline(inc),
		"CanReactivate":  inc.Outcome == OutcomeSuspended && inc.Reactivation == nil,
		"AwaitsDecision": inc.Outcome == OutcomeAwaitingApproval,
		"MaxReason":      MaxReasonLength,
	})
}

func reasonOf(r *http.Request) (string, string) {
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	switch {
	case reason == "":
		return "", "A reason is required: why is it safe?"
	case len(reason) > MaxReasonLength:
		return "", fmt.Sprintf("The reason is longer than %d bytes.", MaxReasonLength)
	}
	return reason, ""
}

func (h *Handler) reactivate(w http.ResponseWriter, r *http.Request, ss *session) {
	inc, ok := h.incidentOf(w, r, ss)
	if !ok {
		return
	}
	back := fmt.Sprintf("/ui/incidents/%d", inc.ID)
	reason, bad := reasonOf(r)
	if bad != "" {
		h.done(w, r, ss, back, flash{Text: "Not reactivated. " + bad, Error: true})
		return
	}
	res, err := h.o.Backend.Reactivate(r.Context(), inc.AccountSID, reason, who(r))
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		h.done(w, r, ss, back, flash{Text: "Reactivation refused: " + refused.Reason, Error: true})
		return
	case err != nil:
		h.done(w, r, ss, back, flash{Text: "Reactivation failed: " + err.Error(), Error: true})
		return
	}
	msg := fmt.Sprintf("Reactivated %s (%s): the suspension of incident %d is undone; %d trigger(s) re-armed.",
		res.AccountName, res.AccountSID, res.IncidentID, res.Rearmed)
	if res.WasActive {
		msg += " Someone had already set it active at Twilio."
	}
	if len(res.Problems) > 0 {
		msg += " Problems (the next reconcile finishes them): " + strings.Join(res.Problems, "; ")
	}
	if res.IncidentID != 0 && res.IncidentID != inc.ID {
		back = fmt.Sprintf("/ui/incidents/%d", res.IncidentID)
	}
	h.done(w, r, ss, back, flash{Text: msg})
}

func (h *Handler) approve(w http.ResponseWriter, r *http.Request, ss *session) {
	h.decide(w, r, ss, "Approved", func(ctx context.Context, id int64, _ string) error {
		return h.o.Backend.Approve(ctx, id, who(r))
	}, false)
}

func (h *Handler) veto(w http.ResponseWriter, r *http.Request, ss *session) {
	h.decide(w, r, ss, "Vetoed", func(ctx context.Context, id int64, reason string) error {
		return h.o.Backend.Veto(ctx, id, reason, who(r))
	}, true)
}

func (h *Handler) decide(w http.ResponseWriter, r *http.Request, ss *session, what string,
	fn func(ctx context.Context, id int64, reason string) error, needReason bool) {
	inc, ok := h.incidentOf(w, r, ss)
	if !ok {
		return
	}
	back := fmt.Sprintf("/ui/incidents/%d", inc.ID)
	if inc.Outcome != OutcomeAwaitingApproval {
		h.done(w, r, ss, back, flash{Text: "Nothing to decide: the incident does not await approval.", Error: true})
		return
	}
	reason := ""
	if needReason {
		var bad string
		if reason, bad = reasonOf(r); bad != "" {
			h.done(w, r, ss, back, flash{Text: "Not vetoed. " + bad, Error: true})
			return
		}
	}
	if err := fn(r.Context(), inc.ID, reason); err != nil {
		h.done(w, r, ss, back, flash{Text: "Not done: " + err.Error(), Error: true})
		return
	}
	h.done(w, r, ss, back, flash{Text: what + "."})
}

func (h *Handler) guard(w http.ResponseWriter, r *http.Request, ss *session) {
	g, err := h.o.Backend.Guard(r.Context())
	if err != nil {
		h.fail(w, r, ss, http.StatusInternalServerError, err.Error())
		return
	}
	h.render(w, r, http.StatusOK, "guard", ss, g)
}

func (h *Handler) release(w http.ResponseWriter, r *http.Request, ss *session) {
	n, err := h.o.Backend.ReleaseGuard(r.Context(), who(r))
	if err != nil {
		h.done(w, r, ss, "/ui/guard", flash{Text: "Not released: " + err.Error(), Error: true})
		return
	}
	h.done(w, r, ss, "/ui/guard", flash{Text: fmt.Sprintf("Released %d held suspension(s): they run now.", n)})
}
