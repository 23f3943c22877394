package main

import (
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/daemon"
)

// Issue 14.13: `incidents` showed the threshold as Twilio's echo.
func TestIncidentsTableShowsTheRulesThreshold(t *testing.T) {
	var b strings.Builder
	printIncidents(&b, []daemon.IncidentJSON{{ID: 1, Rule: "sms", AccountSID: "AC" + strings.Repeat("0", 32),
		TriggerValue: "5.000000", CurrentValue: "5.100000", Outcome: "notified", State: "done"}})
	if !strings.Contains(b.String(), "5.1 / 5 ") || strings.Contains(b.String(), "5.000000") {
		t.Errorf("table:\n%s", b.String())
	}
}
