package daemon

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/store"
)

// adminMux serves the admin listener: metrics, health, readiness, the
// effective config, reload, and the bearer-protected /api/v1.
func (d *Daemon) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /-/ready", func(w http.ResponseWriter, r *http.Request) {
		if !d.rep.backendUp.Load() {
			text(w, http.StatusServiceUnavailable, "not ready: the state database cannot be reached")
			return
		}
		if !d.Ready() {
			text(w, http.StatusServiceUnavailable, "not ready: the first reconcile has not finished")
			return
		}
		text(w, http.StatusOK, "ready")
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		out, err := d.cfg.Load().Redacted()
		if err != nil {
			text(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Content-Type", "text/yaml; charset=utf-8")
		_, _ = w.Write(out)
	})
	mux.HandleFunc("POST /-/reload", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Reload(); err != nil {
			text(w, http.StatusInternalServerError, "reload rejected; the old config keeps running:\n"+err.Error())
			return
		}
		text(w, http.StatusOK, "reloaded")
	})
	mux.Handle("POST /api/v1/reconcile", d.authed(func(w http.ResponseWriter, r *http.Request) {
		d.RequestReconcile()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "reconcile requested"})
	}))
	mux.Handle("GET /api/v1/incidents", d.authed(d.listIncidents))
	mux.Handle("POST /api/v1/reconcile/release", d.authed(func(w http.ResponseWriter, r *http.Request) {
		// The trigger deletions a reconcile held (reconcile.max_deletes,
		// allow_disarm); the reconcile that deletes them starts now.
		writeJSON(w, http.StatusOK, map[string]int{"released": d.br.Reconciler().ReleaseDeletes()})
	}))
	d.operatorRoutes(mux) // reactivate, guard release (reactivation.go)
	d.consoleRoutes(mux)  // the operator console at /ui/ (console.go)
	mux.Handle("POST /api/v1/poll", d.authed(func(w http.ResponseWriter, r *http.Request) {
		d.RequestPoll()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "poll requested"})
	}))
	return mux
}

// authed requires "Authorization: Bearer {admin token}", compared in constant
// time. Without a configured token the admin API is off (404).
func (d *Daemon) authed(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := d.cfg.Load().Admin.Token.Reveal()
		if want == "" {
			text(w, http.StatusNotFound, "the admin API is off: set admin.token or admin.token_file")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		gotSum, wantSum := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want)) // not even the length leaks
		if !ok || subtle.ConstantTimeCompare(gotSum[:], wantSum[:]) != 1 {
			d.log.Warn("admin API: refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="usagebreaker"`)
			text(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		d.log.Info("admin API", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		h(w, r)
	})
}

// IncidentJSON is an incident as /api/v1/incidents shows it.
type IncidentJSON struct {
	ID           int64         `json:"id"`
	Rule         string        `json:"rule"`
	AccountSID   string        `json:"account_sid"`
	AccountName  string        `json:"account_name"`
	Period       string        `json:"period"`
	Source       store.Source  `json:"source"`
	Category     string        `json:"usage_category"`
	TriggerBy    string        `json:"trigger_by"`
	TriggerValue string        `json:"trigger_value"` // as Twilio echoed it ("5.000000")
	Threshold    string        `json:"threshold"`     // the same, as the rule writes it ("5")
	CurrentValue string        `json:"current_value"`
	Action       string        `json:"action"`
	DryRun       bool          `json:"dry_run"`
	State        store.State   `json:"state"`
	Outcome      store.Outcome `json:"outcome"`
	Detail       string        `json:"detail"`
	Firings      int           `json:"firings"`
	CreatedAt    time.Time     `json:"created_at"`
	UpdatedAt    time.Time     `json:"updated_at"`

	// People in the loop (reactivation.go).
	Held         bool              `json:"held"` // the guard holds its suspension
	Actions      []ActionJSON      `json:"actions"`
	Reactivation *ReactivationJSON `json:"reactivation"`
	Decision     *DecisionJSON     `json:"decision,omitempty"` // a person's approval or veto (rule approval)
}

func (d *Daemon) listIncidents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.IncidentFilter{Rule: q.Get("rule"), AccountSID: q.Get("account")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			text(w, http.StatusBadRequest, "limit must be a whole number from 1 to 1000")
			return
		}
		f.Limit = n
	}
	incs, err := d.st.ListIncidents(r.Context(), f)
	if err != nil {
		text(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]IncidentJSON, 0, len(incs))
	for _, i := range incs {
		out = append(out, IncidentJSON{
			ID: i.ID, Rule: i.Rule, AccountSID: i.AccountSID, AccountName: i.AccountName, Period: i.Period,
			Source: i.Source, Category: i.UsageCategory, TriggerBy: i.TriggerBy, TriggerValue: i.TriggerValue,
			Threshold: decimal.Tidy(i.TriggerValue), CurrentValue: decimal.Tidy(i.CurrentValue), Action: i.Action, DryRun: i.DryRun, State: i.State, Outcome: i.Outcome,
			Detail: i.Detail, Firings: i.Firings, CreatedAt: i.CreatedAt, UpdatedAt: i.UpdatedAt,
		})
	}
	if err := d.enrich(r.Context(), out); err != nil {
		text(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
