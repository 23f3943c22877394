package notify

import (
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// The default messages. Every notifier type but twilio_sms uses the long
// ones; SMS gets one short paragraph.
const (
	DefaultIncidentTemplate = `{{.Headline}}
Rule:        {{.Incident.Rule}}{{with .Incident.RuleDescription}} ({{.}}){{end}}
Subaccount:  {{.Incident.AccountName}} ({{.Incident.AccountSID}})
Category:    {{.Incident.UsageCategory}} by {{.Incident.TriggerBy}}, {{.Incident.Recurring}}, period {{.Incident.Period}}
Value:       {{.Incident.Value}} (threshold {{.Incident.Threshold}})
Action:      {{.Incident.Taken}}
When:        {{utc .At}}
{{- with .Incident.AutoReactivate}}
Reactivates: {{.}}{{end}}
{{- with .Incident.Reactivate}}
Reactivate:  {{.}}{{end}}
Incident:    {{.Incident.ID}} on {{.Instance}}`

	DefaultGuardTemplate = `{{.Headline}}
{{.Guard.Suspended}} suspensions in the last {{.Guard.Window}} reached guard.max_suspensions ({{.Guard.MaxSuspensions}}).
Further suspensions are HELD, not executed ({{.Guard.Held}} held now); this is the only page until they are released.
First held:  {{.Incident.AccountName}} ({{.Incident.AccountSID}}), rule {{.Incident.Rule}}, {{.Incident.UsageCategory}} {{.Incident.Value}} >= {{.Incident.Threshold}}
Review:      usagebreaker incidents
Release:     {{.Guard.Release}}
When:        {{utc .At}}`

	DefaultSMSIncidentTemplate = `{{.Headline}}: {{.Incident.UsageCategory}} {{.Incident.Value}} >= {{.Incident.Threshold}} ({{.Incident.Period}}, {{utc .At}}). Action: {{.Incident.Taken}}.{{with .Incident.AutoReactivate}} Reactivates {{.}}.{{end}}{{with .Incident.Reactivate}} Undo: {{.}}{{end}}`

	DefaultSMSGuardTemplate = `{{.Headline}}: {{.Guard.Suspended}} suspensions in {{.Guard.Window}} reached the limit ({{.Guard.MaxSuspensions}}); further suspensions are HELD ({{.Guard.Held}} now). First: {{.Incident.AccountName}} ({{.Incident.AccountSID}}), rule {{.Incident.Rule}}. Review: usagebreaker incidents. Release: {{.Guard.Release}}`

	// DefaultDeletesTemplate is the page about held trigger deletions (every
	// notifier; not configurable).
	DefaultDeletesTemplate = `{{.Headline}}
A reconcile would delete {{.Deletes.Held}} owned usage trigger(s), which would leave subaccounts unguarded: {{.Deletes.Why}}.
The deletions are HELD; everything else was reconciled. This is the only page until they are released.
Rules:       {{range $i, $r := .Deletes.Rules}}{{if $i}}, {{end}}{{$r}}{{end}}
If intended: {{.Deletes.Release}}
Otherwise:   fix the rules or the subaccounts, then reload
When:        {{utc .At}}`

	DefaultSMSDeletesTemplate = `{{.Headline}}: a reconcile would delete {{.Deletes.Held}} triggers ({{.Deletes.Why}}); HELD. Rules: {{range $i, $r := .Deletes.Rules}}{{if $i}}, {{end}}{{$r}}{{end}}. If intended: {{.Deletes.Release}}`

	// DefaultSubject is the e-mail subject.
	DefaultSubject = `{{.Headline}}`
)

// Funcs are the functions templates may use besides text/template's own:
// utc formats a time as "2006-01-02 15:04:05 UTC"; upper and lower change case.
var Funcs = template.FuncMap{
	"utc":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"upper": strings.ToUpper,
	"lower": strings.ToLower,
}

type templates struct {
	incident, guard, deletes *template.Template
}

func newTemplates(typ, incident, guard string) (*templates, error) {
	defInc, defGuard, defDeletes := DefaultIncidentTemplate, DefaultGuardTemplate, DefaultDeletesTemplate
	if typ == TypeTwilioSMS {
		defInc, defGuard, defDeletes = DefaultSMSIncidentTemplate, DefaultSMSGuardTemplate, DefaultSMSDeletesTemplate
	}
	var (
		t   templates
		err error
	)
	if t.incident, err = Parse("template", or(incident, defInc)); err != nil {
		return nil, err
	}
	if t.guard, err = Parse("guard_template", or(guard, defGuard)); err != nil {
		return nil, err
	}
	if t.deletes, err = Parse("deletes", defDeletes); err != nil {
		return nil, err
	}
	return &t, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Parse parses a message template with Funcs.
func Parse(name, text string) (*template.Template, error) {
	t, err := template.New(name).Funcs(Funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Check parses text and runs it on a sample event of kind, so that a
// template naming a field that does not exist is caught when the config is
// loaded, not when an incident happens. The error is text/template's, which
// names the template's own line and column.
func Check(kind, text string) error {
	t, err := Parse(kind, text)
	if err != nil {
		return err
	}
	ev := SampleEvent(kind)
	if _, err := execute(t, ev); err != nil {
		return err
	}
	return nil
}

// SampleEvent is an event of kind with every field filled, for Check and the docs.
func SampleEvent(kind string) *Event {
	inc := &Incident{ID: 42, Rule: "sms-spend-daily", RuleDescription: "Stop tenants that spend more than $50 a day",
		AccountSID: "AC0123456789abcdef0123456789abcdef", AccountName: "tenant-07", UsageCategory: "totalprice",
		TriggerBy: "price", Recurring: "daily", Period: "daily:2026-11-24", Value: "50.01", Threshold: "50",
		Action: "suspend", Outcome: "suspended", Detail: "value 50.01 >= threshold 50", Taken: "suspended the subaccount",
		Reactivate:     `usagebreaker reactivate AC0123456789abcdef0123456789abcdef --reason "..."`,
		AutoReactivate: "2026-11-25 10:14:03 UTC (reactivate: after 24h)",
		CreatedAt:      time.Date(2026, 11, 24, 10, 14, 3, 0, time.UTC)}
	ev := &Event{Kind: kind, ID: "prod-" + kind + "-42", Instance: "prod", At: inc.CreatedAt, Incident: inc}
	if kind == KindGuard {
		ev.Guard = &Guard{MaxSuspensions: 20, Window: time.Hour, Suspended: 20, Held: 1,
			Release: "POST /api/v1/guard/release on the admin listener"}
	}
	ev.Headline = Headline(ev)
	return ev
}

// Headline is the one-line summary of an event.
func Headline(ev *Event) string {
	prefix := "usagebreaker"
	if ev.Instance != "" {
		prefix += " " + ev.Instance
	}
	if ev.Kind == KindGuard {
		return prefix + ": GUARD TRIPPED, suspensions held"
	}
	if ev.Kind == KindDeletes {
		return prefix + ": TRIGGER DELETIONS HELD"
	}
	inc := ev.Incident
	if inc == nil {
		return prefix
	}
	what := map[string]string{
		"suspended":         "SUSPENDED",
		"already_suspended": "LIMIT CROSSED (already suspended)",
		"dry_run":           "DRY RUN",
		"notified":          "LIMIT CROSSED",
		"skipped":           "NOT ACTED ON",
		"failed":            "SUSPENSION FAILED",
		"awaiting_approval": "AWAITING APPROVAL",
		"vetoed":            "VETOED",
	}[inc.Outcome]
	if what == "" {
		what = strings.ToUpper(inc.Outcome)
	}
	return fmt.Sprintf("%s: %s %s (%s), rule %s", prefix, what, inc.AccountName, inc.AccountSID, inc.Rule)
}

// tidy returns ev with the incident's value and threshold as a rule writes
// them ("5", "50.01"), not as Twilio echoes them ("5.000000"); ev itself is
// not changed.
func tidy(ev *Event) *Event {
	if ev == nil || ev.Incident == nil {
		return ev
	}
	cp, inc := *ev, *ev.Incident
	inc.Value, inc.Threshold = decimal.Tidy(inc.Value), decimal.Tidy(inc.Threshold)
	cp.Incident = &inc
	return &cp
}

func execute(t *template.Template, ev *Event) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, ev); err != nil {
		return "", err
	}
	return b.String(), nil
}

// text renders the event's message.
func (b base) text(ev *Event) (string, error) {
	ev = tidy(ev)
	t := b.tmpl.incident
	switch ev.Kind {
	case KindGuard:
		t = b.tmpl.guard
	case KindDeletes:
		t = b.tmpl.deletes
	}
	s, err := execute(t, ev)
	if err != nil {
		return "", Permanent(fmt.Errorf("render %s: %w", t.Name(), err))
	}
	return s, nil
}
