package breaker

// Failing loudly in the reconciler: a reconcile that would delete
// many owned triggers at once (reconcile.max_deletes), or every one while the
// rules match no subaccount (without allow_disarm), holds those deletions,
// names the rules, pages every notifier once and shows the count in
// usagebreaker_reconcile_deletes_held until a person releases them
// (ReleaseDeletes: POST /api/v1/reconcile/release, `usagebreaker release
// deletes`) or fixes the rules. The state is in memory: after a restart the
// first reconcile finds the same deletions and holds them again.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// DefaultMaxDeletes is Settings.MaxDeletes when it is not set.
const DefaultMaxDeletes = 50

// ReleaseDeletesHint is how a person lets held deletions go.
const ReleaseDeletesHint = "usagebreaker release deletes (POST /api/v1/reconcile/release on the admin listener)"

// RuleMetrics are the reconciler's "fail loudly" metrics.
type RuleMetrics struct {
	RuleMatched *prometheus.GaugeVec // rule: active subaccounts the rule matches, as of the last reconcile
	DeletesHeld prometheus.Gauge     // owned triggers a reconcile would delete and holds
}

func newRuleMetrics(reg prometheus.Registerer) *RuleMetrics {
	m := &RuleMetrics{
		RuleMatched: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "usagebreaker_rule_matched_subaccounts",
			Help: "Active subaccounts each rule matches, as of the last reconcile (0: the rule guards nothing).",
		}, []string{"rule"}),
		DeletesHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_reconcile_deletes_held",
			Help: "Owned triggers the last reconcile would have deleted and held for a person (reconcile.max_deletes, allow_disarm).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.RuleMatched, m.DeletesHeld)
	}
	return m
}

// deleteHold is the reconciler's held deletions.
type deleteHold struct {
	mu       sync.Mutex
	held     int             // deletions the last reconcile held
	rules    []string        // whose triggers they are
	released int             // a person released this many: the next reconcile may delete up to it
	paged    map[string]bool // notifiers told about this hold
}

// HeldDeletes reports the deletions the last reconcile held and whose rules.
func (rc *Reconciler) HeldDeletes() (int, []string) {
	rc.holds.mu.Lock()
	defer rc.holds.mu.Unlock()
	return rc.holds.held, append([]string(nil), rc.holds.rules...)
}

// ReleaseDeletes lets the held deletions go: the next reconcile (asked for
// now) deletes them, as long as it would delete no more than were held. It
// returns how many were held.
func (rc *Reconciler) ReleaseDeletes() int {
	rc.holds.mu.Lock()
	n := rc.holds.held
	if n > 0 {
		rc.holds.released = n
	}
	rc.holds.mu.Unlock()
	if n > 0 {
		rc.log.Warn("held trigger deletions released by a person; the next reconcile deletes them", "held", n)
		rc.requestReconcile()
	}
	return n
}

// holdDecision says whether a reconcile that would delete total owned
// triggers (no longer wanted) must hold them. matchedNone: the rules match
// none of the active subaccounts.
func (rc *Reconciler) holdDecision(s *Settings, total int, matchedNone bool) (hold bool, why string) {
	if total == 0 {
		return false, ""
	}
	max := s.MaxDeletes
	if max <= 0 {
		max = DefaultMaxDeletes
	}
	rc.holds.mu.Lock()
	released := rc.holds.released
	rc.holds.mu.Unlock()
	if total <= released {
		return false, ""
	}
	switch {
	case matchedNone && !s.AllowDisarm:
		return true, "the rules match none of the active subaccounts (allow_disarm is not set)"
	case total > max:
		return true, fmt.Sprintf("more than reconcile.max_deletes (%d) in one reconcile", max)
	}
	return false, ""
}

// recordHold records the outcome of a reconcile's decision: held deletions,
// or none (which ends a hold and a release).
func (rc *Reconciler) recordHold(held int, rules []string) (newHold bool) {
	rc.holds.mu.Lock()
	defer rc.holds.mu.Unlock()
	rc.m.DeletesHeld.Set(float64(held))
	if held == 0 {
		rc.holds.held, rc.holds.rules, rc.holds.released, rc.holds.paged = 0, nil, 0, nil
		return false
	}
	newHold = rc.holds.held == 0
	rc.holds.held, rc.holds.rules, rc.holds.released = held, rules, 0
	if rc.holds.paged == nil {
		rc.holds.paged = map[string]bool{}
	}
	return newHold
}

// pageHold tells every notifier not yet told about the held deletions. A
// notifier that fails is tried again by the next reconcile that holds.
func (rc *Reconciler) pageHold(ctx context.Context, s *Settings, held int, rules []string, why string) {
	ev := &notify.Event{Kind: notify.KindDeletes, Instance: s.Instance, At: rc.now().UTC(),
		Deletes: &notify.Deletes{Held: held, MaxDeletes: max(s.MaxDeletes, 0), Rules: rules, Why: why, Release: ReleaseDeletesHint}}
	if ev.Deletes.MaxDeletes == 0 {
		ev.Deletes.MaxDeletes = DefaultMaxDeletes
	}
	ev.ID = fmt.Sprintf("%s-deletes-%d", s.Instance, ev.At.Unix())
	ev.Headline = notify.Headline(ev)
	for _, n := range s.Operator.Notifiers {
		rc.holds.mu.Lock()
		done := rc.holds.paged[n.Name()]
		rc.holds.mu.Unlock()
		if done {
			continue
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err := n.Send(sctx, ev, nil)
		cancel()
		if err != nil {
			rc.m.Notifications.WithLabelValues(n.Name(), "failed").Inc()
			rc.log.Error("cannot page about the held trigger deletions; the next reconcile tries again", "notifier", n.Name(), "err", err)
			continue
		}
		rc.m.Notifications.WithLabelValues(n.Name(), string(OutcomeSent)).Inc()
		rc.holds.mu.Lock()
		if rc.holds.paged != nil {
			rc.holds.paged[n.Name()] = true
		}
		rc.holds.mu.Unlock()
	}
}

// WouldDisarm checks a rule set before it is put in force (a reload): it
// reports whether, among the active subaccounts of the last listing, it
// matches none while there are some, and how many owned triggers the last
// reconcile kept (which a reconcile would then delete).
func (rc *Reconciler) WouldDisarm(set *rules.Set) (disarm bool, active, owned int) {
	for _, a := range rc.accounts.Snapshot() {
		if a.Status != twilioapi.StatusActive {
			continue
		}
		active++
		if set == nil {
			continue
		}
		for _, r := range set.Rules {
			if r.Matches(a.SID, a.FriendlyName) {
				return false, 0, 0
			}
		}
	}
	if last, ok := rc.LastReconcile(); ok {
		for _, n := range last.Managed {
			owned += n
		}
	}
	return active > 0, active, owned
}

// ruleNamesOf returns the sorted rule names of owned triggers' FriendlyNames.
func ruleNamesOf(names map[string]bool, prefix string) []string {
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, strings.TrimPrefix(n, prefix))
	}
	sort.Strings(out)
	return out
}
