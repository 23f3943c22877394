package breaker

import (
	"context"
	"errors"
	"fmt"

	"github.com/usagebreaker/usagebreaker/store"
)

// The blast-radius guard. At most guard.max_suspensions suspensions per
// guard.window are executed; the next one is held (its trip action stays
// pending, parked, with Hold=HoldHeld) and every notifier gets one page. While
// any suspension is held, every further one is held too, without another
// page: the breaker may be what is wrong, and a person decides. POST
// /api/v1/guard/release executes the held ones (they skip the guard) and
// ends the episode; the next hold pages again.
//
// Admission is serialised, and a suspension admitted but not yet recorded
// holds a slot, so concurrent workers cannot overshoot the limit.

// errHeld says the guard holds this suspension.
type errHeld struct {
	suspended int // in the window, including admitted ones in flight
	held      int // held before this one
}

func (e errHeld) Error() string { return "held by the guard" }

// guardAdmit decides whether trip action a may suspend now. It returns nil
// (admitted: a slot is held until guardDone), errHeld, or a store error.
func (b *Breaker) guardAdmit(ctx context.Context, a store.Action) error {
	g := b.settings.Load().Operator.Guard
	if g.MaxSuspensions <= 0 || a.Hold == store.HoldReleased {
		return nil
	}
	b.op.guardMu.Lock()
	defer b.op.guardMu.Unlock()
	held, err := b.store.CountHeld(ctx)
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	n, err := b.store.CountSuspensions(ctx, b.now().Add(-g.Window))
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	n += len(b.op.guardSlots)
	if held > 0 || n >= g.MaxSuspensions {
		return errHeld{suspended: n, held: held}
	}
	b.op.guardSlots[a.ID] = true
	return nil
}

// guardDone frees the slot of a trip action once its outcome is recorded.
func (b *Breaker) guardDone(id int64) {
	b.op.guardMu.Lock()
	delete(b.op.guardSlots, id)
	b.op.guardMu.Unlock()
}

// guardRecord runs record, which records the suspension of trip action id,
// and frees the action's slot, both under the guard's lock: guardAdmit then
// counts the suspension exactly once, as a slot until it is in the store and
// in the store afterwards. (Freed only after the record, a slot would count
// twice meanwhile, and hold a suspension the limit still allows.) Without a
// slot (no guard, or a released suspension) record just runs.
func (b *Breaker) guardRecord(id int64, record func()) {
	b.op.guardMu.Lock()
	if !b.op.guardSlots[id] {
		b.op.guardMu.Unlock()
		record()
		return
	}
	defer b.op.guardMu.Unlock()
	record()
	delete(b.op.guardSlots, id)
}

// hold parks trip action a for the guard; the first hold of an episode
// creates the guard pages (one per configured notifier) with it.
func (b *Breaker) hold(ctx context.Context, a store.Action, inc store.Incident, h errHeld) {
	s := b.settings.Load()
	g := s.Operator.Guard
	var pages []string
	for _, n := range s.Operator.Notifiers {
		pages = append(pages, store.KindGuardPrefix+n.Name())
	}
	detail := fmt.Sprintf("held by the guard: %d suspensions in the last %s reached guard.max_suspensions (%d); POST /api/v1/guard/release executes it",
		h.suspended, g.Window, g.MaxSuspensions)
	if h.held > 0 {
		detail = fmt.Sprintf("held by the guard, which already holds %d suspension(s); POST /api/v1/guard/release executes them", h.held)
	}
	paged, err := b.store.HoldAction(context.WithoutCancel(ctx), a.ID, detail, pages)
	if errors.Is(err, store.ErrNotFound) {
		// Already held (or no longer pending): this attempt ran on an old
		// copy of the action. Retrying would make a held action due again.
		b.log.Debug("trip already held or finished; nothing to hold", "action", a.ID, "incident", inc.ID)
		return
	}
	if err != nil {
		b.retry(ctx, a, fmt.Errorf("guard: record the hold: %w", err))
		return
	}
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	if paged {
		log.Error("GUARD TRIPPED: suspensions are held until released", "suspended_in_window", h.suspended,
			"max_suspensions", g.MaxSuspensions, "window", g.Window, "pages", len(pages))
	} else {
		log.Warn("suspension held by the guard", "held_before", h.held)
	}
	b.refreshOperatorGauges(ctx)
	b.Wake() // the pages are due now
}

// ReleaseHeld executes every suspension the guard holds (they skip the
// guard) and returns how many there were. who goes on the incidents.
func (b *Breaker) ReleaseHeld(ctx context.Context, who string) (int, error) {
	n, err := b.store.ReleaseHeld(ctx, b.now(), "released from the guard by "+who)
	if err != nil {
		return 0, err
	}
	b.log.Warn("guard released: held suspensions run now", "released", n, "by", who)
	b.refreshOperatorGauges(ctx)
	b.Wake()
	return n, nil
}

// refreshOperatorGauges sets usagebreaker_guard_held and
// usagebreaker_actions_pending from the store.
func (b *Breaker) refreshOperatorGauges(ctx context.Context) {
	if n, err := b.store.CountHeld(context.WithoutCancel(ctx)); err == nil {
		b.m.GuardHeld.Set(float64(n))
	} else {
		b.log.Warn("cannot count held suspensions", "err", err)
	}
	b.UpdatePendingGauge(context.WithoutCancel(ctx))
}
