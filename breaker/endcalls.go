package breaker

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// workEndCalls is the end_calls worker: after a suspension, end the
// subaccount's in-progress calls.
func (b *Breaker) workEndCalls(ctx context.Context, a store.Action) Result {
	inc, err := b.store.Incident(ctx, a.IncidentID)
	if err != nil {
		return Retry(fmt.Errorf("read incident: %w", err))
	}
	unlock := b.locks.lock(inc.AccountSID)
	defer unlock()
	log := b.log.With("incident", inc.ID, "rule", inc.Rule, "account", inc.AccountSID, "account_name", inc.AccountName)
	if inc.Outcome != OutcomeSuspended && inc.Outcome != OutcomeAlreadySuspended {
		return Done(OutcomeSkipped, fmt.Sprintf("the account was not suspended (outcome %q): its calls are left alone", inc.Outcome))
	}
	calls, err := b.api.ListInProgressCalls(ctx, inc.AccountSID)
	if err != nil {
		return b.endCallsFailed(ctx, a, log, fmt.Errorf("list in-progress calls: %w", err))
	}
	ended := 0
	for _, c := range calls {
		err := b.api.EndCall(ctx, inc.AccountSID, c.SID)
		switch {
		case err == nil:
			ended++
			b.m.CallsEnded.Inc()
		case twilioapi.IsNotFound(err):
			// gone already
		default:
			// The calls ended so far are no longer in progress: a retry
			// lists only the rest.
			return b.endCallsFailed(ctx, a, log, fmt.Errorf("end call %s: %w", c.SID, err))
		}
	}
	log.Info("in-progress calls ended", "calls", ended)
	return Done(OutcomeEnded, fmt.Sprintf("ended %d in-progress call(s)", ended))
}

func (b *Breaker) endCallsFailed(ctx context.Context, a store.Action, log *slog.Logger, err error) Result {
	if twilioapi.IsRetryable(err) || ctx.Err() != nil {
		log.Warn("ending calls failed, will retry", "attempt", a.Attempts+1, "err", err)
		b.m.ActionAttemptErrors.WithLabelValues(string(a.Kind)).Inc()
		return Retry(err)
	}
	log.Error("ending calls failed for good", "err", err)
	return Fail(err)
}
