package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

const e2eRules = `rules:
  - name: spend-daily
    accounts:
      include: ["*"]
      exclude: ["internal-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-monthly
    accounts:
      include: ["tenant-0*"]
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 10000
    action: suspend
    dry_run: true
  - name: calls-notify
    accounts:
      include: ["tenant-1*", "internal-*"]
    usage_category: calls
    trigger_by: usage
    recurring: daily
    threshold: "600"
    action: notify
`

// waitForSamples polls /metrics until every sample in want starts a line
// (so a HELP text never matches), and returns those still missing when the
// wait runs out.
func (e *env) waitForSamples(want []string) (missing []string) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, m := e.get("/metrics", false)
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains("\n"+m, "\n"+w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) state() twiliosim.State { return e.sim.State() }

func (e *env) account(name string) twiliosim.AccountState { return e.sim.Account(e.t, name) }

func (e *env) addUsage(name, category string, count, price string) []twiliosim.Firing {
	e.t.Helper()
	in := twiliosim.UsageInput{AccountSID: e.accounts[name].SID, Category: category}
	if count != "" {
		in.Count = decimal.MustParse(count)
		in.Usage = in.Count
	}
	if price != "" {
		in.Price = decimal.MustParse(price)
	}
	f, err := e.sim.AddUsage(in)
	if err != nil {
		e.t.Fatalf("usage on %s: %v", name, err)
	}
	return f
}

func (e *env) wait(f []twiliosim.Firing) []twiliosim.Delivery {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ds, err := e.sim.Wait(ctx, f...)
	if err != nil {
		e.t.Fatal(err)
	}
	return ds
}

func (e *env) get(path string, auth bool) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.admin+path, nil)
	if auth {
		req.Header.Set("Authorization", "Bearer s3cretAdminToken")
	}
	return testenv.Do(e.t, req)
}

func (e *env) post(base, path string, form url.Values, hdr map[string]string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return testenv.Do(e.t, req)
}

func accountNames() []string {
	var names []string
	for i := 0; i < 46; i++ {
		names = append(names, fmt.Sprintf("tenant-%02d", i))
	}
	return append(names, "internal-qa", "internal-billing", "internal-ops", "tenant-suspended")
}

func triggerNames(a twiliosim.AccountState) map[string]twiliosim.Trigger {
	m := map[string]twiliosim.Trigger{}
	for _, t := range a.Triggers {
		m[t.FriendlyName] = t
	}
	return m
}

// twilioPost calls the simulator's Twilio API with parent credentials.
func (e *env) twilioPost(path string, form url.Values) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.simURL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	p := e.sim.Parent()
	req.SetBasicAuth(p.SID, p.AuthToken)
	return testenv.Do(e.t, req)
}

// replay POSTs a recorded delivery again, with the params possibly changed.
func (e *env) replay(d twiliosim.Delivery, change func(url.Values), sig string) int {
	e.t.Helper()
	form := url.Values{}
	for k, v := range d.Params {
		form.Set(k, v)
	}
	if change != nil {
		change(form)
	}
	if sig == "" {
		sig = d.Signature
	}
	code, _ := e.post(d.URL, "", form, map[string]string{"X-Twilio-Signature": sig})
	return code
}

func (e *env) incidents(query string) []daemon.IncidentJSON {
	e.t.Helper()
	code, body := e.get("/api/v1/incidents"+query, true)
	if code != 200 {
		e.t.Fatalf("incidents: %d %s", code, body)
	}
	var out []daemon.IncidentJSON
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func TestEndToEnd(t *testing.T) {
	names := accountNames() // 50 subaccounts
	var foreignSID string
	e := startEnv(t, names, e2eRules, func(e *env) {
		// The customer's own trigger on tenant-03, which usagebreaker must never touch.
		code, body := e.twilioPost("/2010-04-01/Accounts/"+e.accounts["tenant-03"].SID+"/Usage/Triggers.json", url.Values{
			"CallbackUrl": {"https://customer.example.com/alert"}, "TriggerValue": {"5"}, "UsageCategory": {"sms"},
			"FriendlyName": {"customer alert"}, "Recurring": {"daily"}})
		if code != 201 {
			t.Fatalf("foreign trigger: %d %s", code, body)
		}
		var tr struct{ Sid string }
		json.Unmarshal([]byte(body), &tr)
		foreignSID = tr.Sid
		if err := e.sim.SetStatus(e.accounts["tenant-suspended"].SID, "suspended"); err != nil {
			t.Fatal(err)
		}
	})
	if len(e.state().Accounts) != 50 {
		t.Fatalf("%d accounts", len(e.state().Accounts))
	}

	t.Run("exactly the expected triggers", func(t *testing.T) {
		total := 0
		for _, a := range e.state().Accounts {
			got := triggerNames(a)
			want := map[string]bool{}
			switch {
			case a.FriendlyName == "tenant-suspended":
				// suspended: left alone, so no triggers were created
			case strings.HasPrefix(a.FriendlyName, "internal-"):
				want["usagebreaker:e2e:calls-notify"] = true
			default:
				want["usagebreaker:e2e:spend-daily"] = true
				if strings.HasPrefix(a.FriendlyName, "tenant-0") {
					want["usagebreaker:e2e:sms-monthly"] = true
				}
				if strings.HasPrefix(a.FriendlyName, "tenant-1") {
					want["usagebreaker:e2e:calls-notify"] = true
				}
			}
			if a.FriendlyName == "tenant-03" {
				want["customer alert"] = true
			}
			if len(got) != len(want) {
				t.Errorf("%s: triggers %v, want %v", a.FriendlyName, keys(got), want)
			}
			for name, tr := range got {
				if !want[name] {
					t.Errorf("%s: unexpected trigger %s", a.FriendlyName, name)
					continue
				}
				if name == "customer alert" {
					if tr.SID != foreignSID || tr.CallbackURL != "https://customer.example.com/alert" {
						t.Errorf("foreign trigger changed: %+v", tr)
					}
					continue
				}
				total++
				rule := strings.TrimPrefix(name, "usagebreaker:e2e:")
				if tr.CallbackURL != e.public+"/twilio/usage-triggers/"+rule || tr.CallbackMethod != "POST" {
					t.Errorf("%s: trigger %s has callback %s %s", a.FriendlyName, name, tr.CallbackMethod, tr.CallbackURL)
				}
			}
		}
		if total != 46+10+13 {
			t.Errorf("%d owned triggers in all, want %d", total, 46+10+13)
		}
	})

	var trip twiliosim.Delivery
	t.Run("crossing a threshold suspends exactly that subaccount", func(t *testing.T) {
		e.addUsage("tenant-07", "sms", "100", "30")
		if f := e.addUsage("tenant-08", "calls", "10", "49.99"); len(f) != 0 {
			t.Fatalf("below the threshold but fired: %+v", f)
		}
		f := e.addUsage("tenant-07", "calls", "5", "20.01") // 30 + 20.01 = 50.01 >= 50
		if len(f) != 1 {
			t.Fatalf("firings = %+v", f)
		}
		ds := e.wait(f)
		trip = ds[len(ds)-1]
		if trip.Status != 200 {
			t.Fatalf("callback answered %d: %s", trip.Status, trip.ResponseBody)
		}
		e.waitFor("tenant-07 suspended", func() bool { return e.account("tenant-07").Status == "suspended" })
		for _, a := range e.state().Accounts {
			want := "active"
			if a.FriendlyName == "tenant-07" || a.FriendlyName == "tenant-suspended" {
				want = "suspended"
			}
			if a.Status != want {
				t.Errorf("%s is %s, want %s", a.FriendlyName, a.Status, want)
			}
		}
		in := twiliosim.UsageInput{AccountSID: e.accounts["tenant-07"].SID, Category: "sms", Count: decimal.FromInt(1), Price: decimal.MustParse("0.01")}
		if _, err := e.sim.AddUsage(in); err == nil {
			t.Fatal("the suspended tenant could still spend")
		}
		// The suspend write reaches Twilio just before the outcome is recorded.
		e.waitFor("incident done", func() bool {
			incs := e.incidents("?account=" + e.accounts["tenant-07"].SID)
			return len(incs) == 1 && incs[0].State == "done"
		})
		incs := e.incidents("?account=" + e.accounts["tenant-07"].SID)
		if len(incs) != 1 || incs[0].Outcome != "suspended" || incs[0].Rule != "spend-daily" || incs[0].CurrentValue != "50.01" {
			t.Fatalf("incidents = %+v", incs)
		}
	})

	t.Run("forged and altered callbacks get 403 and change nothing", func(t *testing.T) {
		// A legitimate delivery for tenant-09's own trip, recorded but answered by us.
		victim := e.accounts["tenant-09"]
		other := e.accounts["tenant-10"]
		before := len(e.incidents(""))
		forged := func(f url.Values) {
			f.Set("AccountSid", victim.SID)
			f.Set("IdempotencyToken", victim.SID+"-FIRES-UT1-x")
		}
		cases := map[string]int{
			"replayed with another account": e.replay(trip, forged, ""),
			"one parameter altered":         e.replay(trip, func(f url.Values) { f.Set("CurrentValue", "99999") }, ""),
			"made-up signature":             e.replay(trip, forged, "bm90IGEgc2lnbmF0dXJl"),
			"signed with another subaccount's token": e.replay(trip, forged,
				twiliosim.SignatureFor(other.AuthToken, trip.URL, func() url.Values {
					f := url.Values{}
					for k, v := range trip.Params {
						f.Set(k, v)
					}
					forged(f)
					return f
				}())),
		}
		for name, code := range cases {
			if code != 403 {
				t.Errorf("%s: %d, want 403", name, code)
			}
		}
		// Right signature, sent to another rule's path.
		d := trip
		d.URL = strings.Replace(d.URL, "/spend-daily", "/calls-notify", 1)
		if code := e.replay(d, nil, ""); code != 403 {
			t.Errorf("another rule's path: %d", code)
		}
		if e.account("tenant-09").Status != "active" {
			t.Error("tenant-09 was suspended by a forged callback")
		}
		if after := len(e.incidents("")); after != before {
			t.Errorf("incidents %d -> %d", before, after)
		}
	})

	t.Run("the same firing delivered 5 times suspends once", func(t *testing.T) {
		for i := 0; i < 4; i++ {
			if code := e.replay(trip, nil, ""); code != 200 {
				t.Fatalf("replay %d: %d", i, code)
			}
		}
		time.Sleep(100 * time.Millisecond) // give a (wrong) second action time to run
		if n := testenv.SuspendWrites(e.account("tenant-07")); n != 1 {
			t.Fatalf("%d suspend writes", n)
		}
		if incs := e.incidents("?account=" + e.accounts["tenant-07"].SID); len(incs) != 1 || incs[0].Firings != 1 {
			t.Fatalf("incidents = %+v", incs)
		}
	})

	t.Run("dry_run and exclude", func(t *testing.T) {
		f := e.addUsage("tenant-05", "sms", "10001", "")
		if len(f) != 1 {
			t.Fatalf("firings = %+v", f)
		}
		e.wait(f)
		e.waitFor("dry-run incident", func() bool {
			incs := e.incidents("?rule=sms-monthly")
			return len(incs) == 1 && incs[0].State == "done"
		})
		if inc := e.incidents("?rule=sms-monthly")[0]; inc.Outcome != "dry_run" {
			t.Fatalf("incident = %+v", inc)
		}
		if f := e.addUsage("internal-qa", "sms", "5000", "5000"); len(f) != 0 {
			t.Fatalf("an excluded account fired: %+v", f)
		}
		if e.account("tenant-05").Status != "active" || e.account("internal-qa").Status != "active" {
			t.Fatal("dry run or excluded account suspended")
		}
	})

	t.Run("editing a rule and reloading replaces its triggers", func(t *testing.T) {
		old := map[string]string{}
		for _, a := range e.state().Accounts {
			if tr, ok := triggerNames(a)["usagebreaker:e2e:spend-daily"]; ok {
				old[a.SID] = tr.SID
			}
		}
		// A bad edit first: rejected, the old rules keep running.
		e.writeRules(strings.Replace(e2eRules, "threshold: \"50\"", "threshold: \"-1\"", 1))
		code, body := e.post(e.admin, "/-/reload", nil, nil)
		if code != 500 || !strings.Contains(body, "main.yaml:9: rule \"spend-daily\": threshold") {
			t.Fatalf("bad reload: %d %s", code, body)
		}
		if e.metric("usagebreaker_config_last_reload_successful") != 0 { // the sample line, not the HELP text
			t.Error("reload gauge not 0 after a rejected reload")
		}
		e.writeRules(strings.Replace(e2eRules, "threshold: \"50\"", "threshold: \"75\"", 1))
		if code, body := e.post(e.admin, "/-/reload", nil, nil); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		e.waitFor("triggers replaced", func() bool {
			for _, a := range e.state().Accounts {
				tr, ok := triggerNames(a)["usagebreaker:e2e:spend-daily"]
				if a.Status == "active" && old[a.SID] != "" && (!ok || tr.TriggerValue.String() != "75" || tr.SID == old[a.SID]) {
					return false
				}
			}
			return true
		})
		// The new trigger is created before the old one is deleted: wait for the deletes too.
		e.waitFor("replaced triggers deleted", func() bool {
			for _, a := range e.state().Accounts {
				n := 0
				for _, tr := range a.Triggers {
					if tr.FriendlyName == "usagebreaker:e2e:spend-daily" {
						n++
					}
				}
				if a.Status == "active" && !strings.HasPrefix(a.FriendlyName, "internal-") && n != 1 {
					return false
				}
			}
			return true
		})
		for _, a := range e.state().Accounts {
			n := 0
			for _, tr := range a.Triggers {
				if tr.FriendlyName == "usagebreaker:e2e:spend-daily" {
					n++
				}
			}
			if a.Status == "active" && !strings.HasPrefix(a.FriendlyName, "internal-") && n != 1 {
				t.Errorf("%s has %d spend-daily triggers", a.FriendlyName, n)
			}
		}
		if e.metric("usagebreaker_config_last_reload_successful") != 1 { // the HELP text says "..._successful 1 if"
			t.Error("reload gauge not back to 1")
		}
	})

	t.Run("metrics", func(t *testing.T) {
		// Counters move after what the earlier parts waited for (a suspension
		// is counted once recorded, after Twilio's answer; actions_pending is
		// read from the store every second): wait for the samples themselves.
		for _, name := range e.waitForSamples([]string{
			`usagebreaker_callbacks_total{outcome="accepted"}`, `usagebreaker_callbacks_total{outcome="duplicate"} 4`,
			`usagebreaker_callbacks_total{outcome="bad_signature"}`,
			`usagebreaker_suspensions_total{outcome="suspended",rule="spend-daily"} 1`,
			`usagebreaker_suspensions_total{outcome="dry_run",rule="sms-monthly"} 1`,
			`usagebreaker_managed_triggers{rule="spend-daily"}`, "usagebreaker_reconcile_duration_seconds_bucket",
			"usagebreaker_reconcile_last_success_timestamp_seconds", `usagebreaker_twilio_requests_total{code="200",operation="accounts.list"}`,
			`usagebreaker_twilio_request_duration_seconds_bucket{operation="triggers.create"`,
			"usagebreaker_config_last_reload_successful 1", "usagebreaker_config_last_reload_success_timestamp_seconds",
			"usagebreaker_build_info{", `usagebreaker_incidents_total{rule="spend-daily",source="callback"} 1`,
			"usagebreaker_actions_pending 0",
			// The one suspension, timed from its callback's receipt to its write.
			"usagebreaker_callback_to_suspend_write_seconds_count 1",
		}) {
			t.Errorf("/metrics lacks %s", name)
		}
		// The same measure is on the suspension's log line, with Twilio's share.
		if l := e.logs.String(); !strings.Contains(l, `"receipt_to_write":`) || !strings.Contains(l, `"twilio_wait":`) {
			t.Error(`no "incident handled" line carries receipt_to_write and twilio_wait`)
		}
		if _, m := e.get("/metrics", false); strings.Contains(m, e.accounts["tenant-07"].SID) {
			t.Error("a metric label carries a subaccount SID")
		}
	})

	t.Run("admin endpoints", func(t *testing.T) {
		if code, _ := e.get("/api/v1/incidents", false); code != 401 {
			t.Errorf("incidents without a token: %d", code)
		}
		if code, body := e.get("/config", false); code != 200 || strings.Contains(body, e.sim.Parent().AuthToken) || !strings.Contains(body, "<secret>") {
			t.Errorf("/config: %d %s", code, body)
		}
		if code, _ := e.get("/-/ready", false); code != 200 {
			t.Errorf("ready: %d", code)
		}
		for _, p := range []string{"/", "/metrics", "/twilio/usage-triggers", "/twilio/usage-triggers/spend-daily/x"} {
			if code, _ := e.post(e.public, p, url.Values{}, nil); code != 404 && code != 405 {
				t.Errorf("callback listener %s: %d", p, code)
			}
		}
	})
}

func keys(m map[string]twiliosim.Trigger) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
