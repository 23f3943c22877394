package breaker

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// velocityRules: 500 SMS within 1h, in 4 steps of 125.
const velocityRules = `rules:
  - name: sms-velocity
    accounts: {include: ["tenant-*"]}
    usage_category: sms
    trigger_by: count
    velocity:
      amount: "500"
      within: 1h
    action: suspend
`

// velEnv is the simulator (its clock driven by the test), the real Twilio
// client, a SQLite store and a breaker, with a callback listener that hands
// each step's callback to Accept. Every step is deterministic: add usage,
// wait for the callbacks' answers, run the due actions to completion.
type velEnv struct {
	t    *testing.T
	ctx  context.Context
	sim  *twiliosim.Sim
	st   *store.SQLite
	b    *Breaker
	sub  twiliosim.Account
	rule *rules.Rule
}

func newVelEnv(t *testing.T, ruleText string) *velEnv {
	t.Helper()
	ctx := context.Background()
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sim := testenv.StartSim(t, twiliosim.Options{Now: func() time.Time { return base }, RetryDelay: -1})
	p := sim.Parent()
	api, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: sim.URL,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, t.TempDir()+"/state.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rs, err := rules.Parse("rules.yaml", []byte(ruleText))
	if err != nil {
		t.Fatal(err)
	}

	cbLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &velEnv{t: t, ctx: ctx, sim: sim.Sim, st: st, rule: rs[0]}
	e.b = New(Options{API: api, Store: st, Now: sim.Now, Owner: "test", Settings: Settings{
		Instance: "test", PublicURL: "http://" + cbLn.Addr().String(), Rules: rules.NewSet(rs)}})
	// The callback listener: the signature and account checks are the
	// webhook package's; here only Accept's answer matters.
	cbSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rule := e.b.Rule(strings.TrimPrefix(r.URL.Path, rules.CallbackPathPrefix))
		acct, err := e.b.LookupAccount(r.Context(), r.Form.Get("AccountSid"))
		if rule == nil || err != nil {
			http.Error(w, "unknown", http.StatusNotFound)
			return
		}
		_, err = e.b.Accept(r.Context(), rule, acct, Callback{AccountSID: acct.SID, UsageTriggerSID: r.Form.Get("UsageTriggerSid"),
			DateFired: r.Form.Get("DateFired"), Recurring: r.Form.Get("Recurring"), UsageCategory: r.Form.Get("UsageCategory"),
			TriggerBy: r.Form.Get("TriggerBy"), TriggerValue: r.Form.Get("TriggerValue"), CurrentValue: r.Form.Get("CurrentValue"),
			IdempotencyToken: r.Form.Get("IdempotencyToken")})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	})}
	go cbSrv.Serve(cbLn)
	t.Cleanup(func() { cbSrv.Close() })

	e.sub = sim.CreateSubaccount("tenant-acme")
	if _, err := e.b.Reconciler().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

// use adds n SMS to the subaccount at the simulator's now, waits for the
// callbacks it fires to be answered, and runs the due actions (the re-arm,
// a trip) to completion. It reports whether the account was active.
func (e *velEnv) use(n int) bool {
	e.t.Helper()
	c := decimal.FromInt(int64(n))
	fs, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.sub.SID, Category: "sms", Count: c, Usage: c})
	if _, suspended := err.(*twiliosim.NotActiveError); suspended {
		return false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	ds, err := e.sim.Wait(ctx, fs...)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, d := range ds {
		if d.Status != http.StatusOK {
			e.t.Fatalf("callback answered %d: %s", d.Status, d.ResponseBody)
		}
	}
	e.b.RunDueOnce(e.ctx)
	return true
}

// steps returns the subaccount's triggers owned by the rule.
func (e *velEnv) steps() []twiliosim.Trigger {
	var out []twiliosim.Trigger
	for _, a := range e.sim.State().Accounts {
		if a.SID != e.sub.SID {
			continue
		}
		for _, t := range a.Triggers {
			if t.FriendlyName == "usagebreaker:test:"+e.rule.Name {
				out = append(out, t)
			}
		}
	}
	return out
}

// liveSteps checks the subaccount holds exactly one owned trigger, unfired.
func (e *velEnv) oneLiveStep() twiliosim.Trigger {
	e.t.Helper()
	ts := e.steps()
	if len(ts) != 1 || ts[0].DateFired != nil || ts[0].Recurring != "" {
		e.t.Fatalf("want one live non-recurring step, have %+v", ts)
	}
	return ts[0]
}

func (e *velEnv) incidents() []store.Incident {
	e.t.Helper()
	incs, err := e.st.ListIncidents(e.ctx, store.IncidentFilter{})
	if err != nil {
		e.t.Fatal(err)
	}
	return incs
}

func (e *velEnv) status() string {
	a, _ := e.sim.Account(e.sub.SID)
	return a.Status
}

func (e *velEnv) alltime() int {
	for _, a := range e.sim.State().Accounts {
		if a.SID == e.sub.SID {
			n, _ := strconv.Atoi(a.Usage["alltime"]["sms"].Count.String())
			return n
		}
	}
	return 0
}

// Steady growth slower than amount per within (here 480 SMS an hour, 20
// every 2.5 minutes, against 500 within 1h) never trips over a simulated
// day; the account holds one live step all along, and the Twilio calls it
// cost are counted for docs/BENCHMARKS.md.
func TestVelocitySteadyGrowthNeverTrips(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	first := e.oneLiveStep()
	if !first.TriggerValue.Equal(decimal.FromInt(125)) {
		t.Fatalf("first step at %s, want 125 (+125 above 0)", first.TriggerValue)
	}
	before := e.sim.State().Requests
	for range 24 * 60 * 2 / 5 {
		e.sim.Advance(150 * time.Second)
		if !e.use(20) {
			t.Fatal("the account was suspended")
		}
	}
	if incs := e.incidents(); len(incs) != 0 {
		t.Fatalf("steady growth tripped: %+v", incs[0])
	}
	live := e.oneLiveStep()
	if got := e.alltime(); got != 24*480 {
		t.Fatalf("usage %d", got)
	}
	steps, err := e.st.Steps(e.ctx, e.rule.Name, e.sub.SID, time.Time{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// Each step fires at the first evaluation (usage tick) at or past it:
	// ticks of 20 fill a step of 125 in 140.
	if len(steps) != 24*480/140 {
		t.Fatalf("%d step firings in the day, want %d", len(steps), 24*480/140)
	}
	if want := decimal.MustParse(steps[len(steps)-1].CurrentValue).Add(decimal.FromInt(125)); !live.TriggerValue.Equal(want) {
		t.Fatalf("live step at %s, want %s (+125 above the last firing's value)", live.TriggerValue, want)
	}
	after := e.sim.State().Requests
	calls := map[string]int{}
	for op, n := range after {
		calls[op] = n - before[op]
	}
	cbs := 0
	for _, d := range e.sim.State().Deliveries {
		if d.AccountSID == e.sub.SID {
			cbs++
		}
	}
	t.Logf("one day at 480 SMS/h (11520 SMS), step 125: %d step firings; Twilio calls: %v; callbacks: %d", len(steps), calls, cbs)
	if calls["triggers.create"] != len(steps) || calls["triggers.delete"] != len(steps) || calls["triggers.list"] != len(steps) || cbs != len(steps) {
		t.Fatalf("per step: want one list, one create, one delete and one callback; got %v and %d callbacks for %d steps", calls, cbs, len(steps))
	}
}

// A burst (25 SMS a minute, three times the rule's rate) after some
// ordinary traffic trips within one step of growing by amount: the rule
// needs steps+1 firings, so it trips once usage grew by at most amount +
// amount/steps since the burst began (here each step is 5 minutes of
// burst, so no step overshoots), and the account is suspended by the trip
// worker. The incident's period is the first
// firing's time.
func TestVelocityBurstTrips(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	for range 6 { // an ordinary hour: 60 SMS
		e.sim.Advance(10 * time.Minute)
		e.use(10)
	}
	start := e.alltime()
	var crossed time.Time
	for i := 1; ; i++ {
		e.sim.Advance(time.Minute)
		if !e.use(25) {
			break
		}
		if e.alltime()-start >= 500 && crossed.IsZero() {
			crossed = e.sim.Now()
		}
		if e.status() == twiliosim.StatusSuspended {
			break
		}
		if i > 40 {
			t.Fatalf("a burst of %d SMS in %d minutes did not trip", e.alltime()-start, i)
		}
	}
	grown := e.alltime() - start
	if e.status() != twiliosim.StatusSuspended {
		t.Fatalf("status %s", e.status())
	}
	if grown > 500+125 {
		t.Fatalf("tripped after %d SMS of burst, want within one step (125) of 500", grown)
	}
	incs := e.incidents()
	if len(incs) != 1 {
		t.Fatalf("incidents %+v", incs)
	}
	inc := incs[0]
	steps, _ := e.st.Steps(e.ctx, e.rule.Name, e.sub.SID, time.Time{}, 1000)
	w := steps[len(steps)-5:]
	if inc.Period != VelocityPeriod(w[0].FiredAt) || inc.State != store.StateDone || inc.Outcome != store.OutcomeSuspended ||
		inc.TriggerValue != "500" || inc.IdempotencyToken != w[4].IdempotencyToken || !strings.HasPrefix(inc.Detail, "4 steps of 125 within ") {
		t.Fatalf("incident %+v; window %v .. %v", inc, w[0].FiredAt, w[4].FiredAt)
	}
	if g, _ := decimal.Parse(inc.CurrentValue); g.Cmp(decimal.FromInt(500)) < 0 {
		t.Fatalf("growth %s < 500", inc.CurrentValue)
	}
	lag := "before crossing"
	if !crossed.IsZero() {
		lag = e.sim.Now().Sub(crossed).String()
	}
	t.Logf("burst of 25 SMS/min: tripped after %d SMS of burst (crossed 500 %s); incident %s: %s", grown, lag, inc.Period, inc.Detail)

	// A repeat of the last callback, and the poller, land on the same incident.
	res, err := e.b.Accept(e.ctx, e.rule, twilioapi.Account{SID: e.sub.SID, FriendlyName: "tenant-acme"},
		Callback{IdempotencyToken: w[4].IdempotencyToken, DateFired: w[4].DateFired, CurrentValue: w[4].CurrentValue,
			UsageCategory: "sms", TriggerBy: "count"})
	if err != nil || !res.Duplicate {
		t.Fatalf("repeat: %+v, %v", res, err)
	}
	if _, err := e.b.Poller().Poll(e.ctx); err != nil {
		t.Fatal(err)
	}
	if incs := e.incidents(); len(incs) != 1 {
		t.Fatalf("after a repeat and a poll: %d incidents", len(incs))
	}
}

// A burst after a long quiet spell trips too: the step armed days ago
// fires early in the burst and counts only as the arm of the next steps,
// which the burst then fills within the hour. (A single trigger of +amount
// armed long ago cannot tell the burst from the slow days.)
func TestVelocityBurstAfterQuietSpellTrips(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	for range 3 * 24 { // three quiet days: 1 SMS an hour
		e.sim.Advance(time.Hour)
		e.use(1)
	}
	if incs := e.incidents(); len(incs) != 0 {
		t.Fatalf("quiet days tripped: %+v", incs)
	}
	start := e.alltime()
	for i := 1; e.status() == twiliosim.StatusActive; i++ {
		e.sim.Advance(time.Minute)
		e.use(25)
		if i > 40 {
			t.Fatalf("a burst of %d SMS did not trip", e.alltime()-start)
		}
	}
	grown := e.alltime() - start
	if grown > 500+125 {
		t.Fatalf("tripped after %d SMS of burst", grown)
	}
	t.Logf("after three quiet days, a burst of 25 SMS/min tripped after %d SMS of burst", grown)
	if incs := e.incidents(); len(incs) != 1 || incs[0].Outcome != store.OutcomeSuspended {
		t.Fatalf("incidents %+v", incs)
	}
}

// A crash between a firing and its re-arm leaves the account with only a
// spent step: the reconciler restores a live one, and the rearm_step action,
// run later, adopts it instead of creating another.
func TestVelocityReconcileRestoresStep(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	e.sim.Advance(time.Minute)
	c := decimal.FromInt(130)
	fs, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.sub.SID, Category: "sms", Count: c, Usage: c})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.sim.Wait(e.ctx, fs...); err != nil {
		t.Fatal(err)
	}
	// The step fired and was recorded; its re-arm has not run ("crash").
	if ts := e.steps(); len(ts) != 1 || ts[0].DateFired == nil {
		t.Fatalf("want the spent step only: %+v", ts)
	}
	if _, err := e.b.Reconciler().Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	restored := e.oneLiveStep()
	if !restored.TriggerValue.Equal(decimal.FromInt(255)) {
		t.Fatalf("restored step at %s, want 130+125", restored.TriggerValue)
	}
	creates := e.sim.State().Requests["triggers.create"]
	e.b.RunDueOnce(e.ctx)
	if got := e.oneLiveStep(); got.SID != restored.SID {
		t.Fatalf("the re-arm replaced the restored step: %+v", got)
	}
	if n := e.sim.State().Requests["triggers.create"]; n != creates {
		t.Fatalf("the re-arm created %d triggers; it must adopt the restored step", n-creates)
	}
	// A second reconcile keeps the live step as it is.
	res, err := e.b.Reconciler().Reconcile(e.ctx)
	if err != nil || res.Created != 0 || res.Deleted != 0 || res.Unchanged != 1 {
		t.Fatalf("reconcile: %+v, %v", res, err)
	}
}

// The polling fallback: with the callbacks lost, growth of amount between
// polls within the window trips the rule with source poll; slower growth
// does not.
func TestVelocityPollFallback(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	// Lose every callback.
	if _, err := e.sim.AddFault(twiliosim.Fault{Target: twiliosim.TargetCallbacks, Drop: true, Times: -1}); err != nil {
		t.Fatal(err)
	}
	poll := func() PollResult {
		t.Helper()
		res, err := e.b.Poller().Poll(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		e.b.RunDueOnce(e.ctx)
		return res
	}
	addUsage := func(n int) bool {
		c := decimal.FromInt(int64(n))
		fs, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.sub.SID, Category: "sms", Count: c, Usage: c})
		if _, suspended := err.(*twiliosim.NotActiveError); suspended {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		e.sim.Wait(e.ctx, fs...)
		return true
	}
	poll()         // the baseline
	for range 12 { // 400 an hour, polled every 5 minutes: no trip
		e.sim.Advance(5 * time.Minute)
		addUsage(33)
		if res := poll(); res.Opened != 0 {
			t.Fatalf("slow growth opened an incident: %+v", res)
		}
	}
	for range 6 { // a burst: 200 every 5 minutes
		e.sim.Advance(5 * time.Minute)
		if !addUsage(200) {
			break
		}
		poll()
	}
	incs := e.incidents()
	if len(incs) != 1 || incs[0].Source != store.SourcePoll || incs[0].Outcome != store.OutcomeSuspended ||
		!strings.HasPrefix(incs[0].Period, VelocityPeriodPrefix) || !strings.Contains(incs[0].Detail, "(polled; amount 500 within 1h0m0s)") {
		t.Fatalf("incidents %+v", incs)
	}
	t.Logf("poll incident %s: %s", incs[0].Period, incs[0].Detail)

	// The lost callbacks of the same burst arrive late (fired before the
	// poll that opened the incident): they land on no new incident.
	acct := twilioapi.Account{SID: e.sub.SID, FriendlyName: "tenant-acme"}
	end := firedAt(incs[0].DateFired, time.Time{}) // the poll that opened it
	for i := range 5 {
		at := end.Add(time.Duration(i-5) * time.Minute)
		res, err := e.b.Accept(e.ctx, e.rule, acct, Callback{IdempotencyToken: "late-" + strconv.Itoa(i), UsageTriggerSID: "UT" + strconv.Itoa(i),
			DateFired: at.Format(time.RFC1123Z), UsageCategory: "sms", TriggerBy: "count", CurrentValue: strconv.Itoa(600 + 125*i)})
		if err != nil || res.Incident.ID != 0 {
			t.Fatalf("late callback %d: %+v, %v", i, res, err)
		}
	}
	if incs := e.incidents(); len(incs) != 1 {
		t.Fatalf("late callbacks opened another incident: %+v", incs)
	}
}

// The Twilio calls a velocity rule costs per subaccount per day, counted on
// the simulator at three steady rates below the rule's 500 an hour, with
// usage added every simulated minute (Twilio evaluates triggers about once
// a minute). Reported in docs/BENCHMARKS.md.
func TestVelocityTwilioCallsPerDay(t *testing.T) {
	for _, perMinute := range []int{1, 4, 8} {
		e := newVelEnv(t, velocityRules)
		before := e.sim.State().Requests
		for range 24 * 60 {
			e.sim.Advance(time.Minute)
			if !e.use(perMinute) {
				t.Fatalf("%d a minute tripped", perMinute)
			}
		}
		st := e.sim.State()
		calls := map[string]int{}
		for op, n := range st.Requests {
			if d := n - before[op]; d > 0 {
				calls[op] = d
			}
		}
		firings := len(st.Deliveries)
		rest := calls["triggers.list"] + calls["triggers.create"] + calls["triggers.delete"]
		t.Logf("%5d SMS/day (%d a minute): %3d step firings = %3d callbacks + %3d REST calls (list %d, create %d, delete %d); other calls: %d",
			perMinute*24*60, perMinute, firings, firings, rest, calls["triggers.list"], calls["triggers.create"], calls["triggers.delete"],
			len(calls)-3)
		if rest != 3*firings || len(e.incidents()) != 0 {
			t.Fatalf("want 3 REST calls per step firing: %v for %d firings", calls, firings)
		}
	}
}

// A callback from a trigger that is not the rule's step as it is now (a
// daily trigger left from when the rule was a threshold rule) is answered
// and re-armed, but never counts toward a trip.
func TestVelocityStaleTriggerDoesNotCount(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	acct := twilioapi.Account{SID: e.sub.SID, FriendlyName: "tenant-acme"}
	now := e.sim.Now()
	for i := range 6 {
		at := now.Add(time.Duration(i) * time.Minute)
		_, err := e.b.Accept(e.ctx, e.rule, acct, Callback{IdempotencyToken: "stale-" + strconv.Itoa(i), UsageTriggerSID: "UTold",
			DateFired: at.Format(time.RFC1123Z), Recurring: "daily", UsageCategory: "sms", TriggerBy: "count", CurrentValue: "600"})
		if err != nil {
			t.Fatal(err)
		}
	}
	e.b.RunDueOnce(e.ctx)
	if steps, _ := e.st.Steps(e.ctx, e.rule.Name, e.sub.SID, time.Time{}, 100); len(steps) != 0 {
		t.Fatalf("stale firings counted: %+v", steps)
	}
	if incs := e.incidents(); len(incs) != 0 {
		t.Fatalf("stale firings tripped: %+v", incs)
	}
	e.oneLiveStep()
}

// The re-arm is exactly once: an attempt whose result was lost (the process
// stopped after its create) is followed by one that adopts the step it
// created instead of creating a second.
func TestVelocityRearmAdoptsAfterLostResult(t *testing.T) {
	e := newVelEnv(t, velocityRules)
	e.sim.Advance(time.Minute)
	c := decimal.FromInt(125)
	fs, err := e.sim.AddUsage(twiliosim.UsageInput{AccountSID: e.sub.SID, Category: "sms", Count: c, Usage: c})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.sim.Wait(e.ctx, fs...); err != nil {
		t.Fatal(err)
	}
	acts, err := e.st.ClaimActions(e.ctx, store.Claim{Owner: "test", LeaseUntil: e.sim.Now().Add(time.Minute)}, e.sim.Now(), 10)
	if err != nil || len(acts) != 1 || acts[0].Kind != store.ActionRearmStep {
		t.Fatalf("claimed %+v, %v", acts, err)
	}
	creates := e.sim.State().Requests["triggers.create"]
	first := e.b.workRearmStep(e.ctx, acts[0]) // its result is "lost": never recorded
	armed := e.oneLiveStep()
	second := e.b.workRearmStep(e.ctx, acts[0])
	if got := e.oneLiveStep(); got.SID != armed.SID || e.sim.State().Requests["triggers.create"] != creates+1 {
		t.Fatalf("second attempt: step %s (first %s), %d creates", got.SID, armed.SID, e.sim.State().Requests["triggers.create"]-creates)
	}
	if first.Outcome() != store.OutcomeArmed || second.Outcome() != store.OutcomeArmed || !strings.HasPrefix(second.Detail(), "adopted step "+armed.SID) {
		t.Fatalf("results %q %q / %q %q", first.Outcome(), first.Detail(), second.Outcome(), second.Detail())
	}
}
