package notify

import (
	"strings"
	"testing"
	"time"
)

// The page about held trigger deletions renders for every
// notifier type (it has no incident) and the webhook carries its facts.
func TestDeletesPage(t *testing.T) {
	ev := &Event{Kind: KindDeletes, ID: "prod-deletes-1", Instance: "prod", At: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
		Deletes: &Deletes{Held: 120, MaxDeletes: 50, Rules: []string{"spend-daily", "sms-burst"},
			Why: "more than reconcile.max_deletes (50) in one reconcile", Release: "usagebreaker release deletes"}}
	ev.Headline = Headline(ev)
	if ev.Headline != "usagebreaker prod: TRIGGER DELETIONS HELD" {
		t.Errorf("headline %q", ev.Headline)
	}
	for _, typ := range Types {
		tm, err := newTemplates(typ, "{{.Incident.Rule}}", "")
		if err != nil {
			t.Fatal(err)
		}
		text, err := base{tmpl: tm}.text(ev)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		for _, want := range []string{"120", "spend-daily, sms-burst", "usagebreaker release deletes"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s text lacks %q:\n%s", typ, want, text)
			}
		}
	}
	p := NewPayload(ev, "x")
	if p.Type != KindDeletes || p.Deletes == nil || p.Deletes.Held != 120 || p.Incident != nil {
		t.Errorf("payload %+v", p)
	}
}

// The threshold and value as the rule writes them, not as
// Twilio echoes them, in the text and in the webhook's JSON.
func TestThresholdAsTheRuleWritesIt(t *testing.T) {
	ev := SampleEvent(KindIncident)
	ev.Incident.Threshold, ev.Incident.Value = "5.000000", "5.120000"
	for _, typ := range Types {
		tm, err := newTemplates(typ, "", "")
		if err != nil {
			t.Fatal(err)
		}
		text, err := base{tmpl: tm}.text(ev)
		if err != nil || strings.Contains(text, "5.000000") || !strings.Contains(text, "5.12") {
			t.Errorf("%s: %v\n%s", typ, err, text)
		}
	}
	if p := NewPayload(ev, ""); p.Incident.Threshold != "5" || p.Incident.Value != "5.12" {
		t.Errorf("payload %+v", p.Incident)
	}
	if ev.Incident.Threshold != "5.000000" {
		t.Error("the event itself was changed")
	}
}
