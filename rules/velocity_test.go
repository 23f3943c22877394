package rules

import (
	"testing"
	"time"
)

func TestVelocityRule(t *testing.T) {
	rs, err := Parse("v.yaml", []byte(`rules:
  - name: sms-velocity
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    velocity:
      amount: "500"
      within: 1h
    action: suspend
    reactivate: {after: 2h}
  - name: spend-velocity
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    velocity: {amount: "10", within: 30m, steps: 8}
    action: notify
`))
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	if !r.IsVelocity() || r.Velocity.Steps != DefaultVelocitySteps || r.Velocity.Within != time.Hour || r.Velocity.Amount.String() != "500" {
		t.Fatalf("velocity = %+v", r.Velocity)
	}
	spec := r.Spec("prod", "https://b.example.com")
	if spec.TriggerValue != "+125" || spec.Recurring != "" || spec.FriendlyName != "usagebreaker:prod:sms-velocity" ||
		spec.TriggerBy != "count" || spec.UsageCategory != "sms" {
		t.Fatalf("spec = %+v", spec)
	}
	if got := rs[1].Spec("prod", "https://b.example.com").TriggerValue; got != "+1.25" {
		t.Fatalf("step of 10 in 8 = %s, want +1.25", got)
	}
	if rs[0].Threshold.Sign() != 0 || rs[0].Recurring != "" {
		t.Fatalf("a velocity rule has no threshold nor recurring: %+v", rs[0])
	}
	a, b := NewSet(rs[:1]), NewSet([]*Rule{rs[0], rs[1]})
	if a.Checksum() == b.Checksum() {
		t.Fatal("checksums must differ")
	}
}
