package breaker

import (
	"context"
	"strings"

	"github.com/usagebreaker/usagebreaker/store"
)

// The workers of the action engine, one per kind:
//
//	trip                 suspend / notify / dry-run (trip.go)
//	end_calls            after the trip: end the subaccount's in-progress calls (endcalls.go)
//	notify:{notifier}    after the trip: tell one notifier what happened (notifications.go)
//	guard:{notifier}     the one page per notifier when the guard starts holding (guard.go)
//	approval:{notifier}  the incident awaits a person's approval (approval.go)
//	reactivate           the rule's reactivate policy, due at its time (reactivate.go)
//	rearm_step           after a velocity rule's step firing: arm the next step (velocity.go)
//
// end_calls and notify:* wait until the trip action is finished (the queue
// does not hand them out before), so a notification reports the outcome.

// worker returns the worker of an action kind (nil: none).
func (b *Breaker) worker(kind store.ActionKind) Worker {
	switch {
	case kind == store.ActionTrip:
		return WorkerFunc(b.workTrip)
	case kind == store.ActionEndCalls:
		return WorkerFunc(b.workEndCalls)
	case kind == store.ActionReactivate:
		return WorkerFunc(b.reactivator.workReactivate)
	case kind == store.ActionRearmStep:
		return WorkerFunc(b.workRearmStep)
	case strings.HasPrefix(string(kind), store.KindNotifyPrefix):
		return WorkerFunc(func(ctx context.Context, a store.Action) Result { return b.workNotify(ctx, a, notifyIncident) })
	case strings.HasPrefix(string(kind), store.KindGuardPrefix):
		return WorkerFunc(func(ctx context.Context, a store.Action) Result { return b.workNotify(ctx, a, notifyGuard) })
	case strings.HasPrefix(string(kind), store.KindApprovalPrefix):
		return WorkerFunc(func(ctx context.Context, a store.Action) Result { return b.workNotify(ctx, a, notifyIncident) })
	}
	return nil
}

// actionFinished updates the gauges after an action's result was recorded.
func (b *Breaker) actionFinished(a store.Action, r Result) {
	if r.Finished() && a.Kind != store.ActionReactivate { // scheduled reactivations are not counted as pending work
		b.m.ActionsPending.Dec()
	}
}
