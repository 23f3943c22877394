package breaker

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Reactivation and re-arm.
//
// A recurring trigger fires at most once per period. After a suspension the
// trigger that fired is spent until the period ends, so an account
// reactivated mid-period would be unguarded. Reactivation therefore re-arms:
// each owned trigger of the account that fired this period is replaced by one
// with TriggerValue "+{rearm_allowance}" (Twilio: that much above the current
// usage). The exception is remembered (store.Rearm, per account, rule and
// period) so that the reconciler keeps the re-armed trigger while the period
// lasts and restores the rule's own threshold when it rolls over. Firings in
// the period after a re-arm belong to its generation: incident period
// "daily:2026-11-24#2", a new incident, so further spend trips again, while
// repeats of the first firing still dedupe on their token.

// Reactivator reactivates the subaccounts the breaker suspended and re-arms
// their spent triggers (Reactivate, and the reactivate worker), and keeps
// the re-arm exceptions the reconciler honours (applyRearms).
type Reactivator struct {
	common
	api    reactivateAPI // the callback memo over the Twilio API
	store  reactivateStore
	writes statusWriter // the trip pipeline (the Breaker)
	// writeLease is how long a status write whose outcome is unknown may
	// still land (Options.WriteLease).
	writeLease time.Duration
	// owner and lease: a manual reactivation's hold on its account (the
	// engine's name in claims, and its claim lease); holdWait: how long it
	// waits for an action of the account to finish before it refuses.
	owner    string
	lease    time.Duration
	holdWait time.Duration
}

// holdPoll is how often a manual reactivation tries again to hold an
// account while an action of it runs; defaultHoldWait how long it tries.
const (
	holdPoll        = 100 * time.Millisecond
	defaultHoldWait = 10 * time.Second
)

// reactivateAPI is the part of the Twilio API reactivation uses.
type reactivateAPI interface {
	FetchAccount(ctx context.Context, sid string) (twilioapi.Account, error)
	SetAccountStatus(ctx context.Context, sid, status string) (twilioapi.Account, error)
	ListTriggers(ctx context.Context, accountSID string) ([]twilioapi.Trigger, error)
	CreateTrigger(ctx context.Context, accountSID string, spec twilioapi.TriggerSpec) (twilioapi.Trigger, error)
	DeleteTrigger(ctx context.Context, accountSID, triggerSID string) error
}

// reactivateStore is the part of the store reactivation uses: incidents,
// holds, re-arm exceptions and the reactivation audit.
type reactivateStore interface {
	Incident(ctx context.Context, id int64) (store.Incident, error)
	ListIncidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error)
	IncidentActions(ctx context.Context, incidentIDs []int64) (map[int64][]store.Action, error)
	HoldAccount(ctx context.Context, accountSID, owner string, now, until time.Time) error
	MarkHoldWriteSent(ctx context.Context, accountSID, owner string, at, until time.Time) error
	ReleaseAccount(ctx context.Context, accountSID, owner string, until time.Time) error
	BeginRearm(ctx context.Context, accountSID, rule, period, allowance string, expiresAt time.Time) (store.Rearm, error)
	CompleteRearm(ctx context.Context, accountSID, rule, period string, generation int, triggerSID, triggerValue string) error
	OpenRearms(ctx context.Context, accountSID string, now time.Time) ([]store.Rearm, error)
	MarkRearmsRestored(ctx context.Context, now time.Time) (int, error)
	RecordReactivation(ctx context.Context, r store.Reactivation) (store.Reactivation, error)
	Reactivations(ctx context.Context, incidentIDs []int64) (map[int64]store.Reactivation, error)
}

// statusWriter is what reactivation needs of the trip pipeline (trip.go):
// to note a status write it sends, so that a read of the account started
// before it is known to be stale.
type statusWriter interface {
	wroteStatus(sid string)
}

// RefusedError is a reactivation the breaker will not do, with why.
type RefusedError struct {
	Reason string
	// Pending: a newer incident is still being handled (or held by the
	// guard); the answer may change once it has ended.
	Pending bool
}

func (e *RefusedError) Error() string { return e.Reason }

// WriteUnknownError is a reactivation whose Status=active write was sent (or
// may have been) and got no answer saying it was refused (a 5xx, a timeout,
// a broken connection): it may still land, until a write lease after SentAt.
type WriteUnknownError struct {
	Err    error
	SentAt time.Time
}

func (e *WriteUnknownError) Error() string {
	return "set the account active (the write may still land): " + e.Err.Error()
}

func (e *WriteUnknownError) Unwrap() error { return e.Err }

// ReactivateRequest asks for a reactivation.
type ReactivateRequest struct {
	AccountSID string
	Reason     string
	Actor      string // who asks: the admin API caller, or the rule's policy
	Via        string // store.ViaManual | store.ViaScheduled
	// IncidentID, when set, is the suspension to undo: refused unless it is
	// the account's newest suspension (a scheduled reactivation is for its
	// own incident).
	IncidentID int64
}

// RearmedTrigger is one trigger replaced on reactivation.
type RearmedTrigger struct {
	Rule         string `json:"rule"`
	Period       string `json:"period"`
	Generation   int    `json:"generation"`
	TriggerSID   string `json:"trigger_sid"`
	TriggerValue string `json:"trigger_value"` // the absolute value Twilio computed from "+allowance"
	Allowance    string `json:"allowance"`
	Replaced     string `json:"replaced"` // the spent trigger's SID
}

// ReactivateResult is what a reactivation did.
type ReactivateResult struct {
	Incident store.Incident // the suspension undone; it carries the reactivation record
	// Episode are the incidents newer than Incident that this reactivation
	// also covers (newest first): other rules that fired in the same burst
	// and found the account already suspended, were skipped, dry runs or
	// only notified. Their rules are re-armed too.
	Episode      []store.Incident
	Account      twilioapi.Account
	WasActive    bool // someone had already set it active at Twilio
	Rearmed      []RearmedTrigger
	Problems     []string // re-arm steps that failed; the next reconcile finishes them
	Reactivation store.Reactivation
}

// maxEpisode bounds the incidents of an account read to find the suspension
// to undo (the store's largest page).
const maxEpisode = 1000

// Reactivate reactivates a subaccount the breaker suspended: the newest
// incident of the account whose outcome is "suspended" is undone, unless it
// was reactivated already or a newer incident still needs the account
// suspended (one still pending or held by the guard, or a newer suspension).
// Newer incidents that ended otherwise (already_suspended, skipped, dry_run,
// notified, failed) are part of the same episode and do not block: one burst
// often fires several rules, and only the first one suspends.
//
// Nothing is changed unless the re-arm is guaranteed: the account's triggers
// are listed and the re-arm exceptions recorded before Status=active is
// written, so a re-arm cut short by a Twilio error or a crash after the
// status write is finished by the next reconcile. Every owned trigger that
// fired this period, and the trigger of every rule of the episode's
// incidents in their current period, is re-armed. The suspending incident
// gets the audit record (who, why). A *RefusedError says why not.
func (ra *Reactivator) Reactivate(ctx context.Context, req ReactivateRequest) (ReactivateResult, error) {
	var res ReactivateResult
	if !ValidAccountSID(req.AccountSID) {
		return res, &RefusedError{Reason: fmt.Sprintf("%q is not an account SID (AC followed by 32 hex digits)", req.AccountSID)}
	}
	if strings.TrimSpace(req.Reason) == "" {
		return res, &RefusedError{Reason: "a reason is required"}
	}
	// Not while an action of any process works on the account: a
	// scheduled reactivation runs under its action's claim, a manual one
	// holds the account in the store (store/holds.go), so no trip of the
	// account is claimed until it is done, and none can read the account
	// while its write may land. The hold comes first: an action of this
	// process that holds the account may need its lock to finish.
	var hold *accountHold
	if req.Via == store.ViaManual {
		h, err := ra.hold(ctx, req.AccountSID)
		if err != nil {
			return res, err
		}
		hold = h
		defer hold.release(ctx)
	}
	// Nor while the reconciler works on it.
	unlock := ra.locks.lock(req.AccountSID)
	defer unlock()
	defer ra.touchTriggers(req.AccountSID) // before the unlock: a reconcile planned before plans again

	inc, episode, err := ra.reactivationTarget(ctx, req)
	if err != nil {
		return res, err
	}
	res.Incident, res.Episode = inc, episode
	prev, err := ra.store.Reactivations(ctx, []int64{inc.ID})
	if err != nil {
		return res, err
	}
	if p, ok := prev[inc.ID]; ok {
		return res, &RefusedError{Reason: fmt.Sprintf("already reactivated at %s by %s (%s); there is no newer suspension",
			p.CreatedAt.UTC().Format(time.RFC3339), p.Actor, p.Reason)}
	}

	acct, err := ra.api.FetchAccount(ctx, req.AccountSID)
	if err != nil {
		return res, fmt.Errorf("read the account: %w", err)
	}
	if acct.Status == twilioapi.StatusClosed {
		return res, &RefusedError{Reason: "the account is closed; Twilio cannot reopen it"}
	}
	// Before anything changes: what to re-arm, recorded durably. Should any
	// of it fail, the account is left as it is.
	s := ra.settings.Load()
	now := ra.now()
	ts, err := ra.api.ListTriggers(ctx, acct.SID)
	if err != nil {
		return res, fmt.Errorf("list the account's triggers (nothing was changed): %w", err)
	}
	plans := planRearm(s, acct, ts, append([]store.Incident{inc}, episode...), now)
	for i := range plans {
		p := &plans[i]
		// The exception first: the reconciler finishes it (creates the
		// "+allowance" trigger) whatever happens after the status write, and
		// a firing of the new trigger already belongs to the new generation.
		p.ex, err = ra.store.BeginRearm(ctx, acct.SID, p.rule.Name, p.period, p.rule.Allowance().String(), rules.PeriodEnd(p.rule.Recurring, now))
		if err != nil {
			return res, fmt.Errorf("record the re-arm of %s (the account was not changed): %w", p.rule.Name, err)
		}
	}

	if acct.Status == twilioapi.StatusActive {
		res.WasActive = true
	} else {
		sendCtx, err := hold.markSent(ctx)
		if err != nil {
			if len(plans) > 0 {
				ra.requestReconcile() // the recorded re-arms: nothing else changed
			}
			return res, err
		}
		defer sendCtx.cancel()
		ra.writes.wroteStatus(req.AccountSID)
		var (
			mu   sync.Mutex
			sent time.Time
		)
		wctx := twilioapi.OnSent(sendCtx.ctx, func() {
			mu.Lock()
			sent = ra.now()
			mu.Unlock()
		})
		acct, err = ra.api.SetAccountStatus(wctx, req.AccountSID, twilioapi.StatusActive)
		if err != nil {
			if len(plans) > 0 {
				// Should the write have landed after all, the reconciler
				// finishes the recorded re-arms.
				ra.requestReconcile()
			}
			mu.Lock()
			sentAt := sent
			mu.Unlock()
			if s := statusOf(err); !(s >= 400 && s < 500) && (!sentAt.IsZero() || !twilioapi.NotSent(err)) {
				if sentAt.IsZero() {
					sentAt = ra.now()
				}
				hold.mayLand() // kept until the write can no longer land
				return res, &WriteUnknownError{Err: err, SentAt: sentAt}
			}
			return res, fmt.Errorf("set the account active: %w", err)
		}
	}
	ra.accounts.Put(acct)
	res.Account = acct

	res.Rearmed, res.Problems = ra.rearm(ctx, acct, s, plans)
	if len(res.Problems) > 0 {
		ra.requestReconcile()
	}
	detail := describeRearm(res)
	rec, err := ra.store.RecordReactivation(context.WithoutCancel(ctx), store.Reactivation{IncidentID: inc.ID,
		AccountSID: acct.SID, AccountName: acct.FriendlyName, Via: req.Via, Actor: req.Actor,
		Reason: strings.TrimSpace(req.Reason), Rearmed: len(res.Rearmed), Detail: detail, CreatedAt: ra.now()})
	if err != nil && !errors.Is(err, store.ErrExists) {
		// The account is active and re-armed; only the record is missing.
		ra.log.Error("reactivated, but the audit record could not be written", "account", acct.SID, "err", err)
		hold.mayLand() // the hold's write stands for the record: kept a write lease
		return res, fmt.Errorf("reactivated, but recording it failed: %w", err)
	}
	res.Reactivation = rec
	ra.m.Reactivations.WithLabelValues(req.Via).Inc()
	ra.log.Warn("subaccount reactivated", "account", acct.SID, "account_name", acct.FriendlyName, "incident", inc.ID,
		"episode", incidentIDs(episode), "via", req.Via, "by", req.Actor, "reason", req.Reason, "rearmed", len(res.Rearmed),
		"was_active", res.WasActive, "problems", strings.Join(res.Problems, "; "))
	return res, nil
}

// accountHold is a manual reactivation's hold on its account in the store
// (store.HoldStore). Its methods do nothing on a nil hold (a scheduled
// reactivation, under its action's claim).
type accountHold struct {
	ra     *Reactivator
	sid    string
	sendBy time.Time // no attempt of the status write is sent after this (zero: no write)
	keep   bool      // the write may still land: keep the account a write lease after sendBy
}

// hold takes the account for this process, for one claim lease. While an
// action of the account runs (the end_calls after a suspension, say), it
// waits for it, up to holdWait.
func (ra *Reactivator) hold(ctx context.Context, sid string) (*accountHold, error) {
	var err error
	for waitUntil := time.Now().Add(ra.holdWait); ; {
		now := ra.now()
		err = ra.store.HoldAccount(ctx, sid, ra.owner, now, now.Add(ra.lease))
		if !errors.Is(err, store.ErrHeld) || !time.Now().Before(waitUntil) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(holdPoll):
		}
	}
	switch {
	case errors.Is(err, store.ErrHeld):
		return nil, &RefusedError{Reason: "an action of the account is running (a suspension, its calls being ended, or a reactivation); try again in a moment",
			Pending: true}
	case err != nil:
		return nil, fmt.Errorf("hold the account (nothing was changed): %w", err)
	}
	return &accountHold{ra: ra, sid: sid}, nil
}

// sendContext is the context the status write is sent under: for a hold,
// it ends when the hold no longer covers a send (the client's wait for a
// slot and its retries after a 429 included).
type sendContext struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// markSent records, before the status write is sent, that it will be, no
// later than half a write lease from now: the hold lasts a write lease
// after that, whatever the attempts, and the write is the account's last
// status write (store.RecordResult.LastStatusWrite). Refused if the hold
// has passed or an action of the account was claimed meanwhile.
func (h *accountHold) markSent(ctx context.Context) (sendContext, error) {
	if h == nil {
		return sendContext{ctx: ctx, cancel: func() {}}, nil
	}
	now := h.ra.now()
	by := now.Add(h.ra.writeLease / 2)
	err := h.ra.store.MarkHoldWriteSent(ctx, h.sid, h.ra.owner, now, by.Add(h.ra.writeLease))
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrHeld):
		return sendContext{}, fmt.Errorf("the hold on the account passed before the write (the account was not changed); try again: %w", err)
	case err != nil:
		return sendContext{}, fmt.Errorf("record the write before sending it (the account was not changed): %w", err)
	}
	h.sendBy = by
	c, cancel := context.WithTimeout(ctx, h.ra.writeLease/2)
	return sendContext{ctx: c, cancel: cancel}, nil
}

// mayLand keeps the account after the release until the write can no
// longer land.
func (h *accountHold) mayLand() {
	if h != nil {
		h.keep = true
	}
}

// release ends the hold: at once, or a write lease after the last moment
// the write could be sent if it may still land.
func (h *accountHold) release(ctx context.Context) {
	if h == nil {
		return
	}
	until := h.ra.now()
	if h.keep && !h.sendBy.IsZero() {
		until = h.sendBy.Add(h.ra.writeLease)
	}
	if err := h.ra.store.ReleaseAccount(context.WithoutCancel(ctx), h.sid, h.ra.owner, until); err != nil {
		h.ra.log.Warn("cannot release the hold on the account; it lasts until its lease passes", "account", h.sid, "err", err)
	}
}

// reactivationTarget finds the suspension a reactivation undoes and the
// newer incidents of its episode (newest first), or says why not.
//
// "Newer" is by when each incident's trip ended, not when the incident was
// opened: a skipped or failed incident reopened by a later firing may
// suspend after incidents opened after it. Any incident still pending (or
// held by the guard) blocks, whatever its age: it may yet suspend the
// account.
func (ra *Reactivator) reactivationTarget(ctx context.Context, req ReactivateRequest) (store.Incident, []store.Incident, error) {
	incs, err := ra.store.ListIncidents(ctx, store.IncidentFilter{AccountSID: req.AccountSID, Limit: maxEpisode})
	if err != nil {
		return store.Incident{}, nil, err
	}
	if len(incs) == 0 {
		return store.Incident{}, nil, &RefusedError{Reason: "usagebreaker has no incident for this account: it did not suspend it"}
	}
	for i, n := range incs {
		if n.State != store.StatePending {
			continue
		}
		which := fmt.Sprintf("incident %d (rule %s)", n.ID, n.Rule)
		if i == 0 {
			which = fmt.Sprintf("the newest incident (%d, rule %s)", n.ID, n.Rule)
		}
		return store.Incident{}, nil, &RefusedError{Reason: fmt.Sprintf("%s is still being handled: %s", which, orNone(n.Detail)), Pending: true}
	}
	ended, err := ra.byEnd(ctx, incs)
	if err != nil {
		return store.Incident{}, nil, err
	}
	at := -1 // the target's index in ended, newest first
	for i, inc := range ended {
		if (req.IncidentID != 0 && inc.ID == req.IncidentID) || (req.IncidentID == 0 && inc.Outcome == OutcomeSuspended) {
			at = i
			break
		}
	}
	switch {
	case at < 0 && req.IncidentID != 0:
		newest := ended[0]
		return store.Incident{}, nil, &RefusedError{Reason: fmt.Sprintf("a newer incident (%d, rule %s, outcome %s) exists; a person must look at it",
			newest.ID, newest.Rule, orNone(string(newest.Outcome)))}
	case at < 0:
		newest := incs[0]
		return store.Incident{}, nil, &RefusedError{Reason: fmt.Sprintf("usagebreaker did not suspend it: the newest incident (%d, rule %s) ended %s%s",
			newest.ID, newest.Rule, newest.Outcome, detailSuffix(newest.Detail))}
	}
	newer := ended[:at]
	for _, n := range newer {
		if n.Outcome == OutcomeSuspended { // a trip after the one to undo (only with IncidentID)
			return store.Incident{}, nil, &RefusedError{Reason: fmt.Sprintf("a newer incident (%d, rule %s, outcome %s) exists; a person must look at it",
				n.ID, n.Rule, n.Outcome)}
		}
	}
	target := ended[at]
	if target.Outcome != OutcomeSuspended {
		return store.Incident{}, nil, &RefusedError{Reason: fmt.Sprintf("usagebreaker did not suspend it: incident %d (rule %s) ended %s%s",
			target.ID, target.Rule, orNone(string(target.Outcome)), detailSuffix(target.Detail))}
	}
	return target, append([]store.Incident(nil), newer...), nil
}

// byEnd orders ended incidents by when their trip action ended, newest
// first (ties: the higher ID first).
func (ra *Reactivator) byEnd(ctx context.Context, incs []store.Incident) ([]store.Incident, error) {
	acts, err := ra.store.IncidentActions(ctx, incidentIDs(incs))
	if err != nil {
		return nil, err
	}
	endedAt := make(map[int64]time.Time, len(incs))
	for _, inc := range incs {
		endedAt[inc.ID] = inc.UpdatedAt
		for _, a := range acts[inc.ID] {
			if a.Kind == store.ActionTrip {
				endedAt[inc.ID] = a.UpdatedAt
			}
		}
	}
	out := append([]store.Incident(nil), incs...)
	sort.SliceStable(out, func(i, j int) bool {
		ti, tj := endedAt[out[i].ID], endedAt[out[j].ID]
		if !ti.Equal(tj) {
			return ti.After(tj)
		}
		return out[i].ID > out[j].ID
	})
	return out, nil
}

func incidentIDs(incs []store.Incident) []int64 {
	out := make([]int64, len(incs))
	for i, inc := range incs {
		out[i] = inc.ID
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func detailSuffix(d string) string {
	if d == "" {
		return ""
	}
	return " (" + d + ")"
}

func describeRearm(res ReactivateResult) string {
	var parts []string
	for _, r := range res.Rearmed {
		parts = append(parts, fmt.Sprintf("re-armed %s at %s (+%s, generation %d)", r.Rule, r.TriggerValue, r.Allowance, r.Generation))
	}
	parts = append(parts, res.Problems...)
	if len(parts) == 0 {
		parts = append(parts, "no trigger had fired this period; nothing to re-arm")
	}
	if len(res.Episode) > 0 {
		var also []string
		for i := len(res.Episode) - 1; i >= 0; i-- { // oldest first
			e := res.Episode[i]
			also = append(also, fmt.Sprintf("%d (%s, %s)", e.ID, e.Rule, orNone(string(e.Outcome))))
		}
		parts = append(parts, "also covers the later incident(s) "+strings.Join(also, ", "))
	}
	return strings.Join(parts, "; ")
}

// rearmPlan is the re-arm of one rule on an account.
type rearmPlan struct {
	rule   *rules.Rule
	period string              // the rule's current period
	old    []twilioapi.Trigger // the account's owned triggers of the rule (the spent one among them)
	ex     store.Rearm         // the exception, once begun
}

// planRearm says which rules a reactivation re-arms on acct: every rule
// with an owned trigger that fired in the rule's current period, and every
// rule of the episode's incidents whose period is the rule's current one
// (its trigger may not say it fired: a poll found the usage, or the trigger
// was missing). Rules that are gone or no longer match are left to the
// reconciler.
func planRearm(s *Settings, acct twilioapi.Account, ts []twilioapi.Trigger, episode []store.Incident, now time.Time) []rearmPlan {
	prefix := rules.OwnedPrefix(s.Instance)
	owned := map[string][]twilioapi.Trigger{}
	want := map[string]bool{}
	for _, t := range ts {
		name, ok := strings.CutPrefix(t.FriendlyName, prefix)
		if !ok {
			continue
		}
		owned[name] = append(owned[name], t)
		r := s.Rules.Get(name)
		if r == nil || r.IsVelocity() || t.DateFired == "" {
			continue // a velocity rule's steps are re-armed by rearm_step and the reconciler
		}
		at, err := mail.ParseDate(t.DateFired)
		if err == nil && PeriodKey(r.Recurring, at) == PeriodKey(r.Recurring, now) {
			want[name] = true
		}
	}
	for _, inc := range episode {
		r := s.Rules.Get(inc.Rule)
		base, _, _ := strings.Cut(inc.Period, "#")
		if r != nil && !r.IsVelocity() && base == PeriodKey(r.Recurring, now) {
			want[inc.Rule] = true
		}
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []rearmPlan
	for _, name := range names {
		r := s.Rules.Get(name)
		if r == nil || !r.Matches(acct.SID, acct.FriendlyName) {
			continue // no longer wanted: the reconciler deletes its triggers
		}
		out = append(out, rearmPlan{rule: r, period: PeriodKey(r.Recurring, now), old: owned[name]})
	}
	return out
}

// rearm carries out begun re-arms on acct. Failures are returned as
// problems: an exception whose trigger could not be created is finished by
// the next reconcile.
func (ra *Reactivator) rearm(ctx context.Context, acct twilioapi.Account, s *Settings, plans []rearmPlan) ([]RearmedTrigger, []string) {
	var (
		out      []RearmedTrigger
		problems []string
	)
	for _, p := range plans {
		rt, err := ra.rearmRule(ctx, acct, s, p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("re-arm %s: %v", p.rule.Name, err))
			if rt.TriggerSID == "" {
				continue
			}
		}
		out = append(out, rt)
	}
	return out, problems
}

// rearmRule creates the "+allowance" trigger of a begun exception and
// deletes the spent ones.
func (ra *Reactivator) rearmRule(ctx context.Context, acct twilioapi.Account, s *Settings, p rearmPlan) (RearmedTrigger, error) {
	r, ex := p.rule, p.ex
	t, err := ra.createRearmed(ctx, acct, r, s, ex)
	if err != nil {
		return RearmedTrigger{}, fmt.Errorf("%w (the next reconcile retries)", err)
	}
	rt := RearmedTrigger{Rule: r.Name, Period: ex.Period, Generation: ex.Generation, TriggerSID: t.SID,
		TriggerValue: t.TriggerValue.String(), Allowance: ex.Allowance}
	var errs []string
	for _, o := range p.old {
		if o.SID == t.SID {
			continue
		}
		if err := ra.api.DeleteTrigger(ctx, acct.SID, o.SID); err != nil {
			errs = append(errs, fmt.Sprintf("delete spent trigger %s: %v (the next reconcile deletes it)", o.SID, err))
			continue
		}
		if rt.Replaced == "" {
			rt.Replaced = o.SID
		}
	}
	ra.log.Info("trigger re-armed", "account", acct.SID, "rule", r.Name, "period", ex.Period, "generation", ex.Generation,
		"trigger", t.SID, "value", rt.TriggerValue, "allowance", ex.Allowance, "replaced", rt.Replaced)
	if len(errs) > 0 {
		return rt, errors.New(strings.Join(errs, "; "))
	}
	return rt, nil
}

// createRearmed creates the "+allowance" trigger of an exception and records it.
func (ra *Reactivator) createRearmed(ctx context.Context, acct twilioapi.Account, r *rules.Rule, s *Settings, ex store.Rearm) (twilioapi.Trigger, error) {
	spec := s.Spec(r) // with the callback credentials, if any
	spec.TriggerValue = "+" + ex.Allowance
	t, err := ra.api.CreateTrigger(ctx, acct.SID, spec)
	if err != nil {
		return twilioapi.Trigger{}, fmt.Errorf("create trigger: %w", err)
	}
	ra.m.Rearms.Inc()
	if err := ra.store.CompleteRearm(context.WithoutCancel(ctx), acct.SID, r.Name, ex.Period, ex.Generation, t.SID, t.TriggerValue.String()); err != nil {
		return t, fmt.Errorf("record the re-armed trigger: %w", err)
	}
	return t, nil
}

// applyRearms makes the desired triggers of acct honour its open re-arm
// exceptions: while a rule's re-armed period lasts, the trigger the re-arm
// created is what is wanted, not the rule's threshold. A re-arm that a crash
// or a Twilio error interrupted is finished here.
func (ra *Reactivator) applyRearms(ctx context.Context, acct twilioapi.Account, desired []twilioapi.TriggerSpec) ([]twilioapi.TriggerSpec, error) {
	now := ra.now()
	open, err := ra.store.OpenRearms(ctx, acct.SID, now)
	if err != nil || len(open) == 0 {
		return desired, err
	}
	s := ra.settings.Load()
	out := append([]twilioapi.TriggerSpec(nil), desired...)
	for _, ex := range open {
		r := s.Rules.Get(ex.Rule)
		if r == nil || PeriodKey(r.Recurring, now) != ex.Period {
			continue // the rule is gone or now counts another period: its own spec applies
		}
		for i := range out {
			if out[i].FriendlyName != r.TriggerFriendlyName(s.Instance) {
				continue
			}
			value := ex.TriggerValue
			if ex.TriggerSID == "" {
				t, err := ra.createRearmed(ctx, acct, r, s, ex)
				if err != nil {
					return nil, fmt.Errorf("finish the re-arm of %s: %w", r.Name, err)
				}
				ra.log.Info("interrupted re-arm finished", "account", acct.SID, "rule", r.Name, "trigger", t.SID, "value", t.TriggerValue.String())
				value = t.TriggerValue.String()
			}
			out[i].TriggerValue = value
		}
	}
	return out, nil
}

// markRearmsRestored marks the exceptions of ended periods as restored: this
// reconcile puts the rules' own thresholds back.
func (ra *Reactivator) markRearmsRestored(ctx context.Context) {
	if n, err := ra.store.MarkRearmsRestored(ctx, ra.now()); err != nil {
		ra.log.Warn("cannot mark ended re-arms", "err", err)
	} else if n > 0 {
		ra.log.Info("re-armed periods ended; restoring the rules' thresholds", "rearms", n)
	}
}

// workReactivate is the worker of a rule's scheduled reactivation.
func (ra *Reactivator) workReactivate(ctx context.Context, a store.Action) Result {
	inc, err := ra.store.Incident(ctx, a.IncidentID)
	if err != nil {
		return Retry(fmt.Errorf("read incident: %w", err))
	}
	log := ra.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	r := ra.settings.Load().Rules.Get(inc.Rule)
	if r == nil || r.Reactivate == nil {
		why := fmt.Sprintf("rule %q no longer has a reactivate policy; the account stays suspended until a person reactivates it", inc.Rule)
		log.Warn("scheduled reactivation skipped", "why", why)
		return Done(OutcomeSkipped, why)
	}
	policy := r.Reactivate.String()
	res, err := ra.Reactivate(ctx, ReactivateRequest{AccountSID: inc.AccountSID, IncidentID: inc.ID, Via: store.ViaScheduled,
		Actor: "rule " + r.Name, Reason: "scheduled: reactivate " + policy})
	var (
		refused *RefusedError
		unknown *WriteUnknownError
	)
	switch {
	case errors.As(err, &unknown):
		// Like a suspend write (trip.go): the account is held, and the
		// write recorded as this action's, until it can no longer land, so
		// no trip of any replica reads the account before that.
		until := ra.now().Add(ra.writeLease)
		log.Warn("the reactivation's write outcome is unknown; the account is held until it can no longer land",
			"until", until, "err", err)
		ra.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		return RetryAt(until, err).HoldingAccount(until).WithWriteSent(unknown.SentAt)
	case errors.As(err, &refused) && refused.Pending:
		// Another rule's incident of the same burst may still be on its
		// way to already_suspended: look again after a backoff.
		log.Info("scheduled reactivation waits for a newer incident", "why", refused.Reason)
		return Retry(err)
	case errors.As(err, &refused):
		log.Warn("scheduled reactivation skipped", "why", refused.Reason)
		return Done(OutcomeSkipped, refused.Reason)
	case err != nil && (twilioapi.IsRetryable(err) || !twilioapi.IsPermanent(err)):
		log.Warn("scheduled reactivation failed, will retry", "attempt", a.Attempts+1, "err", err)
		ra.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		return Retry(err)
	case err != nil:
		log.Error("scheduled reactivation failed for good", "err", err)
		return Fail(err)
	}
	return Done(OutcomeReactivated, describeRearm(res))
}
