package breaker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// MaxTriggersPerAccount is Twilio's limit of Usage Triggers per account.
const MaxTriggersPerAccount = 1000

// ReconcileResult summarises one reconcile.
type ReconcileResult struct {
	Started     time.Time
	Duration    time.Duration
	Subaccounts int // listed, any status
	Active      int // reconciled
	Created     int
	Updated     int
	Deleted     int
	Unchanged   int
	Managed     map[string]int // rule -> triggers present after the reconcile
	Matched     map[string]int // rule -> active subaccounts it matches
	// Suspended subaccounts whose owned triggers' callback URLs were brought
	// up to date (only that: nothing is created or deleted on them).
	Suspended int
	// HeldDeletes owned triggers were not deleted: too many at once
	// (MaxDeletes), or all of them while the rules match nothing
	// (AllowDisarm unset). HeldRules are their rules, HeldWhy says why.
	HeldDeletes int
	HeldRules   []string
	HeldWhy     string
	Errors      []error   // per-account problems; the rest went on
	Coverage    *Coverage // what it left on each subaccount, per rule (coverage.go)
}

// Err joins the per-account errors, or nil.
func (r ReconcileResult) Err() error { return errors.Join(r.Errors...) }

// Reconciler keeps every subaccount's owned Usage Triggers as the rules want
// them (Reconcile), remembers what it left (LastReconcile, LastCoverage in
// coverage.go) and holds too many deletions for a person (deletehold.go).
type Reconciler struct {
	common
	api       reconcileAPI  // the callback memo over the Twilio API
	callbacks *callbackMemo // which CallbackUrl this process set on each trigger (callbackauth.go)
	rearms    rearmer       // the Reactivator: re-armed triggers stay while their period lasts
	fanout    int           // subaccounts worked on at once

	reconcileMu sync.Mutex // never two reconciles at once
	lastRecon   atomic.Pointer[ReconcileResult]
	holds       deleteHold // trigger deletions held for a person (deletehold.go)
	// suspended subaccount SID -> the callback URLs its owned triggers were
	// last brought up to date with: listed again only when they change (a
	// basic_auth password, public_url) or after a restart.
	suspendedURLs sync.Map
}

// reconcileAPI is the part of the Twilio API the reconciler uses.
type reconcileAPI interface {
	ParentSID() string
	ListSubaccounts(ctx context.Context) ([]twilioapi.Account, error)
	ListTriggers(ctx context.Context, accountSID string) ([]twilioapi.Trigger, error)
	CreateTrigger(ctx context.Context, accountSID string, spec twilioapi.TriggerSpec) (twilioapi.Trigger, error)
	UpdateTrigger(ctx context.Context, accountSID, triggerSID string, upd twilioapi.TriggerUpdate) (twilioapi.Trigger, error)
	DeleteTrigger(ctx context.Context, accountSID, triggerSID string) error
}

// rearmer is what the reconciler needs of reactivation (reactivate.go): a
// reconcile ends the re-arms of past periods and keeps the others.
type rearmer interface {
	markRearmsRestored(ctx context.Context)
	applyRearms(ctx context.Context, acct twilioapi.Account, desired []twilioapi.TriggerSpec) ([]twilioapi.TriggerSpec, error)
}

// LastReconcile returns the last finished reconcile, if any.
func (rc *Reconciler) LastReconcile() (ReconcileResult, bool) {
	r := rc.lastRecon.Load()
	if r == nil {
		return ReconcileResult{}, false
	}
	return *r, true
}

// RefreshAccounts lists the subaccounts into the account cache, as a
// reconcile does, and changes nothing at Twilio: a replica that does not
// reconcile keeps the list its callbacks are verified against current.
func (rc *Reconciler) RefreshAccounts(ctx context.Context) error {
	subs, err := rc.api.ListSubaccounts(ctx)
	if err != nil {
		return fmt.Errorf("list subaccounts: %w", err)
	}
	rc.accounts.Replace(subs)
	return nil
}

// Reconcile makes every active subaccount's owned triggers match the rules:
// it creates what is missing, replaces what differs (create first, then delete,
// so the account is never unguarded), updates callback URL or method in place
// (keeping the trigger's firing state), deletes owned triggers no longer
// wanted, and never touches a trigger whose FriendlyName this instance does not
// own. On suspended subaccounts it only updates owned triggers' callback URLs
// in place (a basic_auth password change must reach them before they are
// reactivated); closed ones are left alone.
//
// It lists and plans each account, and acts on it at once unless its plan
// deletes owned triggers as no longer wanted. Those plans wait for a second
// pass, after the first has counted their deletions: more than MaxDeletes, or
// any while the rules match no active subaccount (unless AllowDisarm), and
// those deletions are held (deletehold.go), the rest done. No account's lock
// is held between the passes.
//
// Calls are serialised: a Reconcile waits for one in progress to finish. A
// failure to list subaccounts is returned as the error; per-account problems
// are in the result and the error, and do not stop other accounts.
func (rc *Reconciler) Reconcile(ctx context.Context) (ReconcileResult, error) {
	rc.reconcileMu.Lock()
	defer rc.reconcileMu.Unlock()

	s := rc.settings.Load()
	res := ReconcileResult{Started: rc.now(), Managed: map[string]int{}, Matched: map[string]int{}}
	start := time.Now()
	done := func() {
		res.Duration = time.Since(start)
		rc.m.ReconcileDuration.Observe(res.Duration.Seconds())
	}

	subs, err := rc.api.ListSubaccounts(ctx)
	if err != nil {
		done()
		rc.m.ReconcileErrors.Inc()
		return res, fmt.Errorf("reconcile: list subaccounts: %w", err)
	}
	rc.rearms.markRearmsRestored(ctx) // re-arms of ended periods: this reconcile restores the rule's threshold
	rc.accounts.Replace(subs)
	res.Subaccounts = len(subs)
	cov := newCoverage(res.Started, s.Rules, subs, rules.OwnedPrefix(s.Instance))

	type job struct {
		acct      twilioapi.Account
		desired   []twilioapi.TriggerSpec
		suspended bool // only callback URLs are brought up to date
	}
	var jobs []job
	anyMatch := false
	specs := make(map[string]twilioapi.TriggerSpec, len(s.Rules.Rules)) // one per rule, shared by the accounts
	for _, r := range s.Rules.Rules {
		specs[r.Name] = s.Spec(r)
	}
	wants := map[string][]twilioapi.TriggerSpec{} // the rules an account matches -> their specs, shared
	var matched []byte
	for _, a := range subs {
		if a.Status != twilioapi.StatusActive && a.Status != twilioapi.StatusSuspended {
			continue
		}
		matched = matched[:0]
		for i, r := range s.Rules.Rules {
			if r.Matches(a.SID, a.FriendlyName) {
				matched = binary.AppendUvarint(matched, uint64(i))
				if a.Status == twilioapi.StatusActive {
					res.Matched[r.Name]++
				}
			}
		}
		want, ok := wants[string(matched)]
		if !ok && len(matched) > 0 {
			for rest := matched; len(rest) > 0; {
				i, n := binary.Uvarint(rest)
				want, rest = append(want, specs[s.Rules.Rules[i].Name]), rest[n:]
			}
			wants[string(matched)] = want
		}
		if a.Status == twilioapi.StatusSuspended {
			if len(want) > 0 && a.SID != rc.api.ParentSID() {
				if fp, ok := rc.suspendedURLs.Load(a.SID); !ok || fp != urlsOf(want) {
					jobs = append(jobs, job{a, want, true})
				}
			} else {
				rc.suspendedURLs.Delete(a.SID)
			}
			continue
		}
		rc.suspendedURLs.Delete(a.SID) // active: reconciled in full
		anyMatch = anyMatch || len(want) > 0
		jobs = append(jobs, job{a, want, false})
		res.Active++
	}

	prefix := rules.OwnedPrefix(s.Instance)
	// collect adds one account's result (under mu).
	var mu sync.Mutex
	collect := func(pa *preparedAccount, ar accountResult, err error) {
		res.Created += ar.created
		res.Updated += ar.updated
		res.Deleted += ar.deleted
		res.Unchanged += ar.unchanged
		if pa.suspended {
			res.Suspended++
		} else {
			for name, n := range ar.managed {
				res.Managed[strings.TrimPrefix(name, prefix)] += n
			}
			cov.add(pa.acct.SID, ar, err)
		}
		if err == nil && pa.suspended {
			rc.suspendedURLs.Store(pa.acct.SID, pa.urls)
		}
		if err != nil {
			if pa.suspended && refusedForSuspended(err) {
				rc.log.Warn("cannot update the callback URLs of a suspended subaccount's triggers; "+
					"the first reconcile after it is reactivated does", "account", pa.acct.SID, "account_name", pa.acct.FriendlyName, "err", err)
			} else {
				res.Errors = append(res.Errors, err)
			}
		}
	}

	// The first pass: each account's triggers and its plan. A plan that
	// deletes no trigger as no longer wanted does not wait for the hold
	// decision: it is carried out at once and not kept (10,000 plans kept
	// until the second pass were most of a cold reconcile's memory).
	var (
		wg       sync.WaitGroup
		next     = make(chan job)
		prepared []*preparedAccount
	)
	workers := min(rc.fanout, max(len(jobs), 1))
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				pa, err := rc.prepareAccount(ctx, j.acct, j.desired, prefix, j.suspended)
				var ar accountResult
				acted := err == nil && pa != nil && len(pa.plan.disarm) == 0
				if acted {
					// holdDisarm: a deletion that appears on a re-plan waits
					// for the next reconcile's decision.
					ar, err = rc.executeAccount(ctx, pa, prefix, true)
				}
				mu.Lock()
				switch {
				case acted:
					collect(pa, ar, err)
				case err != nil:
					res.Errors = append(res.Errors, err)
					if !j.suspended {
						cov.add(j.acct.SID, accountResult{}, err)
					}
				case pa != nil:
					prepared = append(prepared, pa)
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		if ctx.Err() != nil {
			break
		}
		next <- j
	}
	close(next)
	wg.Wait()

	// Between the passes: too many deletions at once, or all of them, wait
	// for a person.
	disarm, disarmNames := 0, map[string]bool{}
	for _, pa := range prepared {
		disarm += len(pa.plan.disarm)
		for _, t := range pa.plan.disarm {
			disarmNames[t.FriendlyName] = true
		}
	}
	hold, why := rc.holdDecision(s, disarm, res.Active > 0 && !anyMatch)
	if hold {
		res.HeldDeletes, res.HeldRules, res.HeldWhy = disarm, ruleNamesOf(disarmNames, prefix), why
	}

	// The second pass: the plans that delete, with the hold decided.
	pending := make(chan *preparedAccount)
	for i := 0; i < min(rc.fanout, max(len(prepared), 1)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pa := range pending {
				ar, err := rc.executeAccount(ctx, pa, prefix, hold)
				mu.Lock()
				collect(pa, ar, err)
				mu.Unlock()
			}
		}()
	}
	for _, pa := range prepared {
		pending <- pa
	}
	close(pending)
	wg.Wait()
	if ctx.Err() != nil {
		res.Errors = append(res.Errors, fmt.Errorf("reconcile: %w", ctx.Err()))
	}
	sort.Slice(res.Errors, func(i, j int) bool { return res.Errors[i].Error() < res.Errors[j].Error() })

	// The gauges show every current rule, 0 where no account matches.
	rc.m.ManagedTriggers.Reset()
	rc.m.RuleMatched.Reset()
	for _, r := range s.Rules.Rules {
		rc.m.ManagedTriggers.WithLabelValues(r.Name).Set(float64(res.Managed[r.Name]))
		rc.m.RuleMatched.WithLabelValues(r.Name).Set(float64(res.Matched[r.Name]))
		if res.Matched[r.Name] == 0 {
			rc.log.Warn("rule matches no active subaccount: it guards nothing", "rule", r.Name,
				"include", r.Include, "exclude", r.Exclude, "active_subaccounts", res.Active)
		}
	}
	rc.recordHold(res.HeldDeletes, res.HeldRules)
	if hold {
		rc.log.Error("trigger deletions HELD: a person must release them (usagebreaker release deletes) or fix the rules",
			"held", res.HeldDeletes, "rules", res.HeldRules, "why", why, "max_deletes", s.MaxDeletes)
		rc.pageHold(ctx, s, res.HeldDeletes, res.HeldRules, why)
	}
	done()
	if len(res.Errors) == 0 {
		rc.m.ReconcileLastOK.Set(float64(rc.now().Unix()))
	} else {
		rc.m.ReconcileErrors.Inc()
	}
	res.Coverage = cov.done()
	rc.lastRecon.Store(&res)
	return res, res.Err()
}

// urlsOf is what a suspended subaccount's owned triggers must carry: each
// wanted trigger's callback URL and method.
func urlsOf(specs []twilioapi.TriggerSpec) string {
	parts := make([]string, 0, len(specs))
	for _, sp := range specs {
		parts = append(parts, sp.FriendlyName+" "+sp.CallbackMethod+" "+sp.CallbackURL)
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// refusedForSuspended reports an answer by which Twilio refuses to touch a
// suspended subaccount's triggers (whether it does is not documented).
func refusedForSuspended(err error) bool {
	var te *twilioapi.Error
	return errors.As(err, &te) && te.Status >= 400 && te.Status < 500 && te.Status != 429
}

type accountResult struct {
	created, updated, deleted, unchanged int
	managed                              map[string]int    // FriendlyName -> count present afterwards
	cover                                map[string]string // FriendlyName -> Cover* state afterwards (coverage.go)
}

// plan is what one account needs.
type plan struct {
	deleteUnwanted []twilioapi.Trigger // owned duplicates of kept triggers: deleted first, freeing room
	disarm         []twilioapi.Trigger // owned, not wanted at all: deleted unless held (deletehold.go)
	updates        []triggerUpdate
	creates        []twilioapi.TriggerSpec
	replaces       map[string][]twilioapi.Trigger // FriendlyName -> old triggers deleted once the new one exists
	keep           []string                       // FriendlyNames of owned triggers already as wanted
}

// countKept counts the triggers the plan keeps as they are.
func (p *plan) countKept(res *accountResult) {
	for _, name := range p.keep {
		res.managed[name]++
		res.unchanged++
		res.covered(name, CoverGuarded)
	}
}

// settle plans one wanted trigger among the owned candidates of its name:
// cands[idx] is kept (its callback updated in place if it differs) and the
// others deleted; with idx < 0 none will do, so a new one is created and
// replaces them all once it exists.
func (p *plan) settle(spec twilioapi.TriggerSpec, cands []twilioapi.Trigger, idx int) {
	if idx < 0 {
		p.creates = append(p.creates, spec)
		if len(cands) > 0 {
			if p.replaces == nil {
				p.replaces = map[string][]twilioapi.Trigger{}
			}
			p.replaces[spec.FriendlyName] = cands
		}
		return
	}
	t := cands[idx]
	if t.CallbackURL != spec.CallbackURL || !strings.EqualFold(t.CallbackMethod, spec.CallbackMethod) {
		p.updates = append(p.updates, triggerUpdate{t, twilioapi.TriggerUpdate{CallbackURL: spec.CallbackURL, CallbackMethod: spec.CallbackMethod}})
	} else {
		p.keep = append(p.keep, t.FriendlyName)
	}
	for i, other := range cands {
		if i != idx {
			p.deleteUnwanted = append(p.deleteUnwanted, other) // a duplicate, or a spent velocity step
		}
	}
}

type triggerUpdate struct {
	old twilioapi.Trigger
	upd twilioapi.TriggerUpdate
}

// planAccount compares an account's triggers with the desired specs.
func planAccount(existing []twilioapi.Trigger, desired []twilioapi.TriggerSpec, prefix string) plan {
	p := plan{creates: make([]twilioapi.TriggerSpec, 0, len(desired))}
	owned := map[string][]twilioapi.Trigger{}
	for _, t := range existing {
		if strings.HasPrefix(t.FriendlyName, prefix) {
			owned[t.FriendlyName] = append(owned[t.FriendlyName], t)
		}
	}
	wanted := map[string]bool{}
	for _, spec := range desired {
		wanted[spec.FriendlyName] = true
		cands := owned[spec.FriendlyName]
		if isStepSpec(spec) {
			planVelocity(&p, cands, spec) // a velocity rule's step (velocity.go)
			continue
		}
		idx := -1
		for i, t := range cands {
			if sameTrigger(t, spec) {
				idx = i
				break
			}
		}
		p.settle(spec, cands, idx)
	}
	names := make([]string, 0, len(owned))
	for name := range owned {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !wanted[name] {
			p.disarm = append(p.disarm, owned[name]...)
		}
	}
	return p
}

// sameTrigger reports whether t already is what spec wants in every field that
// cannot be updated in place (category, trigger_by, recurring, value).
func sameTrigger(t twilioapi.Trigger, spec twilioapi.TriggerSpec) bool {
	if t.UsageCategory != spec.UsageCategory || t.TriggerBy != spec.TriggerBy ||
		!twilioapi.SameRecurring(t.Recurring, spec.Recurring) {
		return false
	}
	v, err := decimal.Parse(spec.TriggerValue)
	return err == nil && t.TriggerValue.Equal(v)
}

// preparedAccount is one account between the passes. Its lock is not held
// between them (a reconcile of thousands of accounts must not hold off their
// suspensions): the second pass takes it, and plans again if a reactivation
// or a velocity re-arm changed the account's triggers meanwhile.
type preparedAccount struct {
	acct      twilioapi.Account
	desired   []twilioapi.TriggerSpec // as given, before the re-arm exceptions
	urls      string                  // suspended: urlsOf its desired specs
	count     int                     // triggers the account has (Twilio's per-account cap)
	plan      plan
	suspended bool
	gen       uint64 // triggerGen when it was planned
}

// triggerGen is the number of times something other than the reconciler
// changed the account's triggers in this process (touchTriggers).
func (c common) triggerGen(sid string) uint64 {
	if v, ok := c.trigGens.Load(sid); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// touchTriggers notes that the account's triggers were changed outside the
// reconciler (a re-arm), so a plan made before is made again.
func (c common) touchTriggers(sid string) {
	v, _ := c.trigGens.LoadOrStore(sid, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// prepareAccount lists the account's triggers and plans.
func (rc *Reconciler) prepareAccount(ctx context.Context, acct twilioapi.Account, desired []twilioapi.TriggerSpec, prefix string, suspended bool) (*preparedAccount, error) {
	pa := &preparedAccount{acct: acct, desired: desired, suspended: suspended, gen: rc.triggerGen(acct.SID)}
	if err := rc.planAccount(ctx, pa, prefix); err != nil {
		err = fmt.Errorf("account %s (%q): %w", acct.SID, acct.FriendlyName, err)
		if suspended && refusedForSuspended(err) {
			rc.log.Warn("cannot read a suspended subaccount's triggers to update their callback URLs; "+
				"the first reconcile after it is reactivated does", "account", acct.SID, "account_name", acct.FriendlyName, "err", err)
			return nil, nil
		}
		return nil, err
	}
	return pa, nil
}

// planAccount lists pa's triggers and plans what it needs.
func (rc *Reconciler) planAccount(ctx context.Context, pa *preparedAccount, prefix string) error {
	desired := pa.desired
	if !pa.suspended {
		var err error
		desired, err = rc.rearms.applyRearms(ctx, pa.acct, desired) // a re-armed trigger stays while its period lasts
		if err != nil {
			return err
		}
	}
	existing, err := rc.api.ListTriggers(ctx, pa.acct.SID)
	if err != nil {
		return fmt.Errorf("list triggers: %w", err)
	}
	pa.count = len(existing)
	if pa.suspended {
		pa.urls = urlsOf(desired)
		pa.plan = planURLs(rc.callbacks.adopt(existing, desired), desired, prefix)
	} else {
		pa.plan = planAccount(rc.callbacks.adopt(existing, desired), desired, prefix)
	}
	return nil
}

// planURLs is the plan for a suspended subaccount: only the callback URL (or
// method) of owned triggers of rules that match it, updated in place; no
// trigger is created, replaced or deleted.
func planURLs(existing []twilioapi.Trigger, desired []twilioapi.TriggerSpec, prefix string) plan {
	want := make(map[string]twilioapi.TriggerSpec, len(desired))
	for _, d := range desired {
		want[d.FriendlyName] = d
	}
	var p plan
	for _, t := range existing {
		spec, ok := want[t.FriendlyName]
		if !ok || !strings.HasPrefix(t.FriendlyName, prefix) {
			continue
		}
		if t.CallbackURL != spec.CallbackURL || !strings.EqualFold(t.CallbackMethod, spec.CallbackMethod) {
			p.updates = append(p.updates, triggerUpdate{t, twilioapi.TriggerUpdate{CallbackURL: spec.CallbackURL, CallbackMethod: spec.CallbackMethod}})
		} else {
			p.keep = append(p.keep, t.FriendlyName)
		}
	}
	return p
}

// executeAccount carries out a prepared plan; holdDisarm keeps the owned
// triggers no longer wanted (the deletions are held).
func (rc *Reconciler) executeAccount(ctx context.Context, pa *preparedAccount, prefix string, holdDisarm bool) (accountResult, error) {
	res := accountResult{managed: map[string]int{}}
	unlock := rc.locks.lock(pa.acct.SID) // not while a reactivation re-arms it, nor while an action acts on it
	defer unlock()
	if rc.triggerGen(pa.acct.SID) != pa.gen {
		// Re-armed since the first pass: plan on what the account has now.
		if err := rc.planAccount(ctx, pa, prefix); err != nil {
			return res, fmt.Errorf("account %s (%q): %w", pa.acct.SID, pa.acct.FriendlyName, err)
		}
	}
	acct, p := pa.acct, pa.plan
	if holdDisarm {
		for _, t := range p.disarm {
			res.managed[t.FriendlyName]++ // still there, still guarding
			res.covered(t.FriendlyName, CoverGuarded)
		}
		p.disarm = nil
	}
	var errs []error
	log := rc.log.With("account", acct.SID, "account_name", acct.FriendlyName)

	count := pa.count
	for _, t := range append(p.deleteUnwanted, p.disarm...) {
		if err := rc.api.DeleteTrigger(ctx, acct.SID, t.SID); err != nil {
			errs = append(errs, fmt.Errorf("delete trigger %s (%s): %w", t.SID, t.FriendlyName, err))
			continue
		}
		count--
		res.deleted++
		log.Info("trigger deleted", "trigger", t.SID, "name", t.FriendlyName, "why", "no longer wanted")
	}
	p.countKept(&res)
	for _, u := range p.updates {
		if _, err := rc.api.UpdateTrigger(ctx, acct.SID, u.old.SID, u.upd); err != nil {
			errs = append(errs, fmt.Errorf("update trigger %s (%s): %w", u.old.SID, u.old.FriendlyName, err))
			res.managed[u.old.FriendlyName]++ // the old one still guards the account
			res.covered(u.old.FriendlyName, CoverDrifted)
			continue
		}
		res.updated++
		res.managed[u.old.FriendlyName]++
		res.covered(u.old.FriendlyName, CoverGuarded)
		log.Info("trigger updated", "trigger", u.old.SID, "name", u.old.FriendlyName, "callback_url", redactURL(u.upd.CallbackURL))
	}
	for _, spec := range p.creates {
		olds := p.replaces[spec.FriendlyName]
		if count >= MaxTriggersPerAccount {
			errs = append(errs, fmt.Errorf("cannot create trigger %s: the account already has %d usage triggers, Twilio's limit is %d per account; delete some of the account's other triggers",
				spec.FriendlyName, count, MaxTriggersPerAccount))
			res.managed[spec.FriendlyName] += len(olds)
			res.coveredAfterFailedCreate(spec.FriendlyName, len(olds))
			continue
		}
		t, err := rc.api.CreateTrigger(ctx, acct.SID, spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("create trigger %s: %w", spec.FriendlyName, err))
			res.managed[spec.FriendlyName] += len(olds) // the old ones, if any, stay until a create succeeds
			res.coveredAfterFailedCreate(spec.FriendlyName, len(olds))
			continue
		}
		count++
		res.created++
		res.managed[spec.FriendlyName]++
		res.covered(spec.FriendlyName, CoverGuarded)
		log.Info("trigger created", "trigger", t.SID, "name", spec.FriendlyName, "category", spec.UsageCategory,
			"trigger_by", spec.TriggerBy, "recurring", spec.Recurring, "value", spec.TriggerValue, "replaces", len(olds))
		for _, old := range olds {
			if err := rc.api.DeleteTrigger(ctx, acct.SID, old.SID); err != nil {
				errs = append(errs, fmt.Errorf("delete replaced trigger %s (%s): %w", old.SID, old.FriendlyName, err))
				continue
			}
			count--
			res.deleted++
			log.Info("trigger deleted", "trigger", old.SID, "name", old.FriendlyName, "why", "replaced")
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("account %s (%q): %w", acct.SID, acct.FriendlyName, errors.Join(errs...))
	}
	return res, nil
}

// redactURL hides a password embedded in a callback URL for logs.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok || strings.Contains(userinfo, "/") {
		return u
	}
	user, _, _ := strings.Cut(userinfo, ":")
	return scheme + "://" + user + ":<secret>@" + host
}
