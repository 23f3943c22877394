package rules

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// The rule keys of the people-in-the-loop features (notify, end_calls,
// reactivate, rearm_allowance): parsed here, called from parseRule.

var reactivateKeys = []string{"after", "at", "next_period"}

// NotifierNameRE is what a notifier's name looks like (config notifiers[].name).
var NotifierNameRE = nameRE

// Reactivate is a rule's reactivation policy: exactly one of After, At and
// NextPeriod is set.
type Reactivate struct {
	After      time.Duration // this long after the suspension
	At         string        // a 5-field cron spec, UTC: the first time it matches after the suspension
	NextPeriod bool          // when the rule's period (GMT day, month, year) rolls over

	schedule cron.Schedule // At, parsed
}

// String describes the policy as written ("after 24h", "at \"0 6 * * *\" UTC", "next_period").
func (p *Reactivate) String() string {
	switch {
	case p == nil:
		return "none"
	case p.After > 0:
		return "after " + p.After.String()
	case p.At != "":
		return fmt.Sprintf("at %q UTC", p.At)
	default:
		return "next_period"
	}
}

// Due is when an account this rule suspended at suspendedAt is reactivated.
func (p *Reactivate) Due(recurring string, suspendedAt time.Time) time.Time {
	t := suspendedAt.UTC()
	switch {
	case p.After > 0:
		return t.Add(p.After)
	case p.schedule != nil:
		return p.schedule.Next(t)
	default:
		return PeriodEnd(recurring, t)
	}
}

// PeriodEnd is when the GMT period of recurring that t falls in ends (the
// start of the next one); for alltime (or anything else), the far future.
func PeriodEnd(recurring string, t time.Time) time.Time {
	t = t.UTC()
	switch recurring {
	case RecurringDaily:
		return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
	case RecurringMonthly:
		return time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	case RecurringYearly:
		return time.Date(t.Year()+1, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
}

// Allowance is how much more a trigger re-armed on reactivation allows:
// rearm_allowance, else the threshold.
func (r *Rule) Allowance() decimal.Decimal {
	if r.RearmAllowance.Sign() > 0 {
		return r.RearmAllowance
	}
	return r.Threshold
}

// parseOperatorKeys reads notify, end_calls, reactivate and rearm_allowance.
func parseOperatorKeys(d *strict.Decoder, m *strict.Map, r *Rule) {
	if v := m.Get("notify"); v.Written() {
		r.NotifySet = true
		r.Notify = []string{}
		if !v.Present() {
			d.Errorf(v, "must be a list of notifier names (use [] for none)")
		}
		items, _ := d.List(v)
		seen := map[string]bool{}
		for _, it := range items {
			if !it.Present() {
				d.Errorf(it, "must be a notifier name, not null")
				continue
			}
			s, ok := d.String(it)
			switch {
			case !ok:
			case !nameRE.MatchString(s):
				d.Errorf(it, "%q is not a notifier name (1 to 32 characters of a-z, 0-9 and \"-\")", s)
			case seen[s]:
				d.Errorf(it, "%q is listed twice", s)
			default:
				seen[s] = true
				r.Notify = append(r.Notify, s)
				r.NotifyLines = append(r.NotifyLines, it.Line)
			}
		}
	}

	ecV := m.Get("end_calls")
	if b, ok := d.Bool(ecV); ok {
		r.EndCalls = b
		if b && r.Action == ActionNotify {
			d.Errorf(ecV, "needs action suspend (a rule that only notifies suspends nothing, so no calls are ended)")
		}
	}

	if v := m.Get("reactivate"); v.Written() {
		parseReactivate(d, v, r)
	}

	if v := m.Get("approval"); v.Written() {
		parseApproval(d, v, r)
	}

	if v := m.Get("rearm_allowance"); v.Present() {
		if s, ok := d.Raw(v, "a decimal number"); ok {
			r.RearmAllowance, _ = allowance(d, v, s)
		}
	} else if v.Written() {
		d.Errorf(v, "must be a decimal number, not null (leave it out to use the threshold)")
	}
}

func parseReactivate(d *strict.Decoder, v strict.Value, r *Rule) {
	if !v.Present() {
		d.Errorf(v, "must be a mapping with one of after, at, next_period, not null")
		return
	}
	before := len(d.Errs)
	m := d.Map(v, reactivateKeys)
	if m.Bad() {
		return
	}
	keyErrs := len(d.Errs) > before // an unknown key was reported: do not also say none is set
	p := &Reactivate{}
	set := 0
	ok := true
	if av := m.Get("after"); av.Written() {
		set++
		if dur, good := d.Duration(av); good {
			if dur <= 0 {
				d.Errorf(av, "must be greater than 0")
				ok = false
			} else {
				p.After = dur
			}
		} else {
			if !av.Present() {
				d.Errorf(av, "must be a duration (like \"24h\"), not null")
			}
			ok = false
		}
	}
	if atV := m.Get("at"); atV.Written() {
		set++
		if s, good := d.String(atV); good {
			sched, problem := parseAt(s)
			if problem != "" {
				d.Errorf(atV, "%s", problem)
				ok = false
			} else {
				p.At, p.schedule = s, sched
			}
		} else {
			if !atV.Present() {
				d.Errorf(atV, "must be a cron spec (like \"0 6 * * *\"), not null")
			}
			ok = false
		}
	}
	if npV := m.Get("next_period"); npV.Written() {
		set++
		b, good := d.Bool(npV)
		switch {
		case !good:
			if !npV.Present() {
				d.Errorf(npV, "must be true, not null")
			}
			ok = false
		case !b:
			d.Errorf(npV, "must be true (to leave the account suspended until a person acts, leave reactivate out)")
			ok = false
		case r.Recurring == RecurringAllTime:
			d.Errorf(npV, "recurring alltime has no next period; use after or at")
			ok = false
		default:
			p.NextPeriod = true
		}
	}
	switch {
	case set == 0:
		if !keyErrs {
			d.Errorf(v, "set one of after, at, next_period")
		}
		return
	case set > 1:
		d.Errorf(v, "set only one of after, at, next_period")
		return
	case !ok:
		return
	}
	if r.Action == ActionNotify {
		d.Errorf(v, "needs action suspend (a rule that only notifies suspends nothing to reactivate)")
		return
	}
	r.Reactivate = p
}

// parseAt parses a reactivate.at spec: five cron fields or a descriptor like
// "@daily", always in UTC.
func parseAt(s string) (sched cron.Schedule, problem string) {
	defer func() {
		if recover() != nil {
			sched, problem = nil, fmt.Sprintf("%q is not a valid cron spec", s)
		}
	}()
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return nil, "must not be empty"
	case strings.HasPrefix(t, "TZ=") || strings.HasPrefix(t, "CRON_TZ="):
		return nil, fmt.Sprintf("%q: the time zone is always UTC; remove the TZ= prefix", s)
	case strings.HasPrefix(t, "@every"):
		return nil, fmt.Sprintf("%q: use after for an interval", s)
	}
	sched, err := cron.ParseStandard(t)
	if err != nil {
		return nil, fmt.Sprintf("%q is not a valid cron spec (5 fields, UTC): %v", s, err)
	}
	return sched, ""
}

// allowance parses rearm_allowance exactly: a decimal > 0 without "+".
func allowance(d *strict.Decoder, v strict.Value, s string) (decimal.Decimal, bool) {
	if strings.HasPrefix(s, "+") {
		d.Errorf(v, "%q: write the allowance without \"+\" (the re-armed trigger is always an offset above current usage)", s)
		return decimal.Zero, false
	}
	a, err := decimal.Parse(s)
	switch {
	case err != nil:
		d.Errorf(v, "%q is not a decimal number", s)
	case a.Sign() <= 0:
		d.Errorf(v, "%q must be greater than 0", s)
	case fracDigits(a) > ThresholdDecimals:
		d.Errorf(v, "%q has more than %d decimal places (Twilio keeps %d)", s, ThresholdDecimals, ThresholdDecimals)
	default:
		return a, true
	}
	return decimal.Zero, false
}
