package daemon_test

import (
	"net/http"
	"os"
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

// Parent credentials refused while running show in
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

const loudSpend = `rules:
  - name: spend-daily
    accounts:
      include: [%s]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`

func (e *env) ownedTriggers() int {
	n := 0
	for _, a := range e.state().Accounts {
		for _, tr := range a.Triggers {
			if strings.HasPrefix(tr.FriendlyName, "usagebreaker:e2e:") {
				n++
			}
		}
	}
	return n
}

// End to end: a reload whose rules match no subaccount
// is refused, saying how many triggers it would delete; an edit that would
// delete more than reconcile.max_deletes is held (metric, log) until
// POST /api/v1/reconcile/release; usagebreaker_rule_matched_subaccounts.
func TestDisarmRefusedAndMassDeletesHeld(t *testing.T) {
	names := []string{"tenant-1", "tenant-2", "tenant-3", "tenant-4", "tenant-5"}
	e := startEnv(t, names, strings.Replace(loudSpend, "%s", `"tenant-*"`, 1), nil)
	if n := e.ownedTriggers(); n != 5 {
		t.Fatalf("%d owned triggers", n)
	}
	if v := e.metric(`usagebreaker_rule_matched_subaccounts{rule="spend-daily"}`); v != 5 {
		t.Errorf("rule_matched_subaccounts = %v", v)
	}

	e.writeRules(strings.Replace(loudSpend, "%s", `"tenat-*"`, 1)) // a typo: matches nothing
	code, body := e.post(e.admin, "/-/reload", nil, nil)
	if code != 500 || !strings.Contains(body, "match none of the 5 active subaccounts") ||
		!strings.Contains(body, "delete the 5 triggers") || !strings.Contains(body, "allow_disarm: true") {
		t.Fatalf("reload of rules that match nothing: %d %s", code, body)
	}

	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(e.cfgPath, []byte(strings.Replace(string(cfg), `schedule: "@every 1h"`, "schedule: \"@every 1h\"\n  max_deletes: 2", 1)), 0o600)
	e.writeRules(strings.Replace(loudSpend, "%s", `"tenant-1"`, 1)) // 4 to delete, more than 2
	if code, body := e.post(e.admin, "/-/reload", nil, nil); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	e.waitFor("the deletions held", func() bool { return e.metric("usagebreaker_reconcile_deletes_held") == 4 })
	if n := e.ownedTriggers(); n != 5 {
		t.Fatalf("%d owned triggers while the deletions are held", n)
	}
	if !strings.Contains(e.logs.String(), "trigger deletions HELD") {
		t.Error("the hold was not logged")
	}
	code, body = e.post(e.admin, "/api/v1/reconcile/release", nil, map[string]string{"Authorization": "Bearer s3cretAdminToken"})
	if code != 200 || !strings.Contains(strings.Join(strings.Fields(body), ""), `"released":4`) {
		t.Fatalf("release: %d %s", code, body)
	}
	e.waitFor("the released deletions done", func() bool {
		return e.ownedTriggers() == 1 && e.metric("usagebreaker_reconcile_deletes_held") == 0
	})
	e.waitFor("rule_matched_subaccounts 1", func() bool {
		return e.metric(`usagebreaker_rule_matched_subaccounts{rule="spend-daily"}`) == 1
	})
}
