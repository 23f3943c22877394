package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/console"
	"github.com/usagebreaker/usagebreaker/internal/version"
	"github.com/usagebreaker/usagebreaker/store"
)

// The operator console (package console) on the admin listener, and the
// console.Backend it reads and acts through: today's store and breaker. Its
// actions are the admin API's own code paths.

// consoleRoutes serves the console under /ui/.
func (d *Daemon) consoleRoutes(mux *http.ServeMux) {
	h, err := console.New(console.Options{
		Backend: &consoleBackend{d: d, started: time.Now()},
		Token:   func() string { return d.cfg.Load().Admin.Token.Reveal() },
		Logger:  d.log.With("component", "console"),
		Now:     d.opts.Now,
	})
	if err != nil { // only a broken build (the templates are embedded)
		d.log.Error("console unavailable", "err", err)
		mux.HandleFunc(console.Prefix, func(w http.ResponseWriter, r *http.Request) {
			text(w, http.StatusInternalServerError, "the console is unavailable: "+err.Error())
		})
		return
	}
	mux.Handle(console.Prefix, h)
}

// consoleBackend implements console.Backend over the daemon.
type consoleBackend struct {
	d       *Daemon
	started time.Time

	mu      sync.Mutex
	covFrom *breaker.Coverage // the reconcile view cov was converted from
	cov     console.CoverageView
}

var _ console.Backend = (*consoleBackend)(nil)

// consoleIncidentScan bounds the incidents read to count a rule's trips or
// find held suspensions (the store's largest page).
const consoleIncidentScan = 1000

// replicas is this replica, and on Postgres the replicas that lead a loop
// (from the leader leases: a replica that leads none is not known here).
func (b *consoleBackend) replicas(ctx context.Context) []console.Replica {
	r := b.d.rep
	me := console.Replica{Name: r.name, Started: b.started}
	if !r.shared {
		me.Role = "this process (the only replica, on SQLite)"
		return []console.Replica{me}
	}
	var mine []string
	others := map[string][]string{}
	var order []string
	for _, loop := range []string{loopReconcile, loopPoll} {
		f, live, err := r.db.Leader(ctx, loop)
		if err != nil || !live {
			continue
		}
		if f.Holder == r.holder {
			mine = append(mine, loop)
			continue
		}
		if _, seen := others[f.Holder]; !seen {
			order = append(order, f.Holder)
		}
		others[f.Holder] = append(others[f.Holder], fmt.Sprintf("%s (epoch %d)", loop, f.Epoch))
	}
	me.Role = "this process"
	if len(mine) > 0 {
		me.Role += "; leads " + strings.Join(mine, ", ")
	}
	out := []console.Replica{me}
	for _, h := range order {
		name, _, _ := strings.Cut(h, "/")
		out = append(out, console.Replica{Name: name, Role: "leads " + strings.Join(others[h], ", ")})
	}
	return out
}

func (b *consoleBackend) Overview(ctx context.Context) (console.Overview, error) {
	d := b.d
	cfg := d.cfg.Load()
	ov := console.Overview{
		Instance: cfg.Instance, Version: version.Version, Ready: d.Ready(),
		Replicas:     b.replicas(ctx),
		PollSchedule: cfg.Poll.Schedule,
	}
	if r, ok := d.br.Reconciler().LastReconcile(); ok {
		run := &console.Run{Started: r.Started, Duration: r.Duration, Summary: fmt.Sprintf(
			"%d subaccounts, %d active: %d triggers created, %d updated, %d deleted, %d unchanged",
			r.Subaccounts, r.Active, r.Created, r.Updated, r.Deleted, r.Unchanged)}
		for _, e := range r.Errors {
			run.Errors = append(run.Errors, e.Error())
		}
		ov.LastReconcile = run
	}
	if p := d.bg.poll.last.Load(); p != nil {
		run := &console.Run{Started: p.Started, Duration: p.Duration, Summary: fmt.Sprintf(
			"%d subaccounts, %d polled with %d reads: %d over a threshold, %d incidents opened, %d already open",
			p.Subaccounts, p.Polled, p.Reads, p.Over, p.Opened, p.Known)}
		for _, e := range p.Errors {
			run.Errors = append(run.Errors, e.Error())
		}
		ov.LastPoll = run
	}
	fams, err := d.reg.Gather()
	if err != nil {
		return ov, fmt.Errorf("console: metrics: %w", err)
	}
	ov.ConfigReloadOK, ov.Twilio = readMetrics(fams)
	if ov.PendingActions, err = d.st.CountPendingActions(ctx); err != nil {
		return ov, fmt.Errorf("console: %w", err)
	}
	if ov.Guard, err = b.guardSummary(ctx); err != nil {
		return ov, err
	}
	return ov, nil
}

// readMetrics reads the reload gauge and the Twilio attempts from the registry.
func readMetrics(fams []*dto.MetricFamily) (reloadOK bool, tw console.TwilioCalls) {
	byCode := map[string]int{}
	for _, f := range fams {
		switch f.GetName() {
		case "usagebreaker_config_last_reload_successful":
			for _, m := range f.GetMetric() {
				reloadOK = m.GetGauge().GetValue() == 1
			}
		case "usagebreaker_twilio_requests_total":
			for _, m := range f.GetMetric() {
				n := int(m.GetCounter().GetValue())
				tw.Attempts += n
				for _, l := range m.GetLabel() {
					if l.GetName() != "code" {
						continue
					}
					if c, err := strconv.Atoi(l.GetValue()); err != nil || c >= 400 {
						byCode[l.GetValue()] += n
						tw.Failed += n
					}
				}
			}
		}
	}
	for c, n := range byCode {
		if n > 0 {
			tw.ByCode = append(tw.ByCode, console.CodeCount{Code: c, N: n})
		}
	}
	sort.Slice(tw.ByCode, func(i, j int) bool { return tw.ByCode[i].Code < tw.ByCode[j].Code })
	return reloadOK, tw
}

func (b *consoleBackend) guardSummary(ctx context.Context) (console.GuardSummary, error) {
	g := b.d.cfg.Load().Guard
	s := console.GuardSummary{On: g.MaxSuspensions > 0, MaxSuspensions: g.MaxSuspensions, Window: g.Window}
	var err error
	if s.HeldSuspensions, err = b.d.st.CountHeld(ctx); err != nil {
		return s, fmt.Errorf("console: %w", err)
	}
	if s.On {
		if s.SuspendedInWin, err = b.d.st.CountSuspensions(ctx, b.d.opts.Now().Add(-g.Window)); err != nil {
			return s, fmt.Errorf("console: %w", err)
		}
	}
	return s, nil
}

func (b *consoleBackend) Coverage(ctx context.Context) (console.CoverageView, error) {
	c, ok := b.d.br.Reconciler().LastCoverage()
	if !ok {
		return console.CoverageView{}, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.covFrom == c { // a reconcile's view never changes: convert it once
		return b.cov, nil
	}
	v := console.CoverageView{At: c.At, Rules: c.Rules, Accounts: make([]console.AccountCoverage, len(c.Accounts))}
	for i, a := range c.Accounts {
		// breaker.Cover* and console.State* are the same words.
		v.Accounts[i] = console.AccountCoverage{SID: a.SID, Name: a.FriendlyName, Status: a.Status, States: a.States, Error: a.Error}
	}
	b.covFrom, b.cov = c, v
	return v, nil
}

func (b *consoleBackend) Rules(ctx context.Context) ([]console.Rule, error) {
	cfg := b.d.cfg.Load()
	if cfg.Rules == nil {
		return nil, nil
	}
	now := b.d.opts.Now()
	var out []console.Rule
	for _, r := range cfg.Rules.Rules {
		cr := console.Rule{Name: r.Name, Description: r.Description,
			Watches: fmt.Sprintf("%s by %s ≥ %s, %s", r.UsageCategory, r.TriggerBy, r.Threshold, r.Recurring),
			Action:  r.Action, Source: fmt.Sprintf("%s:%d", r.File, r.Line),
			Period: breaker.PeriodKey(r.Recurring, now)}
		if v := r.Velocity; v != nil {
			cr.Watches = fmt.Sprintf("%s by %s grows %s within %s (steps of %s)", r.UsageCategory, r.TriggerBy, v.Amount, v.Within, v.Step())
			cr.Period = "velocity"
		}
		if r.DryRun {
			cr.Action += " (dry run)"
		}
		incs, err := b.d.st.ListIncidents(ctx, store.IncidentFilter{Rule: r.Name, Limit: consoleIncidentScan})
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		for _, inc := range incs {
			if inc.Period == cr.Period || strings.HasPrefix(inc.Period, cr.Period+"#") {
				cr.Trips++
			}
		}
		cr.TripsAtLeast = len(incs) == consoleIncidentScan && incs[len(incs)-1].Period == cr.Period
		out = append(out, cr)
	}
	return out, nil
}

func incidentOf(i store.Incident) console.Incident {
	return console.Incident{ID: i.ID, Rule: i.Rule, AccountSID: i.AccountSID, AccountName: i.AccountName, Period: i.Period,
		Source: string(i.Source), Category: i.UsageCategory, TriggerValue: i.TriggerValue, CurrentValue: i.CurrentValue,
		Action: i.Action, DryRun: i.DryRun, State: string(i.State), Outcome: string(i.Outcome), Detail: i.Detail, Firings: i.Firings,
		CreatedAt: i.CreatedAt, UpdatedAt: i.UpdatedAt}
}

func actionOf(a store.Action) console.Action {
	ca := console.Action{Kind: string(a.Kind), State: string(a.State), Outcome: string(a.Outcome), Detail: a.Detail, Attempts: a.Attempts,
		Held: a.State == store.ActionHeld, Released: a.Released, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
		Owner: a.Owner, WriteSentAt: a.WriteSentAt}
	if a.State == store.ActionAvailable {
		ca.NextAttemptAt = a.NextAttemptAt
	}
	return ca
}

// details reads the actions and reactivations of incidents.
func (b *consoleBackend) details(ctx context.Context, incs []store.Incident) ([]console.IncidentDetail, error) {
	ids := make([]int64, len(incs))
	for i, inc := range incs {
		ids[i] = inc.ID
	}
	acts, err := b.d.st.IncidentActions(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	reacts, err := b.d.st.Reactivations(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	decisions, err := b.d.st.Approvals(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	out := make([]console.IncidentDetail, len(incs))
	for i, inc := range incs {
		out[i].Incident = incidentOf(inc)
		for _, a := range acts[inc.ID] {
			ca := actionOf(a)
			out[i].Held = out[i].Held || ca.Held
			out[i].Actions = append(out[i].Actions, ca)
		}
		if a, ok := decisions[inc.ID]; ok {
			out[i].Approvals = append(out[i].Approvals, console.Approval{At: a.CreatedAt,
				Decision: map[store.Decision]string{store.DecisionApprove: "approved", store.DecisionVeto: "vetoed"}[a.Decision],
				Actor:    a.Actor, Reason: a.Reason})
		}
		if r, ok := reacts[inc.ID]; ok {
			out[i].Reactivated = true
			out[i].Reactivation = &console.Reactivation{At: r.CreatedAt, Via: r.Via, Actor: r.Actor, Reason: r.Reason,
				Rearmed: r.Rearmed, Detail: r.Detail}
		}
	}
	return out, nil
}

func (b *consoleBackend) Incidents(ctx context.Context, f console.IncidentFilter) ([]console.Incident, error) {
	incs, err := b.d.st.ListIncidents(ctx, store.IncidentFilter{Rule: f.Rule, AccountSID: f.AccountSID, Limit: f.Limit})
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	ds, err := b.details(ctx, incs)
	if err != nil {
		return nil, err
	}
	out := make([]console.Incident, len(ds))
	for i := range ds {
		out[i] = ds[i].Incident
	}
	return out, nil
}

func (b *consoleBackend) Incident(ctx context.Context, id int64) (console.IncidentDetail, error) {
	inc, err := b.d.st.Incident(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return console.IncidentDetail{}, console.ErrNotFound
	}
	if err != nil {
		return console.IncidentDetail{}, fmt.Errorf("console: %w", err)
	}
	ds, err := b.details(ctx, []store.Incident{inc})
	if err != nil {
		return console.IncidentDetail{}, err
	}
	return ds[0], nil
}

// Guard lists the held suspensions among the newest incidents (a hold is
// recent by nature); the counts are exact. This version holds no deletions.
func (b *consoleBackend) Guard(ctx context.Context) (console.GuardState, error) {
	gs := console.GuardState{}
	var err error
	if gs.GuardSummary, err = b.guardSummary(ctx); err != nil {
		return gs, err
	}
	if gs.HeldSuspensions == 0 {
		return gs, nil
	}
	incs, err := b.d.st.ListIncidents(ctx, store.IncidentFilter{Limit: consoleIncidentScan})
	if err != nil {
		return gs, fmt.Errorf("console: %w", err)
	}
	ds, err := b.details(ctx, incs)
	if err != nil {
		return gs, err
	}
	for _, inc := range ds {
		for _, a := range inc.Actions {
			if a.Held {
				gs.Suspensions = append(gs.Suspensions, console.Held{IncidentID: inc.ID, AccountSID: inc.AccountSID,
					AccountName: inc.AccountName, Rule: inc.Rule, Detail: a.Detail, Since: a.UpdatedAt})
			}
		}
	}
	gs.Partial = len(gs.Suspensions) < gs.HeldSuspensions
	return gs, nil
}

// Reconcile is POST /api/v1/reconcile.
func (b *consoleBackend) Reconcile(ctx context.Context, who string) error {
	b.d.RequestReconcile()
	return nil
}

// Reactivate is POST /api/v1/accounts/{sid}/reactivate.
func (b *consoleBackend) Reactivate(ctx context.Context, sid, reason, who string) (console.Reactivated, error) {
	res, status, err := b.d.reactivateAccount(ctx, sid, reason, who)
	if err != nil {
		if status == http.StatusConflict || status == http.StatusBadRequest {
			return console.Reactivated{}, &console.RefusedError{Reason: err.Error()}
		}
		return console.Reactivated{}, err
	}
	return console.Reactivated{AccountSID: res.AccountSID, AccountName: res.AccountName, IncidentID: res.IncidentID,
		WasActive: res.WasActive, Rearmed: len(res.Rearmed), Problems: res.Problems}, nil
}

// ReleaseGuard is POST /api/v1/guard/release.
func (b *consoleBackend) ReleaseGuard(ctx context.Context, who string) (int, error) {
	return b.d.br.ReleaseHeld(ctx, who)
}

// Approve and Veto are the admin API's approve and veto (daemon/approval.go).
func (b *consoleBackend) Approve(ctx context.Context, incidentID int64, who string) error {
	return b.decide(ctx, incidentID, store.DecisionApprove, "approved in the console", who)
}

func (b *consoleBackend) Veto(ctx context.Context, incidentID int64, reason, who string) error {
	return b.decide(ctx, incidentID, store.DecisionVeto, reason, who)
}

func (b *consoleBackend) decide(ctx context.Context, id int64, dec store.Decision, reason, who string) error {
	_, status, err := b.d.decide(ctx, id, dec, reason, who)
	switch {
	case err == nil:
		return nil
	case status == http.StatusNotFound:
		return console.ErrNotFound
	case status < 500:
		return &console.RefusedError{Reason: err.Error()}
	}
	return err
}
