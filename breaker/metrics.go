package breaker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/store"
)

// Metrics are the breaker's Prometheus metrics (names from CONTRACT.md). No
// label carries a subaccount SID: there can be thousands.
type Metrics struct {
	Callbacks           *prometheus.CounterVec // outcome
	Suspensions         *prometheus.CounterVec // rule, outcome
	Incidents           *prometheus.CounterVec // rule, source
	Skipped             *prometheus.CounterVec // rule: trips not acted on because verification failed
	ManagedTriggers     *prometheus.GaugeVec   // rule
	ReconcileDuration   prometheus.Histogram
	ReconcileLastOK     prometheus.Gauge
	ReconcileErrors     prometheus.Counter
	ActionsPending      prometheus.Gauge
	ActionAttemptErrors *prometheus.CounterVec // kind
	// SuspendWriteLatency: from a callback's receipt to its suspend request
	// written to Twilio (the first attempt's), the durable record and the
	// read before the write included.
	SuspendWriteLatency prometheus.Histogram

	*OperatorMetrics // notifications, reactivations, guard
	*RuleMetrics     // rules' matches, held deletions (deletehold.go)
}

// Callback outcomes for usagebreaker_callbacks_total.
const (
	OutcomeAccepted       = "accepted"
	OutcomeDuplicate      = "duplicate"
	OutcomeBadSignature   = "bad_signature"
	OutcomeBadRequest     = "bad_request"
	OutcomeUnknownRule    = "unknown_rule"
	OutcomeUnknownAccount = "unknown_account"
	OutcomeError          = "error"
)

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_callbacks_total",
			Help: "Usage Trigger callbacks received, by outcome.",
		}, []string{"outcome"}),
		Suspensions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_suspensions_total",
			Help: "Suspension actions finished, by rule and outcome (suspended, already_suspended, dry_run, failed).",
		}, []string{"rule", "outcome"}),
		Incidents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_incidents_total",
			Help: "Incidents opened (one per rule, subaccount and period), by rule and source (callback, poll).",
		}, []string{"rule", "source"}),
		Skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_incidents_skipped_total",
			Help: "Incidents not acted on because verification failed (rule gone or no longer matching, value below threshold).",
		}, []string{"rule"}),
		ManagedTriggers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "usagebreaker_managed_triggers",
			Help: "Usage Triggers this instance keeps, by rule, as of the last reconcile.",
		}, []string{"rule"}),
		ReconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "usagebreaker_reconcile_duration_seconds",
			Help:    "How long reconciles take.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}),
		ReconcileLastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_reconcile_last_success_timestamp_seconds",
			Help: "Unix time of the last reconcile that finished without errors.",
		}),
		ReconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usagebreaker_reconcile_errors_total",
			Help: "Reconciles that ended with at least one error.",
		}),
		ActionsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_actions_pending",
			Help: "Actions recorded but not yet done or failed.",
		}),
		ActionAttemptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_action_attempt_errors_total",
			Help: "Failed attempts at an action that will be retried, by kind.",
		}, []string{"kind"}),
		SuspendWriteLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "usagebreaker_callback_to_suspend_write_seconds",
			Help: "Time from receiving a Usage Trigger callback to its suspend request being written to Twilio (first attempt; the durable record and the read before the write included).",
			Buckets: []float64{0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
				1, 2.5, 5, 10, 30, 60, 300},
		}),
	}
	m.OperatorMetrics = newOperatorMetrics(reg)
	m.RuleMetrics = newRuleMetrics(reg)
	if reg != nil {
		reg.MustRegister(m.Callbacks, m.Suspensions, m.Incidents, m.Skipped, m.ManagedTriggers,
			m.ReconcileDuration, m.ReconcileLastOK, m.ReconcileErrors, m.ActionsPending, m.ActionAttemptErrors,
			m.SuspendWriteLatency)
	}
	for _, o := range []string{OutcomeAccepted, OutcomeDuplicate, OutcomeBadSignature, OutcomeBadRequest,
		OutcomeUnknownRule, OutcomeUnknownAccount, OutcomeError} {
		m.Callbacks.WithLabelValues(o) // export zeros so rate() works from the start
	}
	return m
}

// OperatorMetrics are the people-in-the-loop metrics (names from CONTRACT.md).
type OperatorMetrics struct {
	Notifications *prometheus.CounterVec // notifier, outcome: sent | failed
	Reactivations *prometheus.CounterVec // reason: manual | scheduled
	GuardHeld     prometheus.Gauge
	CallsEnded    prometheus.Counter
	Rearms        prometheus.Counter
}

func newOperatorMetrics(reg prometheus.Registerer) *OperatorMetrics {
	m := &OperatorMetrics{
		Notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_notifications_total",
			Help: "Notification attempts by notifier and outcome: sent, or failed (each failed attempt; it is retried unless permanent).",
		}, []string{"notifier", "outcome"}),
		Reactivations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_reactivations_total",
			Help: "Subaccounts reactivated after a suspension, by reason: manual (admin API, CLI) or scheduled (a rule's reactivate policy).",
		}, []string{"reason"}),
		GuardHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_guard_held",
			Help: "Suspensions the blast-radius guard holds until POST /api/v1/guard/release.",
		}),
		CallsEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usagebreaker_calls_ended_total",
			Help: "In-progress calls ended after a suspension (end_calls).",
		}),
		Rearms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "usagebreaker_rearms_total",
			Help: "Triggers re-armed on reactivation (replaced by one offset by rearm_allowance).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Notifications, m.Reactivations, m.GuardHeld, m.CallsEnded, m.Rearms)
	}
	for _, r := range []string{store.ViaManual, store.ViaScheduled} {
		m.Reactivations.WithLabelValues(r)
	}
	return m
}
