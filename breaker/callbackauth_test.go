package breaker

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// showingAPI is the fake with Twilio's unknown way of showing a trigger's
// callback_url applied to everything it answers.
type showingAPI struct {
	*fakeAPI
	show func(string) string
}

func (s *showingAPI) fix(t twilioapi.Trigger) twilioapi.Trigger {
	t.CallbackURL = s.show(t.CallbackURL)
	return t
}

func (s *showingAPI) ListTriggers(ctx context.Context, acct string) ([]twilioapi.Trigger, error) {
	ts, err := s.fakeAPI.ListTriggers(ctx, acct)
	for i := range ts {
		ts[i] = s.fix(ts[i])
	}
	return ts, err
}

func (s *showingAPI) CreateTrigger(ctx context.Context, acct string, spec twilioapi.TriggerSpec) (twilioapi.Trigger, error) {
	t, err := s.fakeAPI.CreateTrigger(ctx, acct, spec)
	return s.fix(t), err
}

func (s *showingAPI) UpdateTrigger(ctx context.Context, acct, sid string, u twilioapi.TriggerUpdate) (twilioapi.Trigger, error) {
	t, err := s.fakeAPI.UpdateTrigger(ctx, acct, sid, u)
	return s.fix(t), err
}

// The ways Twilio might show a callback URL with credentials (DOMAIN.md does
// not say which it does).
var showModes = map[string]func(string) string{
	"as given": func(u string) string { return u },
	"stripped": func(u string) string { s, _ := withoutUserinfo(u); return s },
	"masked": func(u string) string {
		s, had := withoutUserinfo(u)
		if !had {
			return u
		}
		user := strings.SplitN(strings.SplitN(u, "://", 2)[1], ":", 2)[0]
		return strings.Replace(s, "://", "://"+user+":******@", 1)
	},
}

func TestWithCredentials(t *testing.T) {
	a := &CallbackAuth{Username: "twilio", Password: config.Secret("pw-0123456789abcdef")}
	if got := WithCredentials("https://b.example.com:8443/base/twilio/usage-triggers/x", a); got != "https://twilio:pw-0123456789abcdef@b.example.com:8443/base/twilio/usage-triggers/x" {
		t.Errorf("WithCredentials = %s", got)
	}
	if got := WithCredentials("https://b.example.com/x", nil); got != "https://b.example.com/x" {
		t.Errorf("without credentials = %s", got)
	}
	for in, want := range map[string]string{
		"https://u:p@h/x@y": "https://h/x@y",
		"https://h/x@y":     "https://h/x@y",
		"https://u@h":       "https://h",
		"https://h?a=@":     "https://h?a=@",
	} {
		if got, _ := withoutUserinfo(in); got != want {
			t.Errorf("withoutUserinfo(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestPasswordChangeUpdatesInPlace: with each way Twilio may show the URL, a
// password change is one update per owned trigger (same SIDs, no create or
// delete), steady state is zero writes, and a restart costs at most one update
// per trigger (none when Twilio shows the URL as given).
func TestPasswordChangeUpdatesInPlace(t *testing.T) {
	for mode, show := range showModes {
		t.Run(mode, func(t *testing.T) {
			api := &showingAPI{fakeAPI: newFakeAPI(), show: show}
			for _, n := range []string{"tenant-a", "tenant-b", "internal-qa"} {
				api.addAccount(n, "active")
			}
			foreign := api.addForeign(api.order[0], "their own")
			st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			rs := loadRules(t, baseRules)
			settings := func(pw string) Settings {
				s := Settings{Instance: "prod", PublicURL: publicURL, Rules: rs}
				if pw != "" {
					s.CallbackAuth = &CallbackAuth{Username: "twilio", Password: config.Secret(pw)}
				}
				return s
			}
			newBreaker := func(pw string) *Breaker {
				return New(Options{API: api, Store: st, Settings: settings(pw), Now: func() time.Time { return time.Unix(0, 0) }})
			}
			sids := func() map[string]string {
				m := map[string]string{}
				for _, a := range api.order {
					for _, tr := range api.trig(a) {
						m[a+"/"+tr.FriendlyName] = tr.SID + " " + tr.CallbackURL
					}
				}
				return m
			}
			run := func(b *Breaker, want ReconcileResult) {
				t.Helper()
				res, err := b.Reconciler().Reconcile(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if res.Created != want.Created || res.Updated != want.Updated || res.Deleted != want.Deleted {
					t.Fatalf("created/updated/deleted = %d/%d/%d, want %d/%d/%d", res.Created, res.Updated, res.Deleted,
						want.Created, want.Updated, want.Deleted)
				}
			}
			const owned = 5 // baseRules on tenant-a, tenant-b, internal-qa

			b := newBreaker("first-password-0123")
			run(b, ReconcileResult{Created: owned})
			for k, v := range sids() {
				if !strings.HasSuffix(k, "their own") && !strings.Contains(v, "https://twilio:first-password-0123@breaker.example.com/twilio/usage-triggers/") {
					t.Errorf("%s registered as %s", k, v)
				}
			}
			run(b, ReconcileResult{}) // steady: nothing to do

			before := sids()
			b.SetSettings(settings("second-password-456"))
			run(b, ReconcileResult{Updated: owned})
			after := sids()
			for k, v := range before {
				if strings.Fields(after[k])[0] != strings.Fields(v)[0] {
					t.Errorf("%s: trigger %s replaced by %s", k, v, after[k])
				}
				if !strings.HasSuffix(k, "their own") && !strings.Contains(after[k], "twilio:second-password-456@") {
					t.Errorf("%s not re-registered: %s", k, after[k])
				}
			}
			if api.count("triggers.create") != owned || api.count("triggers.delete") != 0 {
				t.Errorf("creates %d, deletes %d", api.count("triggers.create"), api.count("triggers.delete"))
			}
			run(b, ReconcileResult{})

			// A restart knows nothing of what it registered.
			b = newBreaker("second-password-456")
			if mode == "as given" {
				run(b, ReconcileResult{})
			} else {
				run(b, ReconcileResult{Updated: owned})
				run(b, ReconcileResult{})
			}

			// Turning basic auth off takes the credentials out again, even
			// where Twilio never showed them.
			b.SetSettings(settings(""))
			run(b, ReconcileResult{Updated: owned})
			for k, v := range sids() {
				if strings.Contains(v, "@") {
					t.Errorf("%s still has credentials: %s", k, v)
				}
			}
			run(b, ReconcileResult{})
			for _, tr := range api.trig(foreign.AccountSID) {
				if tr.SID == foreign.SID && tr != foreign {
					t.Errorf("foreign trigger touched: %+v", tr)
				}
			}
			if n := len(api.trig(foreign.AccountSID)); n != 4 {
				t.Errorf("tenant-a has %d triggers", n)
			}
		})
	}
}

// TestFailedUpdateIsRetried: an update that fails leaves the trigger to be
// updated again by the next reconcile, in every mode.
func TestFailedUpdateIsRetried(t *testing.T) {
	for mode, show := range showModes {
		t.Run(mode, func(t *testing.T) {
			api := &showingAPI{fakeAPI: newFakeAPI(), show: show}
			api.addAccount("tenant-b", "active")
			st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			rs := loadRules(t, baseRules)
			auth := func(pw string) Settings {
				return Settings{Instance: "prod", PublicURL: publicURL, Rules: rs,
					CallbackAuth: &CallbackAuth{Username: "u", Password: config.Secret(pw)}}
			}
			b := New(Options{API: api, Store: st, Settings: auth("aaaaaaaaaaaaaaaa")})
			if _, err := b.Reconciler().Reconcile(context.Background()); err != nil {
				t.Fatal(err)
			}
			b.SetSettings(auth("bbbbbbbbbbbbbbbb"))
			api.failNext("triggers.update", &twilioapi.Error{Operation: "triggers.update", Status: 500})
			if res, err := b.Reconciler().Reconcile(context.Background()); err == nil || res.Updated != 1 {
				t.Fatalf("reconcile with a failing update: %+v %v", res, err)
			}
			if res, err := b.Reconciler().Reconcile(context.Background()); err != nil || res.Updated != 1 {
				t.Fatalf("the failed update was not retried: %+v %v", res, err)
			}
			for _, tr := range api.trig(api.order[0]) {
				if !strings.Contains(tr.CallbackURL, ":bbbbbbbbbbbbbbbb@") {
					t.Errorf("%s: %s", tr.FriendlyName, tr.CallbackURL)
				}
			}
		})
	}
}
