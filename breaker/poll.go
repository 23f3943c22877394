package breaker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Poller is the fallback for lost callbacks (Poll): it reads the
// subaccounts' usage and opens the incidents the callbacks did not.
type Poller struct {
	common
	api           pollAPI
	store         pollStore
	trips         incidentOpener // the trip pipeline (the Breaker)
	velocityLocks *keyedMutex    // the trip pipeline's, per subaccount: a velocity rule's trip check and its record
	fanout        int            // subaccounts polled at once

	pollMu      sync.Mutex       // never two polls at once
	velReadings velocityReadings // the recent readings for velocity rules
}

// pollAPI is the part of the Twilio API the poller uses.
type pollAPI interface {
	ParentSID() string
	ListSubaccounts(ctx context.Context) ([]twilioapi.Account, error)
	UsageRecords(ctx context.Context, accountSID string, period twilioapi.Period) ([]twilioapi.UsageRecord, error)
}

// pollStore is the part of the store the poller reads.
type pollStore interface {
	RearmFor(ctx context.Context, accountSID, rule, period string) (store.Rearm, error)
	ListIncidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error)
}

// incidentOpener is what the poller needs of the trip pipeline (trip.go,
// velocity.go, notifications.go, decide.go): a firing recorded as a
// callback's would be, and a velocity rule's check of its step firings.
type incidentOpener interface {
	record(ctx context.Context, pre chan accountRead, f store.Firing) (AcceptResult, error)
	checkVelocity(ctx context.Context, r *rules.Rule, acctSID, acctName string, source store.Source) (AcceptResult, bool, error)
	dryRun(r *rules.Rule) bool
	ActionKinds(r *rules.Rule) []store.ActionKind
}

// PollResult summarises one poll.
type PollResult struct {
	Started     time.Time
	Duration    time.Duration
	Subaccounts int // listed, any status
	Polled      int // active subaccounts that at least one rule matches
	Reads       int // usage record calls made (one per polled subaccount and period kind)
	Over        int // (rule, subaccount) pairs at or over the rule's threshold
	Opened      int // incidents this poll opened
	Known       int // over the threshold, but the period already had its incident
	// NewAccounts are the polled subaccounts the previous listing did not
	// have: created since, so probably without triggers until the next reconcile.
	NewAccounts int
	Errors      []error // per-subaccount problems; the rest went on
}

// Err joins the per-subaccount errors, or nil.
func (r PollResult) Err() error { return errors.Join(r.Errors...) }

// PollToken is the made-up idempotency token of a poll firing: one per rule,
// subaccount and period, so repeated polls of one period record one firing.
func PollToken(rule, accountSID, period string) string {
	return "poll:" + rule + ":" + accountSID + ":" + period
}

// Poll is the fallback for callbacks that never arrived (lost while the
// daemon was down, or by the network) and for subaccounts created since the
// last reconcile, which have no triggers yet. It lists the subaccounts, then
// for each active one reads its usage records once per period kind its
// matching rules use (all categories in one call, so the API calls are one
// per subaccount per period kind, whatever the number of rules). A rule whose
// watched value is at or over its threshold opens the incident of its
// (rule, subaccount, period) with source "poll", unless that incident
// exists: a callback and a poll land on the same incident, whichever comes
// first. The executor then verifies and acts as for a callback.
//
// The period of a record is read from its start date (Twilio's clock, as for
// a callback's DateFired), else the breaker's clock.
//
// Polls are serialised. A failure to list the subaccounts is the error;
// per-subaccount problems are in the result and the error.
func (po *Poller) Poll(ctx context.Context) (res PollResult, err error) {
	po.pollMu.Lock()
	defer po.pollMu.Unlock()

	s := po.settings.Load()
	res = PollResult{Started: po.now()}
	start := time.Now()
	// A named result: the deferred assignment reaches the caller (every
	// return, the early ones too).
	defer func() { res.Duration = time.Since(start) }()

	subs, err := po.api.ListSubaccounts(ctx)
	if err != nil {
		return res, fmt.Errorf("poll: list subaccounts: %w", err)
	}
	res.Subaccounts = len(subs)

	type job struct {
		acct    twilioapi.Account
		periods map[twilioapi.Period][]*rules.Rule
		order   []twilioapi.Period
	}
	var jobs []job
	for _, a := range subs {
		if a.Status != twilioapi.StatusActive || a.SID == po.api.ParentSID() {
			continue
		}
		j := job{acct: a, periods: map[twilioapi.Period][]*rules.Rule{}}
		for _, r := range s.Rules.Rules {
			if !r.Matches(a.SID, a.FriendlyName) {
				continue
			}
			p := twilioapi.Period(r.Recurring)
			if r.IsVelocity() {
				p = twilioapi.PeriodAllTime // a step watches all-time usage
			}
			if _, seen := j.periods[p]; !seen {
				j.order = append(j.order, p)
			}
			j.periods[p] = append(j.periods[p], r)
		}
		if len(j.order) == 0 {
			continue
		}
		if _, known := po.accounts.Cached(a.SID); !known {
			res.NewAccounts++
		}
		jobs = append(jobs, j)
	}
	po.accounts.Replace(subs)
	res.Polled = len(jobs)

	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next = make(chan job)
	)
	for i := 0; i < min(po.fanout, max(len(jobs), 1)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				for _, p := range j.order {
					pr, err := po.pollPeriod(ctx, j.acct, p, j.periods[p])
					mu.Lock()
					res.Reads += pr.reads
					res.Over += pr.over
					res.Opened += pr.opened
					res.Known += pr.known
					if err != nil {
						res.Errors = append(res.Errors, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		select {
		case next <- j:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if ctx.Err() != nil {
		res.Errors = append(res.Errors, fmt.Errorf("poll: %w", ctx.Err()))
	}
	return res, res.Err()
}

type periodPoll struct{ reads, over, opened, known int }

// pollPeriod reads one subaccount's usage of one period kind (one API call)
// and opens the incidents of the rules at or over their thresholds.
func (po *Poller) pollPeriod(ctx context.Context, acct twilioapi.Account, p twilioapi.Period, rs []*rules.Rule) (periodPoll, error) {
	var pp periodPoll
	pp.reads++
	recs, err := po.api.UsageRecords(ctx, acct.SID, p)
	if err != nil {
		return pp, fmt.Errorf("poll %s (%s) %s usage: %w", acct.SID, acct.FriendlyName, p, err)
	}
	byCat := make(map[string]twilioapi.UsageRecord, len(recs))
	for _, r := range recs {
		byCat[r.Category] = r
	}
	now := po.now()
	var errs []error
	for _, r := range rs {
		rec, ok := byCat[r.UsageCategory]
		if !ok {
			continue // no usage of that category in this period
		}
		if r.IsVelocity() {
			over, opened, known, err := po.pollVelocity(ctx, acct, r, rec, now)
			pp.over, pp.opened, pp.known = pp.over+over, pp.opened+opened, pp.known+known
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		value := rec.Value(r.TriggerBy)
		// After a reactivation in this period the re-armed trigger's value is
		// the limit, and a trip belongs to the re-armed generation's incident
		// ("daily:2026-11-24#2"), as for callbacks (see Accept).
		base := PeriodKey(r.Recurring, recordTime(rec, now))
		period, limit, ok, err := po.pollLimit(ctx, r, acct.SID, base)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok || !Decide(Trip{Rule: r, Account: acct, Value: value, Limit: limit}).Tripped() { // decide.go
			continue
		}
		pp.over++
		known, err := po.hasIncident(ctx, r.Name, acct.SID, period)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if known {
			pp.known++
			continue
		}
		f := po.firing(r, acct, period, limit, value, now, now)
		res, err := po.trips.record(ctx, nil, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("poll %s rule %s: %w", acct.SID, r.Name, err))
			continue
		}
		if res.Duplicate {
			pp.known++
			continue
		}
		pp.opened++
		po.log.Warn("poll found usage over a threshold with no incident yet; opened one",
			"incident", res.Incident.ID, "rule", r.Name, "account", acct.SID, "account_name", acct.FriendlyName,
			"period", period, "current_value", value.String(), "threshold", limit.String())
	}
	return pp, errors.Join(errs...)
}

// pollLimit is the incident period and the value at which rule r trips on an
// account in the plain period base: the rule's threshold, or, while a re-arm
// exception holds for that period, its generation and its trigger's value.
// ok is false while a re-arm is under way (its trigger value is not known yet).
func (po *Poller) pollLimit(ctx context.Context, r *rules.Rule, acct, base string) (period string, limit decimal.Decimal, ok bool, err error) {
	ex, err := po.store.RearmFor(ctx, acct, r.Name, base)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return base, r.Threshold, true, nil
	case err != nil:
		return "", decimal.Zero, false, fmt.Errorf("poll %s rule %s: read re-arm: %w", acct, r.Name, err)
	}
	if ex.TriggerValue == "" {
		return "", decimal.Zero, false, nil
	}
	v, err := decimal.Parse(ex.TriggerValue)
	if err != nil {
		return "", decimal.Zero, false, fmt.Errorf("poll %s rule %s: re-arm value %q: %w", acct, r.Name, ex.TriggerValue, err)
	}
	return fmt.Sprintf("%s#%d", base, ex.Generation), v, true, nil
}

// recordTime is a time inside the record's period: its start date (GMT), else now.
func recordTime(rec twilioapi.UsageRecord, now time.Time) time.Time {
	if t, err := time.Parse("2006-01-02", rec.StartDate); err == nil {
		return t
	}
	return now
}

// hasIncident reports whether (rule, account, period) has its incident. The
// newest incident of a rule and account is the only one that can be of the
// current period. (RecordFiring would also land on the existing incident;
// asking first keeps repeated polls of a period from writing.)
func (po *Poller) hasIncident(ctx context.Context, rule, acct, period string) (bool, error) {
	incs, err := po.store.ListIncidents(ctx, store.IncidentFilter{Rule: rule, AccountSID: acct, Limit: 1})
	if err != nil {
		return false, fmt.Errorf("poll: read incidents: %w", err)
	}
	return len(incs) > 0 && incs[0].Period == period, nil
}

// The polling fallback for velocity rules.
//
// The poller keeps, in memory, the readings of each (velocity rule,
// subaccount) it polled within the rule's within: the all-time value and its
// time (the record's as_of when Twilio gives one, else the breaker's clock).
// A reading whose value is at least amount above an earlier one in the
// window trips the rule, with the period "velocity:{time of that earlier
// reading}" (the latest such one). The readings are not kept across restarts
// (nor handed to another replica): after a start the first poll is a
// baseline. The callbacks are the fast path; polls catch what they lost, at
// the resolution of the poll schedule.

// velocityReading is one polled all-time value.
type velocityReading struct {
	at    time.Time
	value decimal.Decimal
}

type velocityReadings struct {
	mu sync.Mutex
	m  map[string][]velocityReading // rule + "\x00" + account SID
}

// add records a reading and returns the window's readings (oldest first),
// dropping those older than within before it or not after boundary.
func (vr *velocityReadings) add(rule, acct string, rd velocityReading, within time.Duration, boundary time.Time) []velocityReading {
	vr.mu.Lock()
	defer vr.mu.Unlock()
	if vr.m == nil {
		vr.m = map[string][]velocityReading{}
	}
	key := rule + "\x00" + acct
	var keep []velocityReading
	for _, r := range append(vr.m[key], rd) {
		if rd.at.Sub(r.at) <= within && r.at.After(boundary) && !r.at.After(rd.at) {
			keep = append(keep, r)
		}
	}
	sort.SliceStable(keep, func(i, j int) bool { return keep[i].at.Before(keep[j].at) })
	vr.m[key] = keep
	return append([]velocityReading(nil), keep...)
}

// pollVelocity checks a velocity rule on one subaccount from the step
// firings (as the callbacks would) and from the growth between polls.
func (po *Poller) pollVelocity(ctx context.Context, acct twilioapi.Account, r *rules.Rule, rec twilioapi.UsageRecord, now time.Time) (over, opened, known int, err error) {
	if _, newInc, err := po.trips.checkVelocity(ctx, r, acct.SID, acct.FriendlyName, store.SourcePoll); err != nil {
		return 0, 0, 0, fmt.Errorf("poll %s rule %s: %w", acct.SID, r.Name, err)
	} else if newInc {
		return 1, 1, 0, nil
	}
	at := rec.AsOf
	if at.IsZero() {
		at = now
	}
	value := rec.Value(r.TriggerBy)
	unlock := po.velocityLocks.lock(acct.SID)
	defer unlock()
	boundary, err := velocityBoundary(ctx, po.store, r.Name, acct.SID)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("poll %s rule %s: %w", acct.SID, r.Name, err)
	}
	win := po.velReadings.add(r.Name, acct.SID, velocityReading{at: at.UTC(), value: value}, r.Velocity.Within, boundary)
	var base velocityReading
	found := false
	for _, rd := range win[:len(win)-1] {
		if value.Sub(rd.value).Cmp(r.Velocity.Amount) >= 0 {
			base, found = rd, true // the latest qualifying: the tightest window
		}
	}
	if !found {
		return 0, 0, 0, nil
	}
	growth := value.Sub(base.value)
	period := VelocityPeriod(base.at)
	res, err := po.trips.record(ctx, nil, po.firing(r, acct, period, r.Velocity.Amount, growth, at, now))
	if err != nil {
		return 1, 0, 0, fmt.Errorf("poll %s rule %s: %w", acct.SID, r.Name, err)
	}
	if res.Duplicate {
		return 1, 0, 1, nil
	}
	po.log.Warn("poll found velocity growth with no incident yet; opened one", "incident", res.Incident.ID, "rule", r.Name,
		"account", acct.SID, "account_name", acct.FriendlyName, "period", period, "growth", growth.String(),
		"over", at.Sub(base.at), "amount", r.Velocity.Amount.String(), "within", r.Velocity.Within)
	return 1, 1, 0, nil
}

// firing is what a poll records for rule r on acct: value over limit, seen
// at at (as Twilio dates a firing).
func (po *Poller) firing(r *rules.Rule, acct twilioapi.Account, period string, limit, value decimal.Decimal, at, now time.Time) store.Firing {
	return store.Firing{
		Source:           store.SourcePoll,
		IdempotencyToken: PollToken(r.Name, acct.SID, period),
		Rule:             r.Name,
		AccountSID:       acct.SID,
		AccountName:      acct.FriendlyName,
		Period:           period,
		UsageCategory:    r.UsageCategory,
		TriggerBy:        r.TriggerBy,
		Recurring:        r.Recurring,
		TriggerValue:     limit.String(),
		CurrentValue:     value.String(),
		DateFired:        at.UTC().Format(time.RFC1123Z),
		Action:           r.Action,
		DryRun:           po.trips.dryRun(r),
		ReceivedAt:       now,
		Actions:          po.trips.ActionKinds(r), // with the rule's notifications and end_calls
	}
}
