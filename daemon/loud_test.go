package daemon_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
)

// badCredentials is a transport to Twilio that, while on, sends a wrong
// auth token with the parent's SID (as a revoked or rotated token would be).
type badCredentials struct {
	on   atomic.Bool
	next http.RoundTripper
}

func (b *badCredentials) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.on.Load() {
		if user, _, ok := r.BasicAuth(); ok {
			r = r.Clone(r.Context())
			r.SetBasicAuth(user, "revoked0123456789abcdef01234567")
		}
	}
	return b.next.RoundTrip(r)
}

// Issue 14.5: parent credentials refused while running show in
// usagebreaker_twilio_auth_ok (and the log) within the probe interval, even
// with no reconcile or poll due.
func TestTwilioAuthRefusedWhileRunning(t *testing.T) {
	bad := &badCredentials{next: http.DefaultTransport}
	e := startEnv(t, []string{"tenant-a"}, e2eRules, func(e *env) {
		e.options = func(o *daemon.Options) {
			o.TwilioTransport = bad
			o.AuthProbeInterval = 20 * time.Millisecond
		}
	})
	if v := e.metric("usagebreaker_twilio_auth_ok"); v != 1 {
		t.Fatalf("usagebreaker_twilio_auth_ok = %v at start", v)
	}
	bad.on.Store(true)
	e.waitFor("usagebreaker_twilio_auth_ok 0", func() bool { return e.metric("usagebreaker_twilio_auth_ok") == 0 })
	e.waitFor("the refusal logged", func() bool {
		l := e.logs.String()
		return strings.Contains(l, "Twilio refuses the parent credentials") && strings.Contains(l, "twilio.auth_token")
	})
	bad.on.Store(false)
	e.waitFor("usagebreaker_twilio_auth_ok 1", func() bool { return e.metric("usagebreaker_twilio_auth_ok") == 1 })
}
