package daemon

import (
	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
)

// primeRuleSeries exports each rule's per-rule counters at 0 before anything
// happened. A counter series that first appears already at 1 shows no
// increase() in Prometheus, so without this the alert on a trip (and the
// dashboard's trips panel) would miss the first trip of every rule after each
// start. Called at start and after every good reload; series of rules that
// were removed stay (counters never go back).
func primeRuleSeries(m *breaker.Metrics, set *rules.Set) {
	if m == nil || set == nil {
		return
	}
	for _, r := range set.Rules {
		m.Incidents.WithLabelValues(r.Name, string(store.SourceCallback))
		m.Incidents.WithLabelValues(r.Name, string(store.SourcePoll))
		m.Skipped.WithLabelValues(r.Name)
		if r.Action != rules.ActionSuspend {
			continue
		}
		for _, o := range []store.Outcome{breaker.OutcomeSuspended, breaker.OutcomeAlreadySuspended, breaker.OutcomeDryRun, breaker.OutcomeFailed} {
			m.Suspensions.WithLabelValues(r.Name, string(o))
		}
	}
}
