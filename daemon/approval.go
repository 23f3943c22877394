package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/store"
)

// DecisionJSON is the answer of POST /api/v1/incidents/{id}/approve|veto,
// and an incident's decision in /api/v1/incidents.
type DecisionJSON struct {
	IncidentID int64          `json:"incident_id"`
	Decision   store.Decision `json:"decision"` // approve | veto
	Actor      string         `json:"actor"`
	Reason     string         `json:"reason"`
	At         time.Time      `json:"at"`
}

func (d *Daemon) approvalRoutes(mux *http.ServeMux) {
	mux.Handle("POST /api/v1/incidents/{id}/approve", d.authed(d.decisionHandler(store.DecisionApprove)))
	mux.Handle("POST /api/v1/incidents/{id}/veto", d.authed(d.decisionHandler(store.DecisionVeto)))
}

func (d *Daemon) decisionHandler(dec store.Decision) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Reason string `json:"reason"`
		}
		jd := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
		jd.DisallowUnknownFields()
		if err := jd.Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, ErrorJSON{`the body must be JSON {"reason": "..."}: ` + err.Error()})
			return
		}
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id <= 0 {
			writeJSON(w, http.StatusBadRequest, ErrorJSON{fmt.Sprintf("%q is not an incident ID", r.PathValue("id"))})
			return
		}
		out, status, err := d.decide(r.Context(), id, dec, body.Reason, actor(r))
		if err != nil {
			writeJSON(w, status, ErrorJSON{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// decide is a person's approval or veto: through the admin API or the
// console, the same checks, audit and logs. A refusal comes with the HTTP
// status the admin API answers it with.
func (d *Daemon) decide(ctx context.Context, id int64, dec store.Decision, reason, who string) (DecisionJSON, int, error) {
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return DecisionJSON{}, http.StatusBadRequest, fmt.Errorf("a reason is required: why %s incident %d?", map[store.Decision]string{store.DecisionApprove: "approve", store.DecisionVeto: "veto"}[dec], id)
	case len(reason) > MaxReasonLength:
		return DecisionJSON{}, http.StatusBadRequest, fmt.Errorf("the reason is longer than %d bytes", MaxReasonLength)
	}
	a, err := d.br.Decide(context.WithoutCancel(ctx), id, dec, who, reason)
	var refused *breaker.RefusedError
	switch {
	case errors.Is(err, store.ErrNotFound):
		return DecisionJSON{}, http.StatusNotFound, fmt.Errorf("no incident %d", id)
	case errors.Is(err, store.ErrExists):
		return DecisionJSON{}, http.StatusConflict, fmt.Errorf("incident %d was decided before", id)
	case errors.As(err, &refused):
		d.log.Warn("admin API: decision refused", "incident", id, "decision", dec, "by", who, "why", refused.Reason)
		return DecisionJSON{}, http.StatusConflict, refused
	case err != nil:
		d.log.Error("admin API: decision failed", "incident", id, "decision", dec, "by", who, "err", err)
		return DecisionJSON{}, http.StatusInternalServerError, err
	}
	return DecisionJSON{IncidentID: id, Decision: a.Decision, Actor: a.Actor, Reason: a.Reason, At: a.CreatedAt}, http.StatusOK, nil
}
