// Package replay runs rules offline on usage they are given, with the live
// path's own decision (breaker.Decide, breaker.GuardSettings.Admits): the
// rule unit tests (`usagebreaker test rules`, ruletest.go) on usage written
// in a test file, and the backtest (`usagebreaker backtest`, backtest.go) on
// the daily Usage Records Twilio kept. Nothing here writes to Twilio or to
// the state.
package replay

import (
	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// OutcomeHeld is the outcome of a suspension the guard would have held.
const OutcomeHeld = breaker.OutcomeHeld

// Outcomes are the outcomes a replayed trip can have.
var Outcomes = []string{string(breaker.OutcomeSuspended), string(breaker.OutcomeAlreadySuspended),
	string(breaker.OutcomeDryRun), string(breaker.OutcomeNotified), OutcomeHeld}

// guardLedger is the guard over replayed suspensions: how many it let
// through and held in its current window.
type guardLedger struct {
	g         breaker.GuardSettings
	suspended int
	held      int
}

// decide is breaker.Decide, then the guard for a suspension: suspended (the
// account's status becomes suspended, so the next rule finds it so) or held.
func decide(t breaker.Trip, acct *twilioapi.Account, gl *guardLedger) breaker.Decision {
	t.Account = *acct
	d := breaker.Decide(t)
	if d.Outcome != breaker.OutcomeSuspended {
		return d
	}
	if !gl.g.Admits(gl.suspended, gl.held) {
		gl.held++
		d.Outcome = OutcomeHeld
		d.Detail = "held by the guard: " + d.Detail
		return d
	}
	gl.suspended++
	acct.Status = twilioapi.StatusSuspended
	return d
}
