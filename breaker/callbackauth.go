package breaker

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// CallbackAuth is the HTTP Basic credentials (server.basic_auth) the
// reconciler embeds in every owned trigger's CallbackUrl, as
// https://user:pass@host/twilio/usage-triggers/{rule}. Twilio sends them back
// as an Authorization header with each callback.
type CallbackAuth struct {
	Username string
	Password config.Secret
}

// Spec is the trigger rule r wants on every subaccount it matches, with the
// callback credentials, if any, in its CallbackUrl. Everything that creates
// or updates an owned trigger must build it here, not with rules.Rule.Spec.
func (s *Settings) Spec(r *rules.Rule) twilioapi.TriggerSpec {
	spec := r.Spec(s.Instance, s.PublicURL)
	spec.CallbackURL = WithCredentials(spec.CallbackURL, s.CallbackAuth)
	return spec
}

// WithCredentials puts the credentials into a callback URL as userinfo. The
// URL must have none yet (public_url never has: the config refuses it), and
// the credentials are limited to characters that need no escaping there, so
// the result is exactly what Twilio is given and shows back.
func WithCredentials(raw string, a *CallbackAuth) string {
	if a == nil {
		return raw
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	return scheme + "://" + a.Username + ":" + a.Password.Reveal() + "@" + rest
}

// withoutUserinfo drops the userinfo from a URL, and reports whether it had one.
func withoutUserinfo(raw string) (string, bool) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw, false
	}
	hostEnd := strings.IndexAny(rest, "/?#")
	if hostEnd < 0 {
		hostEnd = len(rest)
	}
	at := strings.LastIndexByte(rest[:hostEnd], '@')
	if at < 0 {
		return raw, false
	}
	return scheme + "://" + rest[at+1:], true
}

// callbackMemo wraps the Twilio API to remember, per trigger, a fingerprint of
// the CallbackUrl this process last set (by create or update).
//
// Whether Twilio shows a trigger's callback_url with the credentials as given,
// without them, or with the password masked is not documented (DOMAIN.md
// says nothing), so the reconciler must work with each:
//   - shown as given: the URLs compare equal, or differ after a password
//     change, and nothing here is needed;
//   - shown without the credentials, or masked: the URL alone cannot tell
//     whether the password registered is the current one. The memo can, for
//     the triggers this process wrote; any other such trigger (after a
//     restart) is updated once, which keeps its firing state.
type callbackMemo struct {
	twilioapi.API
	mu   sync.Mutex
	sums map[string][sha256.Size]byte // trigger SID -> SHA-256 of the CallbackUrl set
}

func newCallbackMemo(api twilioapi.API) *callbackMemo {
	return &callbackMemo{API: api, sums: map[string][sha256.Size]byte{}}
}

func (m *callbackMemo) remember(sid, callbackURL string) {
	if sid == "" || callbackURL == "" {
		return
	}
	sum := sha256.Sum256([]byte(callbackURL))
	m.mu.Lock()
	m.sums[sid] = sum
	m.mu.Unlock()
}

func (m *callbackMemo) forget(sid string) {
	m.mu.Lock()
	delete(m.sums, sid)
	m.mu.Unlock()
}

// CreateTrigger creates the trigger and remembers its CallbackUrl.
func (m *callbackMemo) CreateTrigger(ctx context.Context, accountSID string, spec twilioapi.TriggerSpec) (twilioapi.Trigger, error) {
	t, err := m.API.CreateTrigger(ctx, accountSID, spec)
	if err == nil {
		m.remember(t.SID, spec.CallbackURL)
	}
	return t, err
}

// UpdateTrigger updates the trigger and remembers its new CallbackUrl. After a
// failed update the old URL may or may not be in place: it is forgotten.
func (m *callbackMemo) UpdateTrigger(ctx context.Context, accountSID, triggerSID string, upd twilioapi.TriggerUpdate) (twilioapi.Trigger, error) {
	t, err := m.API.UpdateTrigger(ctx, accountSID, triggerSID, upd)
	switch {
	case err != nil && upd.CallbackURL != "":
		m.forget(triggerSID)
	case err == nil:
		m.remember(triggerSID, upd.CallbackURL)
	}
	return t, err
}

// DeleteTrigger deletes the trigger and forgets it.
func (m *callbackMemo) DeleteTrigger(ctx context.Context, accountSID, triggerSID string) error {
	err := m.API.DeleteTrigger(ctx, accountSID, triggerSID)
	if err == nil {
		m.forget(triggerSID)
	}
	return err
}

// current reports whether trigger t already calls desired, as far as can be
// known. If this process set another URL on t, it does not (even when Twilio
// shows desired: it may have dropped the credentials we set). Else it does
// when Twilio shows desired, or when this process set desired on t and Twilio
// shows it without the credentials or with them masked.
func (m *callbackMemo) current(t twilioapi.Trigger, desired string) bool {
	m.mu.Lock()
	sum, known := m.sums[t.SID]
	m.mu.Unlock()
	if known && sum != sha256.Sum256([]byte(desired)) {
		return false
	}
	if t.CallbackURL == desired {
		return true
	}
	shown, _ := withoutUserinfo(t.CallbackURL)
	want, _ := withoutUserinfo(desired)
	return known && shown == want
}

// adopt returns existing as the plan must see it: the CallbackUrl of each
// owned trigger that is current (see current) set to the desired one, and of
// each that is not but shows the desired one cleared, so that the plan updates
// exactly those that need it. existing is not modified.
func (m *callbackMemo) adopt(existing []twilioapi.Trigger, desired []twilioapi.TriggerSpec) []twilioapi.Trigger {
	want := make(map[string]string, len(desired))
	for _, s := range desired {
		want[s.FriendlyName] = s.CallbackURL
	}
	var out []twilioapi.Trigger
	for i, t := range existing {
		d, ok := want[t.FriendlyName]
		if !ok {
			continue
		}
		cur := m.current(t, d)
		var show string
		switch {
		case cur && t.CallbackURL != d:
			show = d
		case !cur && t.CallbackURL == d:
			show = "" // differs from d: the plan updates it
		default:
			continue
		}
		if out == nil {
			out = append([]twilioapi.Trigger(nil), existing...)
		}
		out[i].CallbackURL = show
	}
	if out == nil {
		return existing
	}
	return out
}
