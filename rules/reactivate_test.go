package rules

import (
	"reflect"
	"testing"
	"time"
)

const operatorRules = `rules:
  - name: spend
    accounts:
      include: ["*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    notify: [ops-slack, oncall-sms]
    end_calls: true
    reactivate:
      after: 90m
    rearm_allowance: "25.5"
  - name: at
    accounts:
      include: ["*"]
    usage_category: sms
    recurring: monthly
    threshold: 100
    action: suspend
    notify: []
    reactivate:
      at: "0 6 * * *"
  - name: next
    accounts:
      include: ["*"]
    usage_category: calls
    recurring: monthly
    threshold: 10
    action: suspend
    reactivate: {next_period: true}
  - name: plain
    accounts:
      include: ["*"]
    usage_category: calls
    recurring: yearly
    threshold: 7
    action: notify
`

func TestOperatorKeys(t *testing.T) {
	rs, err := Parse("r.yaml", []byte(operatorRules))
	if err != nil {
		t.Fatal(err)
	}
	spend, at, next, plain := rs[0], rs[1], rs[2], rs[3]
	if !spend.NotifySet || !reflect.DeepEqual(spend.Notify, []string{"ops-slack", "oncall-sms"}) || !reflect.DeepEqual(spend.NotifyLines, []int{10, 10}) {
		t.Errorf("spend notify = %v %v %v", spend.NotifySet, spend.Notify, spend.NotifyLines)
	}
	if !spend.EndCalls || spend.Reactivate.After != 90*time.Minute || spend.Allowance().String() != "25.5" {
		t.Errorf("spend = %+v", spend)
	}
	if !at.NotifySet || len(at.Notify) != 0 || at.Notify == nil {
		t.Errorf("notify: [] = %v %#v", at.NotifySet, at.Notify)
	}
	if plain.NotifySet || plain.Notify != nil || plain.EndCalls || plain.Reactivate != nil {
		t.Errorf("plain = %+v", plain)
	}
	if at.Allowance().String() != "100" {
		t.Errorf("default allowance = %s, want the threshold", at.Allowance())
	}

	suspended := time.Date(2026, 11, 24, 10, 14, 3, 0, time.UTC)
	for _, c := range []struct {
		r    *Rule
		want time.Time
		desc string
	}{
		{spend, suspended.Add(90 * time.Minute), "after 1h30m0s"},
		{at, time.Date(2026, 11, 25, 6, 0, 0, 0, time.UTC), `at "0 6 * * *" UTC`},
		{next, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "next_period"},
	} {
		if got := c.r.Reactivate.Due(c.r.Recurring, suspended); !got.Equal(c.want) {
			t.Errorf("%s: due %s, want %s", c.r.Name, got, c.want)
		}
		if got := c.r.Reactivate.String(); got != c.desc {
			t.Errorf("%s: String %q, want %q", c.r.Name, got, c.desc)
		}
	}
	// A suspension before 06:00 is reactivated the same day.
	early := time.Date(2026, 11, 24, 5, 59, 0, 0, time.UTC)
	if got := at.Reactivate.Due(at.Recurring, early); !got.Equal(time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)) {
		t.Errorf("early: %s", got)
	}

	// The checksum sees the new keys.
	for name, change := range map[string]func(r *Rule){
		"end_calls":       func(r *Rule) { r.EndCalls = false },
		"notify":          func(r *Rule) { r.Notify = r.Notify[:1] },
		"rearm_allowance": func(r *Rule) { r.RearmAllowance = r.Threshold },
		"reactivate":      func(r *Rule) { r.Reactivate = nil },
	} {
		rs2, _ := Parse("r.yaml", []byte(operatorRules))
		change(rs2[0])
		if NewSet(rs).Checksum() == NewSet(rs2).Checksum() {
			t.Errorf("checksum ignores %s", name)
		}
	}
}

func TestPeriodEnd(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC)
	for rec, want := range map[string]time.Time{
		RecurringDaily:   time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		RecurringMonthly: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		RecurringYearly:  time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		if got := PeriodEnd(rec, at); !got.Equal(want) {
			t.Errorf("%s: %s", rec, got)
		}
	}
	if got := PeriodEnd(RecurringAllTime, at); got.Year() != 9999 {
		t.Errorf("alltime: %s", got)
	}
	if got := PeriodEnd(RecurringMonthly, time.Date(2026, 1, 31, 12, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("end of January: %s", got)
	}
}

func TestApprovalKey(t *testing.T) {
	rs, err := Parse("r.yaml", []byte(`rules:
  - name: veto
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    approval: {mode: veto, window: 15m}
  - name: approve
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "60"
    action: suspend
    approval: {mode: approve}
  - name: none
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "70"
    action: suspend
`))
	if err != nil {
		t.Fatal(err)
	}
	if a := rs[0].Approval; a == nil || a.Mode != ApprovalVeto || a.Window != 15*time.Minute || a.String() != "veto within 15m0s" {
		t.Errorf("veto = %+v", a)
	}
	if a := rs[1].Approval; a == nil || a.Mode != ApprovalApprove || a.Window != 0 || a.String() != "approve" {
		t.Errorf("approve = %+v", a)
	}
	if rs[2].Approval != nil {
		t.Errorf("none = %+v", rs[2].Approval)
	}
}
