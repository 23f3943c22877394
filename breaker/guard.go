package breaker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

// The blast-radius guard. At most guard.max_suspensions suspensions per
// guard.window are executed; the next one is held (its trip action is parked
// in the held state) and every notifier gets one page. While any suspension
// is held, every further one is held too, without another page: the breaker
// may be what is wrong, and a person decides. POST /api/v1/guard/release
// executes the held ones (they skip the guard) and ends the episode; the
// next hold pages again.
//
// Admission is serialised, and a suspension admitted but not yet recorded
// holds a slot, so concurrent workers cannot overshoot the limit. The slot is
// freed in the same critical section that records the suspension, so it is
// never counted twice.

// GuardSettings is the blast-radius guard; MaxSuspensions 0 turns it off.
type GuardSettings struct {
	MaxSuspensions int
	Window         time.Duration
}

// sharedGuard is a store shared by several replicas that admits
// suspensions itself (store.DB on Postgres).
type sharedGuard interface {
	Postgres() bool
	AdmitSuspension(ctx context.Context, id int64, owner string, since, now time.Time, max int) (ok bool, suspended, held int, err error)
}

type guard struct {
	b     *Breaker
	mu    sync.Mutex
	slots map[int64]bool // trip actions admitted and not recorded yet
}

// held says the guard holds a suspension.
type held struct {
	suspended int // in the window, including admitted ones in flight
	before    int // held before this one
}

// guardSlot is an admitted suspension's place in the count.
type guardSlot struct {
	g  *guard
	id int64 // 0: no slot (no guard, or a released suspension)
}

// admit decides whether trip action a may suspend now: a slot (free it, or
// record the suspension with recordWith), or held, or a store error.
func (g *guard) admit(ctx context.Context, a store.Action) (guardSlot, *held, error) {
	gs := g.b.settings.Load().Operator.Guard
	if gs.MaxSuspensions <= 0 || a.Released {
		return guardSlot{g: g}, nil, nil
	}
	if sg, ok := g.b.store.(sharedGuard); ok && sg.Postgres() {
		// Several replicas: the places of admitted suspensions are in the
		// database, so the limit holds across them.
		now := g.b.now()
		ok, n, nHeld, err := sg.AdmitSuspension(ctx, a.ID, a.Owner, now.Add(-gs.Window), now, gs.MaxSuspensions)
		if err != nil {
			return guardSlot{}, nil, fmt.Errorf("guard: %w", err)
		}
		if !ok {
			return guardSlot{}, &held{suspended: n, before: nHeld}, nil
		}
		return guardSlot{g: g}, nil, nil // the completion ends the place
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	nHeld, err := g.b.store.CountHeld(ctx)
	if err != nil {
		return guardSlot{}, nil, fmt.Errorf("guard: %w", err)
	}
	n, err := g.b.store.CountSuspensions(ctx, g.b.now().Add(-gs.Window))
	if err != nil {
		return guardSlot{}, nil, fmt.Errorf("guard: %w", err)
	}
	n += len(g.slots)
	if !gs.Admits(n, nHeld) { // decide.go
		return guardSlot{}, &held{suspended: n, before: nHeld}, nil
	}
	g.slots[a.ID] = true
	return guardSlot{g: g, id: a.ID}, nil, nil
}

// free gives the slot back (the suspension was not made).
func (s guardSlot) free() {
	if s.id == 0 {
		return
	}
	s.g.mu.Lock()
	delete(s.g.slots, s.id)
	s.g.mu.Unlock()
}

// recordWith makes res record the suspension and free the slot under the
// guard's lock.
func (s guardSlot) recordWith(res Result) Result {
	if s.id == 0 {
		return res
	}
	return res.RecordedUnder(&s.g.mu).OnRecorded(func(bool, bool) { delete(s.g.slots, s.id) })
}

// hold parks the trip of incident inc for the guard; the first hold of an
// episode creates the guard pages (one per configured notifier) with it.
func (b *Breaker) hold(inc store.Incident, h held) Result {
	s := b.settings.Load()
	g := s.Operator.Guard
	var pages []store.ActionKind
	for _, n := range s.Operator.Notifiers {
		pages = append(pages, store.GuardPageKind(n.Name()))
	}
	detail := fmt.Sprintf("held by the guard: %d suspensions in the last %s reached guard.max_suspensions (%d); POST /api/v1/guard/release executes it",
		h.suspended, g.Window, g.MaxSuspensions)
	if h.before > 0 {
		detail = fmt.Sprintf("held by the guard, which already holds %d suspension(s); POST /api/v1/guard/release executes them", h.before)
	}
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	return Hold(detail, pages).OnRecorded(func(ok, paged bool) {
		if !ok {
			return
		}
		if paged {
			log.Error("GUARD TRIPPED: suspensions are held until released", "suspended_in_window", h.suspended,
				"max_suspensions", g.MaxSuspensions, "window", g.Window, "pages", len(pages))
		} else {
			log.Warn("suspension held by the guard", "held_before", h.before)
		}
		b.refreshOperatorGauges(context.Background())
	})
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
	b.engine.Wake()
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
