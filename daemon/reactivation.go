package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// The people-in-the-loop wiring: notifiers from the config, the admin API's
// reactivate and guard endpoints, and what /api/v1/incidents adds for them.

// HeaderOperator is set by the CLI to the local user: recorded (as claimed)
// in the reactivation audit next to the caller's address.
const HeaderOperator = "X-Usagebreaker-Operator"

// MaxReasonLength bounds a reactivation reason.
const MaxReasonLength = 1000

// ReactivateTimeout bounds a reactivation started through the admin API. It
// runs to the end even if the caller hangs up: cut short between its steps
// (status, re-arm, audit) it would leave work for the reconciler, and the
// caller would not know what was done.
const ReactivateTimeout = 2 * time.Minute

// fullSettings is settingsOf plus the notifiers, built for the Twilio client.
func (d *Daemon) fullSettings(cfg *config.Config) (breaker.Settings, error) {
	s := settingsOf(cfg)
	ops := breaker.OperatorSettings{
		DefaultNotifiers: cfg.DefaultNotifiers,
		Guard:            breaker.GuardSettings{MaxSuspensions: cfg.Guard.MaxSuspensions, Window: cfg.Guard.Window},
		AdminURL:         adminURL(cfg.Server.AdminListen),
	}
	for _, n := range cfg.Notifiers {
		// Not the daemon's (possibly simulated) clock: receivers check the
		// webhook timestamp and the mail Date against the wall clock.
		nn, err := notify.New(specOf(n), notify.Deps{API: d.api})
		if err != nil {
			return s, err
		}
		ops.Notifiers = append(ops.Notifiers, nn)
	}
	s.Operator = ops
	if cfg.Rules != nil {
		for _, r := range cfg.Rules.Rules {
			if r.Action == "notify" && !r.DryRun && len(d.notifierNamesFor(cfg, r.NotifySet, r.Notify)) == 0 {
				d.log.Warn("rule only notifies, but no notifier is set for it (notify or default_notifiers): its incidents reach nobody", "rule", r.Name)
			}
		}
	}
	return s, nil
}

func (d *Daemon) notifierNamesFor(cfg *config.Config, set bool, names []string) []string {
	if set {
		return names
	}
	return cfg.DefaultNotifiers
}

func specOf(n config.Notifier) notify.Spec {
	s := notify.Spec{Name: n.Name, Type: n.Type, Template: n.Template, GuardTemplate: n.GuardTemplate, Timeout: n.Timeout,
		From: n.From, MessagingServiceSID: n.MessagingServiceSID, To: n.To,
		WebhookURL: n.WebhookURL.Reveal(), URL: n.URL, Secret: n.Secret.Reveal(),
		SMTP: n.SMTP, Username: n.Username, Password: n.Password.Reveal(), Subject: n.Subject, CAPEM: n.CAPEM}
	if n.Type == notify.TypeEmail {
		s.MailFrom = n.From
		s.From = ""
	}
	return s
}

// adminURL is how an operator on the same host reaches the admin listener.
func adminURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return breaker.DefaultAdminURL
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (d *Daemon) operatorRoutes(mux *http.ServeMux) {
	mux.Handle("POST /api/v1/accounts/{sid}/reactivate", d.authed(d.reactivate))
	mux.Handle("POST /api/v1/guard/release", d.authed(d.guardRelease))
	d.approvalRoutes(mux)
}

// ReactivateJSON is the answer of POST /api/v1/accounts/{sid}/reactivate.
type ReactivateJSON struct {
	AccountSID    string                   `json:"account_sid"`
	AccountName   string                   `json:"account_name"`
	Status        string                   `json:"status"`
	IncidentID    int64                    `json:"incident_id"`
	WasActive     bool                     `json:"was_active"` // someone had already set it active at Twilio
	Rearmed       []breaker.RearmedTrigger `json:"rearmed"`
	Problems      []string                 `json:"problems,omitempty"`
	Reason        string                   `json:"reason"`
	Actor         string                   `json:"actor"`
	ReactivatedAt time.Time                `json:"reactivated_at"`

	// EpisodeIncidents are the later incidents of the same burst that this
	// reactivation also covers (other rules that fired and found the account
	// suspended, or did not act); their rules are re-armed too.
	EpisodeIncidents []int64 `json:"episode_incidents,omitempty"`
}

// ErrorJSON is the body of a refused or failed admin API call.
type ErrorJSON struct {
	Error string `json:"error"`
}

func actor(r *http.Request) string {
	a := "admin API from " + r.RemoteAddr
	if op := strings.TrimSpace(r.Header.Get(HeaderOperator)); op != "" {
		if len(op) > 100 {
			op = op[:100]
		}
		a += fmt.Sprintf(" (operator %q, as claimed)", op)
	}
	return a
}

func (d *Daemon) reactivate(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Reason string `json:"reason"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorJSON{`the body must be JSON {"reason": "..."}: ` + err.Error()})
		return
	}
	out, status, err := d.reactivateAccount(r.Context(), r.PathValue("sid"), body.Reason, actor(r))
	if err != nil {
		writeJSON(w, status, ErrorJSON{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// reactivateAccount is a reactivation asked by a person: through the admin
// API or the console, the same checks, audit and logs. A refusal or failure
// comes with the HTTP status the admin API answers it with.
func (d *Daemon) reactivateAccount(ctx context.Context, sid, reason, who string) (ReactivateJSON, int, error) {
	if !breaker.ValidAccountSID(sid) {
		return ReactivateJSON{}, http.StatusBadRequest, fmt.Errorf("%q is not an account SID (AC followed by 32 hex digits)", sid)
	}
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return ReactivateJSON{}, http.StatusBadRequest, errors.New("a reason is required: why is it safe to reactivate this account?")
	case len(reason) > MaxReasonLength:
		return ReactivateJSON{}, http.StatusBadRequest, fmt.Errorf("the reason is longer than %d bytes", MaxReasonLength)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ReactivateTimeout)
	defer cancel()
	res, err := d.br.Reactivator().Reactivate(ctx, breaker.ReactivateRequest{AccountSID: sid, Reason: reason, Actor: who, Via: store.ViaManual})
	var refused *breaker.RefusedError
	switch {
	case errors.As(err, &refused):
		d.log.Warn("admin API: reactivation refused", "account", sid, "by", who, "why", refused.Reason)
		return ReactivateJSON{}, http.StatusConflict, refused
	case err != nil:
		status := http.StatusInternalServerError
		var te *twilioapi.Error
		if errors.As(err, &te) {
			status = http.StatusBadGateway
		}
		d.log.Error("admin API: reactivation failed", "account", sid, "by", who, "err", err)
		return ReactivateJSON{}, status, err
	}
	out := ReactivateJSON{AccountSID: res.Account.SID, AccountName: res.Account.FriendlyName, Status: res.Account.Status,
		IncidentID: res.Incident.ID, EpisodeIncidents: episodeIDs(res.Episode), WasActive: res.WasActive, Rearmed: res.Rearmed, Problems: res.Problems,
		Reason: reason, Actor: who, ReactivatedAt: res.Reactivation.CreatedAt}
	if out.Rearmed == nil {
		out.Rearmed = []breaker.RearmedTrigger{}
	}
	return out, http.StatusOK, nil
}

func episodeIDs(incs []store.Incident) []int64 {
	var out []int64
	for _, inc := range incs {
		out = append(out, inc.ID)
	}
	return out
}

func (d *Daemon) guardRelease(w http.ResponseWriter, r *http.Request) {
	n, err := d.br.ReleaseHeld(r.Context(), actor(r))
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, ErrorJSON{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"released": n})
}

// ActionJSON is an action of an incident in /api/v1/incidents.
type ActionJSON struct {
	Kind          store.ActionKind  `json:"kind"`
	State         store.ActionState `json:"state"` // available | running | held | done | failed
	Outcome       store.Outcome     `json:"outcome,omitempty"`
	Detail        string            `json:"detail,omitempty"`
	Attempts      int               `json:"attempts"`
	Held          bool              `json:"held,omitempty"`
	NextAttemptAt time.Time         `json:"next_attempt_at"`
	Owner         string            `json:"owner,omitempty"`         // the process running it
	WriteSentAt   *time.Time        `json:"write_sent_at,omitempty"` // when a status write was last sent
}

// ReactivationJSON is an incident's reactivation in /api/v1/incidents.
type ReactivationJSON struct {
	At      time.Time `json:"at"`
	Via     string    `json:"via"` // manual | scheduled
	Actor   string    `json:"actor"`
	Reason  string    `json:"reason"`
	Rearmed int       `json:"rearmed"`
	Detail  string    `json:"detail"`
}

// enrich adds each incident's actions, held flag and reactivation.
func (d *Daemon) enrich(ctx context.Context, out []IncidentJSON) error {
	ids := make([]int64, len(out))
	for i := range out {
		ids[i] = out[i].ID
	}
	acts, err := d.st.IncidentActions(ctx, ids)
	if err != nil {
		return err
	}
	reacts, err := d.st.Reactivations(ctx, ids)
	if err != nil {
		return err
	}
	decisions, err := d.st.Approvals(ctx, ids)
	if err != nil {
		return err
	}
	for i := range out {
		out[i].Actions = []ActionJSON{}
		for _, a := range acts[out[i].ID] {
			aj := ActionJSON{Kind: a.Kind, State: a.State, Outcome: a.Outcome, Detail: a.Detail, Attempts: a.Attempts,
				Held: a.State == store.ActionHeld, Owner: a.Owner}
			if a.State == store.ActionAvailable {
				aj.NextAttemptAt = a.NextAttemptAt
			}
			if !a.WriteSentAt.IsZero() {
				t := a.WriteSentAt
				aj.WriteSentAt = &t
			}
			if aj.Held {
				out[i].Held = true
			}
			out[i].Actions = append(out[i].Actions, aj)
		}
		if a, ok := decisions[out[i].ID]; ok {
			out[i].Decision = &DecisionJSON{IncidentID: a.IncidentID, Decision: a.Decision, Actor: a.Actor, Reason: a.Reason, At: a.CreatedAt}
		}
		if r, ok := reacts[out[i].ID]; ok {
			out[i].Reactivation = &ReactivationJSON{At: r.CreatedAt, Via: r.Via, Actor: r.Actor, Reason: r.Reason,
				Rearmed: r.Rearmed, Detail: r.Detail}
		}
	}
	return nil
}
