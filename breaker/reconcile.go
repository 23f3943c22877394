package breaker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
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
	Errors      []error        // per-account problems; the rest went on
}

// Err joins the per-account errors, or nil.
func (r ReconcileResult) Err() error { return errors.Join(r.Errors...) }

// LastReconcile returns the last finished reconcile, if any.
func (b *Breaker) LastReconcile() (ReconcileResult, bool) {
	r := b.lastRecon.Load()
	if r == nil {
		return ReconcileResult{}, false
	}
	return *r, true
}

// RefreshAccounts lists the subaccounts into the account cache, as a
// reconcile does, and changes nothing at Twilio: a replica that does not
// reconcile keeps the list its callbacks are verified against current.
func (b *Breaker) RefreshAccounts(ctx context.Context) error {
	subs, err := b.api.ListSubaccounts(ctx)
	if err != nil {
		return fmt.Errorf("list subaccounts: %w", err)
	}
	b.accounts.Replace(subs)
	return nil
}

// Reconcile makes every active subaccount's owned triggers match the rules:
// it creates what is missing, replaces what differs (create first, then delete,
// so the account is never unguarded), updates callback URL or method in place
// (keeping the trigger's firing state), deletes owned triggers no longer
// wanted, and never touches a trigger whose FriendlyName this instance does not
// own. Suspended and closed subaccounts are left as they are.
//
// Calls are serialised: a Reconcile waits for one in progress to finish. A
// failure to list subaccounts is returned as the error; per-account problems
// are in the result and the error, and do not stop other accounts.
func (b *Breaker) Reconcile(ctx context.Context) (ReconcileResult, error) {
	b.reconcileMu.Lock()
	defer b.reconcileMu.Unlock()

	s := b.settings.Load()
	res := ReconcileResult{Started: b.now(), Managed: map[string]int{}}
	start := time.Now()
	done := func() {
		res.Duration = time.Since(start)
		b.m.ReconcileDuration.Observe(res.Duration.Seconds())
	}

	subs, err := b.api.ListSubaccounts(ctx)
	if err != nil {
		done()
		b.m.ReconcileErrors.Inc()
		return res, fmt.Errorf("reconcile: list subaccounts: %w", err)
	}
	b.markRearmsRestored(ctx) // re-arms of ended periods: this reconcile restores the rule's threshold
	b.accounts.Replace(subs)
	res.Subaccounts = len(subs)

	type job struct {
		acct    twilioapi.Account
		desired []twilioapi.TriggerSpec
	}
	var jobs []job
	for _, a := range subs {
		if a.Status != twilioapi.StatusActive {
			continue
		}
		var want []twilioapi.TriggerSpec
		for _, r := range s.Rules.Rules {
			if r.Matches(a.SID, a.FriendlyName) {
				want = append(want, s.Spec(r))
			}
		}
		jobs = append(jobs, job{a, want})
	}
	res.Active = len(jobs)

	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next = make(chan job)
	)
	prefix := rules.OwnedPrefix(s.Instance)
	for i := 0; i < min(b.fanout, max(len(jobs), 1)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				ar, err := b.reconcileAccount(ctx, j.acct, j.desired, prefix)
				mu.Lock()
				res.Created += ar.created
				res.Updated += ar.updated
				res.Deleted += ar.deleted
				res.Unchanged += ar.unchanged
				for name, n := range ar.managed {
					res.Managed[strings.TrimPrefix(name, prefix)] += n
				}
				if err != nil {
					res.Errors = append(res.Errors, err)
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
	if ctx.Err() != nil {
		res.Errors = append(res.Errors, fmt.Errorf("reconcile: %w", ctx.Err()))
	}
	sort.Slice(res.Errors, func(i, j int) bool { return res.Errors[i].Error() < res.Errors[j].Error() })

	// The gauge shows every current rule, 0 where no account matches.
	b.m.ManagedTriggers.Reset()
	for _, r := range s.Rules.Rules {
		b.m.ManagedTriggers.WithLabelValues(r.Name).Set(float64(res.Managed[r.Name]))
	}
	done()
	if len(res.Errors) == 0 {
		b.m.ReconcileLastOK.Set(float64(b.now().Unix()))
	} else {
		b.m.ReconcileErrors.Inc()
	}
	b.lastRecon.Store(&res)
	return res, res.Err()
}

type accountResult struct {
	created, updated, deleted, unchanged int
	managed                              map[string]int // FriendlyName -> count present afterwards
}

// plan is what one account needs.
type plan struct {
	deleteUnwanted []twilioapi.Trigger // owned, not wanted at all: deleted first, freeing room
	updates        []triggerUpdate
	creates        []twilioapi.TriggerSpec
	replaces       map[string][]twilioapi.Trigger // FriendlyName -> old triggers deleted once the new one exists
	keep           []twilioapi.Trigger
}

type triggerUpdate struct {
	old twilioapi.Trigger
	upd twilioapi.TriggerUpdate
}

// planAccount compares an account's triggers with the desired specs.
func planAccount(existing []twilioapi.Trigger, desired []twilioapi.TriggerSpec, prefix string) plan {
	p := plan{replaces: map[string][]twilioapi.Trigger{}}
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
		idx := -1
		for i, t := range cands {
			if sameTrigger(t, spec) {
				idx = i
				break
			}
		}
		if idx < 0 {
			p.creates = append(p.creates, spec)
			p.replaces[spec.FriendlyName] = cands
			continue
		}
		t := cands[idx]
		if t.CallbackURL != spec.CallbackURL || !strings.EqualFold(t.CallbackMethod, spec.CallbackMethod) {
			p.updates = append(p.updates, triggerUpdate{t, twilioapi.TriggerUpdate{CallbackURL: spec.CallbackURL, CallbackMethod: spec.CallbackMethod}})
		} else {
			p.keep = append(p.keep, t)
		}
		for i, dup := range cands {
			if i != idx {
				p.deleteUnwanted = append(p.deleteUnwanted, dup) // a duplicate of a kept trigger
			}
		}
	}
	names := make([]string, 0, len(owned))
	for name := range owned {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !wanted[name] {
			p.deleteUnwanted = append(p.deleteUnwanted, owned[name]...)
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

func (b *Breaker) reconcileAccount(ctx context.Context, acct twilioapi.Account, desired []twilioapi.TriggerSpec, prefix string) (accountResult, error) {
	res := accountResult{managed: map[string]int{}}
	unlock := b.locks.lock(acct.SID) // not while a reactivation re-arms it, nor while an action acts on it
	defer unlock()
	desired, err := b.applyRearms(ctx, acct, desired) // a re-armed trigger stays while its period lasts
	if err != nil {
		return res, fmt.Errorf("account %s (%q): %w", acct.SID, acct.FriendlyName, err)
	}
	existing, err := b.api.ListTriggers(ctx, acct.SID)
	if err != nil {
		return res, fmt.Errorf("account %s (%q): list triggers: %w", acct.SID, acct.FriendlyName, err)
	}
	p := planAccount(b.callbacks.adopt(existing, desired), desired, prefix)
	var errs []error
	log := b.log.With("account", acct.SID, "account_name", acct.FriendlyName)

	count := len(existing)
	for _, t := range p.deleteUnwanted {
		if err := b.api.DeleteTrigger(ctx, acct.SID, t.SID); err != nil {
			errs = append(errs, fmt.Errorf("delete trigger %s (%s): %w", t.SID, t.FriendlyName, err))
			continue
		}
		count--
		res.deleted++
		log.Info("trigger deleted", "trigger", t.SID, "name", t.FriendlyName, "why", "no longer wanted")
	}
	for _, t := range p.keep {
		res.managed[t.FriendlyName]++
		res.unchanged++
	}
	for _, u := range p.updates {
		if _, err := b.api.UpdateTrigger(ctx, acct.SID, u.old.SID, u.upd); err != nil {
			errs = append(errs, fmt.Errorf("update trigger %s (%s): %w", u.old.SID, u.old.FriendlyName, err))
			res.managed[u.old.FriendlyName]++ // the old one still guards the account
			continue
		}
		res.updated++
		res.managed[u.old.FriendlyName]++
		log.Info("trigger updated", "trigger", u.old.SID, "name", u.old.FriendlyName, "callback_url", redactURL(u.upd.CallbackURL))
	}
	for _, spec := range p.creates {
		olds := p.replaces[spec.FriendlyName]
		if count >= MaxTriggersPerAccount {
			errs = append(errs, fmt.Errorf("cannot create trigger %s: the account already has %d usage triggers, Twilio's limit is %d per account; delete some of the account's other triggers",
				spec.FriendlyName, count, MaxTriggersPerAccount))
			res.managed[spec.FriendlyName] += len(olds)
			continue
		}
		t, err := b.api.CreateTrigger(ctx, acct.SID, spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("create trigger %s: %w", spec.FriendlyName, err))
			res.managed[spec.FriendlyName] += len(olds) // the old ones, if any, stay until a create succeeds
			continue
		}
		count++
		res.created++
		res.managed[spec.FriendlyName]++
		log.Info("trigger created", "trigger", t.SID, "name", spec.FriendlyName, "category", spec.UsageCategory,
			"trigger_by", spec.TriggerBy, "recurring", spec.Recurring, "value", spec.TriggerValue, "replaces", len(olds))
		for _, old := range olds {
			if err := b.api.DeleteTrigger(ctx, acct.SID, old.SID); err != nil {
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
