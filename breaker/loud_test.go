package breaker

import (
	"testing"
)

// Issue 14.13: notifications showed the threshold as Twilio echoes it
// ("50.000000"), not as the rule writes it.
func TestNotificationShowsTheRulesThreshold(t *testing.T) {
	f := newOpFixture(t, GuardSettings{})
	a := f.api.addAccount("tenant-a", "active")
	f.reconcile(t)
	cb := callbackFor(a, "tok-echo", "totalprice", "price", "50.120000")
	cb.TriggerValue = "50.000000"
	f.accept(t, "spend-daily", a, cb)
	f.settle(t)
	evs := f.pager.events()
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	if i := evs[0].Incident; i.Threshold != "50" || i.Value != "50.12" {
		t.Errorf("threshold %q, value %q; want 50 and 50.12", i.Threshold, i.Value)
	}
}
