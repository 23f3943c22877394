package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// DefaultAuthProbeInterval is how often, while running, the parent
// credentials are tried (one read of the parent account), so that
// usagebreaker_twilio_auth_ok follows a revoked token within a minute even
// when no reconcile or poll is due.
const DefaultAuthProbeInterval = time.Minute

// errTwilioAuth words a 401 from Twilio: the parent credentials are wrong.
func errTwilioAuth(sid string, err error) error {
	return fmt.Errorf("twilio.account_sid (%s) and twilio.auth_token: Twilio refused the parent account's credentials; "+
		"check that twilio.account_sid is the parent account's SID and twilio.auth_token its current auth token (not an API key secret, not a subaccount's): %w", sid, err)
}

// isAuthRefused reports a 401 from Twilio.
func isAuthRefused(err error) bool {
	var te *twilioapi.Error
	return errors.As(err, &te) && te.Status == 401
}

// checkTwilioAuth reads the parent account once at start: a 401 fails the
// start, naming the keys to fix. Any other failure (Twilio down, the network)
// is logged and the start goes on: the breaker keeps its work in the store
// and retries.
func (d *Daemon) checkTwilioAuth(ctx context.Context) error {
	cfg := d.cfg.Load()
	ctx, cancel := context.WithTimeout(ctx, 2*cfg.Twilio.Timeout)
	defer cancel()
	_, err := d.api.FetchAccount(ctx, d.api.ParentSID())
	switch {
	case err == nil:
		return nil
	case isAuthRefused(err):
		return errTwilioAuth(cfg.Twilio.AccountSID, err)
	default:
		d.log.Warn("cannot check the parent credentials at start; going on", "err", err)
		return nil
	}
}

// authProbeLoop reads the parent account every interval until ctx ends; the
// Twilio client sets usagebreaker_twilio_auth_ok from the answer. A refusal
// is logged once per change.
func (d *Daemon) authProbeLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	refused := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cfg := d.cfg.Load()
		pctx, cancel := context.WithTimeout(ctx, 2*cfg.Twilio.Timeout)
		_, err := d.api.FetchAccount(pctx, d.api.ParentSID())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case isAuthRefused(err):
			if !refused {
				d.log.Error("Twilio refuses the parent credentials: nothing can be suspended or armed until they are fixed (then restart)",
					"err", errTwilioAuth(cfg.Twilio.AccountSID, err))
			}
			refused = true
		case err == nil:
			if refused {
				d.log.Info("Twilio accepts the parent credentials again")
			}
			refused = false
		}
	}
}
