package main

// End-to-end tests of the people-in-the-loop features: the real daemon
// in-process against the simulator on loopback, real local receivers (HTTP
// for Slack and the webhook, an SMTP server with STARTTLS, the simulator's
// Messages API) and the CLI commands as a person runs them.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/smtptest"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/notify"
)

const (
	opsToken     = "opsAdminToken123"
	opsHMAC      = "siem-shared-secret-0123"
	opsSMTPUser  = "breaker"
	opsSMTPPass  = "smtp-pass-42"
	opsSMSFrom   = "+15005550006"
	opsSMSTo     = "+15558675310"
	opsRuleBlock = `rules:
  - name: spend-daily
    description: Stop tenants that spend more than $50 a day
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    end_calls: true
    rearm_allowance: "25"
  - name: auto-daily
    accounts:
      include: ["auto-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    notify: [ops-slack]
    reactivate:
      after: 2h
`
)

// hookReceiver is a Slack or webhook endpoint: it answers the queued
// failures first, then 200, and keeps every request.
type hookReceiver struct {
	mu   sync.Mutex
	fail []int
	reqs []hookReq
	url  string
}

type hookReq struct {
	status int
	header http.Header
	body   []byte
}

func newHookReceiver(t *testing.T, fail ...int) *hookReceiver {
	t.Helper()
	h := &hookReceiver{fail: fail}
	addr := testenv.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		status := 200
		if len(h.fail) > 0 {
			status, h.fail = h.fail[0], h.fail[1:]
		}
		h.reqs = append(h.reqs, hookReq{status, r.Header.Clone(), body})
		h.mu.Unlock()
		w.WriteHeader(status)
	}))
	h.url = "http://" + addr + "/hook/T000/B000/secret"
	return h
}

func (h *hookReceiver) delivered() []hookReq {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hookReq
	for _, r := range h.reqs {
		if r.status == 200 {
			out = append(out, r)
		}
	}
	return out
}

type opsEnv struct {
	t           *testing.T
	sim         *testenv.Sim
	d           *daemon.Daemon
	admin       string
	dir         string
	slack, hook *hookReceiver
	smtp        *smtptest.Server
	logs        *testenv.Buffer
	accts       map[string]twiliosim.Account
}

type opsOptions struct {
	names      []string
	guard      string // YAML for the guard key, or ""
	failFirst  bool   // every receiver fails twice before it accepts
	notifiers  []string
	extraRules string
}

// startOps starts a simulator whose clock starts at 08:00 UTC today (so no
// test crosses midnight unless it advances the clock), the receivers, and the
// daemon on loopback with all four notifier types.
func startOps(t *testing.T, o opsOptions) *opsEnv {
	t.Helper()
	e := &opsEnv{t: t, dir: t.TempDir(), logs: &testenv.Buffer{}}
	y, m, d := time.Now().UTC().Date()
	base, start := time.Date(y, m, d, 8, 0, 0, 0, time.UTC), time.Now()
	e.sim = testenv.StartSim(t, twiliosim.Options{RetryDelay: -1, Now: func() time.Time { return base.Add(time.Since(start)) }})
	e.accts = e.sim.Subaccounts(o.names...)

	var fail []int
	if o.failFirst {
		fail = []int{500, 503}
		if _, err := e.sim.AddFault(twiliosim.Fault{Path: `/Messages\.json$`, Method: "POST", Status: 500, Times: 2}); err != nil {
			t.Fatal(err)
		}
	}
	e.slack, e.hook = newHookReceiver(t, fail...), newHookReceiver(t, fail...)
	var err error
	if e.smtp, err = smtptest.Start(smtptest.Options{Username: opsSMTPUser, Password: opsSMTPPass}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.smtp.Close)
	if o.failFirst {
		e.smtp.FailNext(2, 451)
	}

	cbLn, adminLn := testenv.Listen(t), testenv.Listen(t)
	e.admin = "http://" + adminLn.Addr().String()
	p := e.sim.Parent()
	files := map[string]string{
		"admin-token":  opsToken + "\n",
		"hmac":         opsHMAC + "\n",
		"smtp-pass":    opsSMTPPass + "\n",
		"ca.pem":       string(e.smtp.CAPEM),
		"rules/r.yaml": opsRuleBlock + o.extraRules,
	}
	notifiers := o.notifiers
	if notifiers == nil {
		notifiers = []string{"oncall-sms", "ops-slack", "siem", "ops-mail"}
	}
	c := testenv.Config{Instance: "e2e", AccountSID: p.SID, AuthToken: p.AuthToken, APIBaseURL: e.sim.URL,
		Listen: cbLn.Addr().String(), PublicURL: "http://" + cbLn.Addr().String(), AdminListen: adminLn.Addr().String(),
		RuleFiles: "rules/*.yaml", AdminTokenFile: "admin-token"}
	c.Extra = fmt.Sprintf(`%s
notifiers:
  - name: oncall-sms
    type: twilio_sms
    from: %q
    to: [%q]
  - name: ops-slack
    type: slack
    webhook_url: %s
  - name: siem
    type: webhook
    url: %s
    secret_file: hmac
  - name: ops-mail
    type: email
    smtp: %s
    username: %s
    password_file: smtp-pass
    from: breaker@example.com
    to: [ops@example.com]
    tls_ca_file: ca.pem
default_notifiers: [%s]
`, o.guard, opsSMSFrom, opsSMSTo, e.slack.url, e.hook.url, e.smtp.Addr, opsSMTPUser, strings.Join(notifiers, ", "))
	files["config.yaml"] = c.YAML()
	testenv.WriteFiles(t, e.dir, files)
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.d, err = daemon.New(context.Background(), daemon.Options{ConfigPath: filepath.Join(e.dir, "config.yaml"), Logger: log,
		CallbackListener: cbLn, AdminListener: adminLn, ShutdownTimeout: 5 * time.Second, Now: e.sim.Now})
	if err != nil {
		t.Fatal(err)
	}
	run := testenv.Run(e.d.Run)
	t.Cleanup(func() {
		run.Stop(t)
		if t.Failed() {
			t.Logf("daemon logs:\n%s", e.logs.String())
		}
	})
	t.Setenv(tokenEnv, opsToken)
	e.waitFor("ready", e.d.Ready)
	return e
}

// waitFor polls cond; generous, for a loaded 2-core machine.
func (e *opsEnv) waitFor(what string, cond func() bool) {
	e.t.Helper()
	testenv.WaitFor(e.t, what, 90*time.Second, cond)
}

func (e *opsEnv) account(name string) twiliosim.AccountState { return e.sim.Account(e.t, name) }

func (e *opsEnv) spend(name, price string) []twiliosim.Firing {
	e.t.Helper()
	f, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.accts[name].SID, Category: "sms",
		Count: decimal.FromInt(1), Usage: decimal.FromInt(1), Price: decimal.MustParse(price)})
	if err != nil {
		e.t.Fatalf("spend on %s: %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := e.sim.Wait(ctx, f...); err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *opsEnv) api(method, path, token, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.admin+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return testenv.Do(e.t, req)
}

func (e *opsEnv) incidents(query string) []daemon.IncidentJSON {
	e.t.Helper()
	code, body := e.api("GET", "/api/v1/incidents"+query, opsToken, "")
	if code != 200 {
		e.t.Fatalf("incidents: %d %s", code, body)
	}
	var out []daemon.IncidentJSON
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *opsEnv) metrics() string {
	e.t.Helper()
	_, m := e.api("GET", "/metrics", "", "")
	return m
}

func (e *opsEnv) cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := dispatch(append(args, "--admin-url", e.admin), &out, &errb)
	return code, out.String(), errb.String()
}

func (e *opsEnv) triggerValue(name, rule string) string {
	for _, tr := range e.account(name).Triggers {
		if tr.FriendlyName == "usagebreaker:e2e:"+rule {
			return tr.TriggerValue.String()
		}
	}
	return ""
}

// A trip produces one SMS, one Slack post, one signed webhook and one e-mail,
// each with the facts, though every receiver fails twice first. Then a person
// reactivates through the CLI, which re-arms: more spend the same day trips
// again at the allowance, and the next day's reconcile restores the threshold.
func TestOpsNotifyReactivateRearm(t *testing.T) {
	e := startOps(t, opsOptions{names: []string{"tenant-a", "tenant-b"}, failFirst: true})
	sid := e.accts["tenant-a"].SID
	e.spend("tenant-a", "30")
	e.spend("tenant-a", "30") // 60 >= 50
	e.waitFor("tenant-a suspended", func() bool { return e.account("tenant-a").Status == "suspended" })
	e.waitFor("four notifications", func() bool {
		return len(e.sim.State().Messages) == 1 && len(e.slack.delivered()) == 1 && len(e.hook.delivered()) == 1 && len(e.smtp.Messages()) == 1
	})

	facts := []string{"SUSPENDED", "tenant-a", sid, "spend-daily", "totalprice", "60", "50", "usagebreaker reactivate " + sid}
	check := func(where, text string) {
		t.Helper()
		for _, f := range facts {
			if !strings.Contains(text, f) {
				t.Errorf("%s lacks %q:\n%s", where, f, text)
			}
		}
	}
	sms := e.sim.State().Messages[0]
	if sms.AccountSID != e.sim.Parent().SID || sms.From != opsSMSFrom || sms.To != opsSMSTo {
		t.Errorf("sms = %+v", sms)
	}
	check("the SMS", sms.Body)
	var slack struct{ Text string }
	json.Unmarshal(e.slack.delivered()[0].body, &slack)
	check("the Slack post", slack.Text)
	wh := e.hook.delivered()[0]
	// Verify the webhook as a receiver would.
	if err := notify.Verify([]byte(opsHMAC), wh.header.Get("X-Usagebreaker-Timestamp"), wh.header.Get("X-Usagebreaker-Signature"),
		wh.body, time.Now(), 5*time.Minute); err != nil {
		t.Errorf("webhook signature: %v", err)
	}
	var p notify.Payload
	if err := json.Unmarshal(wh.body, &p); err != nil || p.Incident == nil || p.Incident.AccountSID != sid || p.Incident.Value != "60" ||
		p.Incident.Threshold != "50" || p.Incident.Outcome != "suspended" || p.Type != "incident" {
		t.Errorf("webhook payload %s (%v)", wh.body, err)
	}
	check("the webhook text", p.Text)
	mail := e.smtp.Messages()[0]
	if !mail.TLS || mail.AuthUser != opsSMTPUser || mail.To[0] != "ops@example.com" {
		t.Errorf("mail = %+v", mail)
	}
	check("the e-mail", strings.ReplaceAll(mail.Data, "=\r\n", ""))
	// The receivers have the messages before the breaker counts them (the
	// counter moves when Send returns): wait for the counters themselves.
	e.waitFor("four notifications counted", func() bool {
		m := e.metrics()
		for _, n := range []string{"oncall-sms", "ops-slack", "siem", "ops-mail"} {
			if !strings.Contains(m, fmt.Sprintf("\nusagebreaker_notifications_total{notifier=%q,outcome=\"sent\"} 1\n", n)) {
				return false
			}
		}
		return true
	})

	// The CLI's table.
	code, out, errOut := e.cli("incidents")
	if code != 0 || !strings.Contains(out, "tenant-a") || !strings.Contains(out, "suspended") || !strings.Contains(out, "4/4") ||
		!strings.Contains(out, "60 / 50") || !strings.Contains(out, "SUBACCOUNT") {
		t.Errorf("incidents: %d\n%s%s", code, out, errOut)
	}

	// Refusals first.
	if code, _, errOut := e.cli("reactivate", e.accts["tenant-b"].SID, "--reason", "why not"); code != 1 || !strings.Contains(errOut, "did not suspend") {
		t.Errorf("reactivating an account it never suspended: %d %s", code, errOut)
	}
	if code, _, _ := e.cli("reactivate", sid); code != 2 {
		t.Errorf("no --reason: %d", code)
	}

	// Reactivate: active again, and the spent trigger is replaced by one 25 above today's 60.
	code, out, errOut = e.cli("reactivate", sid, "--reason", "customer confirmed the traffic")
	if code != 0 || !strings.Contains(out, "reactivated tenant-a") || !strings.Contains(out, "trips again at 85") {
		t.Fatalf("reactivate: %d\n%s%s", code, out, errOut)
	}
	if st := e.account("tenant-a").Status; st != "active" || e.triggerValue("tenant-a", "spend-daily") != "85" {
		t.Fatalf("after reactivation: %s, trigger at %s", st, e.triggerValue("tenant-a", "spend-daily"))
	}
	if code, _, errOut := e.cli("reactivate", sid, "--reason", "again"); code != 1 || !strings.Contains(errOut, "already reactivated") {
		t.Errorf("second reactivation: %d %s", code, errOut)
	}
	inc := e.incidents("?account=" + sid)[0]
	if r := inc.Reactivation; r == nil || r.Via != "manual" || r.Reason != "customer confirmed the traffic" ||
		!strings.Contains(r.Actor, "admin API from 127.0.0.1:") || !strings.Contains(r.Actor, "as claimed") || r.Rearmed != 1 {
		t.Errorf("audit = %+v", inc.Reactivation)
	}
	// A reconcile keeps the re-armed trigger.
	e.api("POST", "/api/v1/reconcile", opsToken, "")
	e.waitFor("reconcile", func() bool {
		return strings.Contains(e.metrics(), "\nusagebreaker_reconciles_total{result=\"ok\"} 2\n")
	})
	if v := e.triggerValue("tenant-a", "spend-daily"); v != "85" {
		t.Fatalf("the reconciler undid the re-arm: %s", v)
	}

	// More spend the same day: nothing below the allowance, a trip at it.
	if f := e.spend("tenant-a", "20"); len(f) != 0 {
		t.Fatalf("tripped below the allowance: %+v", f)
	}
	if f := e.spend("tenant-a", "5"); len(f) != 1 {
		t.Fatalf("85 reached but no firing: %+v", f)
	}
	e.waitFor("tenant-a suspended again", func() bool { return e.account("tenant-a").Status == "suspended" })
	e.waitFor("the second trip recorded", func() bool {
		incs := e.incidents("?account=" + sid)
		return len(incs) == 2 && incs[0].State == "done"
	})
	incs := e.incidents("?account=" + sid)
	if len(incs) != 2 || !strings.HasSuffix(incs[0].Period, "#2") || incs[0].Outcome != "suspended" || incs[0].CurrentValue != "85" {
		t.Fatalf("incidents after the second trip: %+v", incs)
	}
	e.waitFor("the second trip's notifications", func() bool { return len(e.slack.delivered()) == 2 })

	// Reactivate again, then the next day: the reconcile restores the plain threshold.
	if code, out, errOut := e.cli("reactivate", sid, "--reason", "limit raised for today"); code != 0 || !strings.Contains(out, "trips again at 110") {
		t.Fatalf("second reactivate: %d %s %s", code, out, errOut)
	}
	e.sim.Advance(24 * time.Hour)
	e.api("POST", "/api/v1/reconcile", opsToken, "")
	e.waitFor("the rule's threshold restored", func() bool { return e.triggerValue("tenant-a", "spend-daily") == "50" })
	e.waitFor("reactivations_total{manual} 2", func() bool {
		return strings.Contains(e.metrics(), "\nusagebreaker_reactivations_total{reason=\"manual\"} 2\n")
	})
}

// The rule's reactivate policy runs on the simulator's clock; end_calls
// completes the subaccount's calls after the suspension.
func TestOpsScheduledReactivationAndEndCalls(t *testing.T) {
	e := startOps(t, opsOptions{names: []string{"auto-a", "tenant-c"}, notifiers: []string{"ops-slack"}})
	for i := 0; i < 2; i++ {
		if _, err := e.sim.StartCall(e.accts["tenant-c"].SID); err != nil {
			t.Fatal(err)
		}
	}
	e.spend("tenant-c", "51")
	e.waitFor("calls completed", func() bool {
		st := e.sim.State()
		n := 0
		for _, c := range st.Calls {
			if c.AccountSID == e.accts["tenant-c"].SID && c.Status == "completed" {
				n++
			}
		}
		return n == 2
	})
	if e.account("tenant-c").Status != "suspended" {
		t.Error("tenant-c not suspended")
	}
	// The simulator completes a call before the breaker counts it.
	e.waitFor("calls_ended_total 2", func() bool { return strings.Contains(e.metrics(), "\nusagebreaker_calls_ended_total 2\n") })

	e.spend("auto-a", "55")
	e.waitFor("auto-a suspended", func() bool { return e.account("auto-a").Status == "suspended" })
	var due time.Time
	e.waitFor("the reactivation scheduled", func() bool {
		for _, a := range e.incidents("?account=" + e.accts["auto-a"].SID)[0].Actions {
			if a.Kind == "reactivate" {
				due = a.NextAttemptAt
				return true
			}
		}
		return false
	})
	if d := due.Sub(e.sim.Now()); d < 110*time.Minute || d > 2*time.Hour {
		t.Fatalf("due in %s, want about 2h", d)
	}
	e.sim.Advance(time.Hour)
	// An hour early nothing happens; two hours after the suspension it does.
	if code, out, _ := e.cli("incidents", "--account", e.accts["auto-a"].SID); code != 0 || !strings.Contains(out, "due ") {
		t.Errorf("incidents: %s", out)
	}
	if e.account("auto-a").Status != "suspended" {
		t.Fatal("reactivated early")
	}
	e.sim.Advance(time.Hour + time.Minute)
	e.waitFor("auto-a reactivated on schedule", func() bool { return e.account("auto-a").Status == "active" })
	// The status write reaches Twilio just before the audit is recorded.
	e.waitFor("the reactivation audited", func() bool {
		return e.incidents("?account=" + e.accts["auto-a"].SID)[0].Reactivation != nil
	})
	inc := e.incidents("?account=" + e.accts["auto-a"].SID)[0]
	if r := inc.Reactivation; r == nil || r.Via != "scheduled" || r.Actor != "rule auto-daily" {
		t.Errorf("audit = %+v", inc.Reactivation)
	}
	e.waitFor("reactivations_total{scheduled} 1", func() bool {
		return strings.Contains(e.metrics(), "\nusagebreaker_reactivations_total{reason=\"scheduled\"} 1\n")
	})
}

// Twenty suspensions in an hour pass; the 21st is held, every notifier gets
// one page, and releasing it executes it.
func TestOpsGuardHoldsThe21st(t *testing.T) {
	var names []string
	for i := 0; i < 21; i++ {
		names = append(names, fmt.Sprintf("tenant-%02d", i))
	}
	e := startOps(t, opsOptions{names: names, notifiers: []string{"ops-slack", "siem"},
		guard: "guard:\n  max_suspensions: 20\n  window: 1h"})
	for _, n := range names {
		e.spend(n, "60")
	}
	e.waitFor("20 suspended, 1 held", func() bool {
		incs := e.incidents("")
		done, held := 0, 0
		for _, i := range incs {
			if i.Outcome == "suspended" {
				done++
			}
			if i.Held {
				held++
			}
		}
		return done == 20 && held == 1
	})
	suspended := 0
	for _, a := range e.sim.State().Accounts {
		if a.Status == "suspended" {
			suspended++
		}
	}
	if suspended != 20 {
		t.Fatalf("%d accounts suspended, want 20", suspended)
	}
	pages := func(h *hookReceiver) int {
		n := 0
		for _, r := range h.delivered() {
			if r.header.Get("X-Usagebreaker-Event") == "guard" || strings.Contains(string(r.body), "GUARD TRIPPED") {
				n++
			}
		}
		return n
	}
	e.waitFor("the guard's pages", func() bool { return pages(e.slack) == 1 && pages(e.hook) == 1 })
	// The gauge is set right after the hold is recorded, not with it.
	e.waitFor("guard_held 1", func() bool { return strings.Contains(e.metrics(), "usagebreaker_guard_held 1") })
	if code, out, _ := e.cli("incidents"); code != 0 || !strings.Contains(out, "HELD (guard)") {
		t.Errorf("incidents table:\n%s", out)
	}

	if code, body := e.api("POST", "/api/v1/guard/release", opsToken, ""); code != 200 || !strings.Contains(body, `"released": 1`) {
		t.Fatalf("release: %d %s", code, body)
	}
	e.waitFor("the 21st suspended", func() bool {
		for _, a := range e.sim.State().Accounts {
			if a.Status != "suspended" {
				return false
			}
		}
		return true
	})
	e.waitFor("guard_held 0", func() bool { return strings.Contains(e.metrics(), "usagebreaker_guard_held 0") })
	// The released incident is notified as usual (21 incident messages in
	// all), and there is still exactly one page per notifier.
	e.waitFor("the released incident's notifications", func() bool {
		return len(e.slack.delivered()) == 22 && len(e.hook.delivered()) == 22
	})
	if pages(e.slack) != 1 || pages(e.hook) != 1 {
		t.Errorf("%d guard pages to Slack and %d to the webhook, want exactly 1 each", pages(e.slack), pages(e.hook))
	}
}

// One burst fires two rules of a tenant: the first incident suspends, the
// second finds it already suspended. A person can still reactivate it, and
// both rules are re-armed. The reactivation also finishes when the caller
// hangs up in the middle of it.
func TestOpsReactivateAnEpisodeWhenTheCallerHangsUp(t *testing.T) {
	e := startOps(t, opsOptions{names: []string{"tenant-a"}, notifiers: []string{"ops-slack"}, extraRules: `  - name: sms-daily
    accounts:
      include: ["tenant-*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: "1"
    action: suspend
    rearm_allowance: "5"
`})
	sid := e.accts["tenant-a"].SID
	if f := e.spend("tenant-a", "60"); len(f) != 2 {
		t.Fatalf("firings = %+v, want both rules", f)
	}
	var suspender, other int64
	e.waitFor("both incidents handled", func() bool {
		incs := e.incidents("?account=" + sid)
		if len(incs) != 2 || incs[0].State != "done" || incs[1].State != "done" {
			return false
		}
		for _, i := range incs {
			switch i.Outcome {
			case "suspended":
				suspender = i.ID
			case "already_suspended":
				other = i.ID
			}
		}
		return true
	})
	if suspender == 0 || other == 0 {
		t.Fatalf("incidents = %+v", e.incidents("?account="+sid))
	}

	// The account's triggers are listed slowly; the caller gives up first.
	if _, err := e.sim.AddFault(twiliosim.Fault{Path: `/Usage/Triggers\.json$`, Method: "GET", Delay: 1500 * time.Millisecond, Times: 1}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", e.admin+"/api/v1/accounts/"+sid+"/reactivate", strings.NewReader(`{"reason": "customer confirmed the traffic"}`))
	req.Header.Set("Authorization", "Bearer "+opsToken)
	if resp, err := (&http.Client{Timeout: 300 * time.Millisecond}).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the reactivation answered in time (%d); the test needs the caller to hang up", resp.StatusCode)
	}
	done := func() bool {
		if e.account("tenant-a").Status != "active" || e.triggerValue("tenant-a", "spend-daily") != "85" ||
			e.triggerValue("tenant-a", "sms-daily") != "6" {
			return false
		}
		for _, i := range e.incidents("?account=" + sid) {
			if i.ID == suspender && i.Reactivation != nil {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(30 * time.Second); !done(); time.Sleep(25 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not reactivated and re-armed: status %s, spend-daily at %s, sms-daily at %s, incidents %+v",
				e.account("tenant-a").Status, e.triggerValue("tenant-a", "spend-daily"), e.triggerValue("tenant-a", "sms-daily"),
				e.incidents("?account="+sid))
		}
	}
	for _, i := range e.incidents("?account=" + sid) {
		switch {
		case i.ID == suspender && (i.Reactivation.Rearmed != 2 || i.Reactivation.Via != "manual"):
			t.Errorf("audit = %+v", i.Reactivation)
		case i.ID == other && i.Reactivation != nil:
			t.Errorf("the incident that did not suspend has a reactivation: %+v", i.Reactivation)
		}
	}
	if code, _, errOut := e.cli("reactivate", sid, "--reason", "again"); code != 1 || !strings.Contains(errOut, "already reactivated") {
		t.Errorf("second reactivation: %d %s", code, errOut)
	}
}

// The admin API refuses missing or wrong tokens on every endpoint, and
// answers bad reactivation requests clearly.
func TestOpsAdminAPIAuth(t *testing.T) {
	e := startOps(t, opsOptions{names: []string{"tenant-a"}, notifiers: []string{"ops-slack"}})
	sid := e.accts["tenant-a"].SID
	for _, ep := range [][2]string{
		{"GET", "/api/v1/incidents"},
		{"POST", "/api/v1/accounts/" + sid + "/reactivate"},
		{"POST", "/api/v1/guard/release"},
		{"POST", "/api/v1/reconcile"},
	} {
		for _, tok := range []string{"", "wrong", opsToken + "x", strings.ToLower(opsToken)} {
			if code, _ := e.api(ep[0], ep[1], tok, `{"reason":"x"}`); code != 401 {
				t.Errorf("%s %s with token %q: %d, want 401", ep[0], ep[1], tok, code)
			}
		}
	}
	for body, want := range map[string]int{
		``:                   400,
		`{}`:                 400,
		`{"reason": "  "}`:   400,
		`{"reasn": "typo"}`:  400,
		`{"reason": "fine"}`: 409, // never suspended by the breaker
	} {
		if code, out := e.api("POST", "/api/v1/accounts/"+sid+"/reactivate", opsToken, body); code != want {
			t.Errorf("reactivate with %q: %d %s, want %d", body, code, out, want)
		}
	}
	if code, _ := e.api("POST", "/api/v1/accounts/AC123/reactivate", opsToken, `{"reason":"x"}`); code != 400 {
		t.Errorf("malformed SID: %d", code)
	}
	t.Setenv(tokenEnv, "wrong")
	if code, _, errOut := e.cli("incidents"); code != 1 || !strings.Contains(errOut, "refused the token") {
		t.Errorf("CLI with a wrong token: %d %s", code, errOut)
	}
	t.Setenv(tokenEnv, "")
	if code, _, errOut := e.cli("reactivate", sid, "--reason", "x"); code != 1 || !strings.Contains(errOut, tokenEnv) {
		t.Errorf("CLI without a token: %d %s", code, errOut)
	}
}
