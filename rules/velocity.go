package rules

import (
	"fmt"
	"time"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Velocity rules ("suspend when usage grows by amount within within",
// CONTRACT.md "Faster signals: velocity rules") are carried by non-recurring
// Usage Triggers of "+amount/steps" that the daemon re-arms itself after
// every firing (breaker/velocity.go).

// Velocity bounds of steps.
const (
	DefaultVelocitySteps = 4
	MaxVelocitySteps     = 20
)

var velocityKeys = []string{"amount", "within", "steps"}

// Velocity is a velocity rule's rate: growth of Amount within Within,
// watched in Steps steps of Amount/Steps.
type Velocity struct {
	Amount decimal.Decimal
	Within time.Duration
	Steps  int
}

// Step is how much usage each step trigger waits for: Amount/Steps (exact,
// at most 6 decimal places: Load checks it).
func (v *Velocity) Step() decimal.Decimal { return v.Amount.DivInt(int64(v.Steps)) }

// StepValue is the step trigger's TriggerValue: "+{Step}", an offset Twilio
// resolves against the current all-time usage when the trigger is created.
func (v *Velocity) StepValue() string { return "+" + v.Step().String() }

// String describes the rate ("500 within 1h0m0s in 4 steps").
func (v *Velocity) String() string {
	if v == nil {
		return ""
	}
	return fmt.Sprintf("%s within %s in %d steps", v.Amount, v.Within, v.Steps)
}

// IsVelocity reports whether r is a velocity rule.
func (r *Rule) IsVelocity() bool { return r != nil && r.Velocity != nil }

// parseVelocity reads a rule's velocity mapping.
func parseVelocity(d *strict.Decoder, v strict.Value, r *Rule) {
	if !v.Present() {
		d.Errorf(v, "must be a mapping with amount and within, not null")
		return
	}
	m := d.Map(v, velocityKeys)
	if m.Bad() {
		return
	}
	vel := &Velocity{Steps: DefaultVelocitySteps}
	ok := true

	amV := m.Get("amount")
	if s, good := d.Raw(amV, "a decimal number"); good {
		a, err := decimal.Parse(s)
		switch {
		case err != nil:
			d.Errorf(amV, "%q is not a decimal number", s)
			ok = false
		case a.Sign() <= 0:
			d.Errorf(amV, "%q must be greater than 0", s)
			ok = false
		default:
			vel.Amount = a
		}
	} else {
		if !amV.Present() {
			d.Required(amV)
		}
		ok = false
	}

	wV := m.Get("within")
	withinOK := false
	if dur, good := d.Duration(wV); good {
		if dur <= 0 {
			d.Errorf(wV, "must be greater than 0")
			ok = false
		} else {
			vel.Within, withinOK = dur, true
		}
	} else {
		if !wV.Present() {
			d.Required(wV)
		}
		ok = false
	}

	if sV := m.Get("steps"); sV.Written() {
		n, good := d.Int(sV)
		switch {
		case !good:
			if !sV.Present() {
				d.Errorf(sV, "must be a whole number from 1 to %d, not null (leave it out for %d)", MaxVelocitySteps, DefaultVelocitySteps)
			}
			ok = false
		case n < 1 || n > MaxVelocitySteps:
			d.Errorf(sV, "%d must be from 1 to %d", n, MaxVelocitySteps)
			ok = false
		default:
			vel.Steps = n
		}
		if ok && fracDigits(vel.Step()) > ThresholdDecimals {
			d.Errorf(sV, "amount %s / steps %d is not a decimal of at most %d places (Twilio keeps %d); choose an amount divisible by steps",
				vel.Amount, vel.Steps, ThresholdDecimals, ThresholdDecimals)
			ok = false
		}
	} else if ok && fracDigits(vel.Step()) > ThresholdDecimals {
		d.Errorf(amV, "amount %s / steps %d is not a decimal of at most %d places (Twilio keeps %d); choose an amount divisible by steps",
			vel.Amount, vel.Steps, ThresholdDecimals, ThresholdDecimals)
		ok = false
	}
	// Twilio evaluates a trigger about once a minute, so a step fires at
	// most once a minute and steps+1 firings span at least steps minutes:
	// a shorter within could never trip. Twice that leaves room.
	if least := time.Duration(2*vel.Steps) * time.Minute; withinOK && vel.Within < least {
		d.Errorf(wV, "%s is too short for %d steps: must be at least %s (Twilio evaluates a trigger about once a minute, so %d step firings take at least %d minutes)",
			vel.Within, vel.Steps, least, vel.Steps+1, vel.Steps)
		ok = false
	}
	if ok {
		r.Velocity = vel
	}
}

// checkVelocityKeys refuses the operator keys that mean nothing for a
// velocity rule.
func checkVelocityKeys(d *strict.Decoder, m *strict.Map, r *Rule) {
	if v := m.Get("rearm_allowance"); v.Written() {
		d.Errorf(v, "a velocity rule re-arms its own steps; remove rearm_allowance")
	}
	if r.Reactivate != nil && r.Reactivate.NextPeriod {
		d.Errorf(m.Get("reactivate"), "a velocity rule has no period; use after or at")
	}
}
