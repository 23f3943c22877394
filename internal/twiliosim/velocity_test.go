package twiliosim

import (
	"net/http"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim/schematest"
)

// A non-recurring "+N" trigger (a velocity rule's step) is resolved against
// the current all-time usage of its category when it is created, not the
// day's; it fires once when the all-time usage reaches it, whatever day that
// is, and never again. The answers are checked against Twilio's OpenAPI
// description when it is available.
func TestNonRecurringOffsetFiresOnce(t *testing.T) {
	var wrap func(http.Handler) http.Handler
	if _, ok := schematest.SpecPath(); ok {
		wrap = func(h http.Handler) http.Handler { return schematest.Middleware(t, h) }
	}
	e := newEnvWith(t, Options{}, wrap)
	sub := e.sim.CreateSubaccount("tenant")
	rc := newReceiver(t)
	count := func(n int64) []Firing {
		t.Helper()
		c := decimal.FromInt(n)
		f, err := e.sim.AddUsage(UsageInput{AccountSID: sub.SID, Category: "sms", Count: c, Usage: c})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.sim.Wait(ctxT(t), f...); err != nil {
			t.Fatal(err)
		}
		return f
	}
	count(50)
	e.sim.Advance(24 * time.Hour)
	count(10) // today 10, all time 60

	m := e.createTrigger(sub.SID, triggerForm(rc.srv.URL+"/twilio/usage-triggers/sms-velocity", "sms", "count", "", "+125"))
	if m["trigger_value"] != "185.000000" || m["recurring"] != nil || m["current_value"] != "60" {
		t.Fatalf("+125 above an all-time 60: trigger_value %v, recurring %v, current_value %v", m["trigger_value"], m["recurring"], m["current_value"])
	}
	if f := count(100); len(f) != 0 {
		t.Fatalf("fired at 160: %+v", f)
	}
	e.sim.Advance(24 * time.Hour) // a new day: a non-recurring trigger does not care
	f := count(30)
	if len(f) != 1 || !f[0].CurrentValue.Equal(decimal.FromInt(190)) {
		t.Fatalf("at 190 all time: %+v", f)
	}
	got := rc.requests()
	if len(got) != 1 || got[0].form.Get("Recurring") != "" || got[0].form.Get("TriggerValue") != "185" ||
		got[0].form.Get("CurrentValue") != "190" || got[0].form.Get("UsageRecordUri") != "/2010-04-01/Accounts/"+sub.SID+"/Usage/Records.json?Category=sms" {
		t.Fatalf("callback %+v", got)
	}
	for range 3 {
		e.sim.Advance(24 * time.Hour)
		if f := count(500); len(f) != 0 {
			t.Fatalf("a non-recurring trigger fired twice: %+v", f)
		}
	}
	trs := e.sim.Triggers(sub.SID)
	if len(trs) != 1 || trs[0].DateFired == nil || !trs[0].DateFired.Equal(t0.Add(48*time.Hour)) {
		t.Fatalf("triggers %+v", trs)
	}
}
