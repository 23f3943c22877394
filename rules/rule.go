// Package rules reads rule files (strictly), matches rules to subaccounts, and
// says which Usage Triggers each rule wants on each subaccount.
package rules

import (
	"strings"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Rule actions.
const (
	ActionSuspend = "suspend"
	ActionNotify  = "notify"
)

// CallbackPathPrefix is where the callback listener serves a rule's callbacks:
// CallbackPathPrefix + rule name.
const CallbackPathPrefix = "/twilio/usage-triggers/"

// Rule is one validated rule.
type Rule struct {
	Name          string
	Description   string
	Include       []string // globs on friendly name; AC + 32 hex is an exact SID
	Exclude       []string // same syntax; exclude wins over include
	UsageCategory string
	TriggerBy     string          // count | usage | price
	Recurring     string          // daily | monthly | yearly | alltime; "" for a velocity rule
	Threshold     decimal.Decimal // zero for a velocity rule
	Velocity      *Velocity       // nil unless a velocity rule (velocity.go)
	Action        string          // suspend | notify
	DryRun        bool

	// People in the loop (reactivate.go, approval.go).
	Notify         []string    // notifier names; meaningful when NotifySet
	NotifySet      bool        // notify was written: Notify replaces default_notifiers ([] means none)
	NotifyLines    []int       // the line of each Notify entry
	EndCalls       bool        // after suspending, end the subaccount's in-progress calls
	Reactivate     *Reactivate // nil: only a person reactivates
	Approval       *Approval   // nil: the suspension is not held for a person (approval.go)
	RearmAllowance decimal.Decimal

	File string // the rule file it came from (as resolved)
	Line int    // the line of the rule's "- name:" entry

	compiled *compiled // Include and Exclude, compiled by Load
}

// OwnedPrefix is the FriendlyName prefix of every trigger an instance owns.
func OwnedPrefix(instance string) string { return "usagebreaker:" + instance + ":" }

// TriggerFriendlyName is the FriendlyName of the trigger this rule owns.
func (r *Rule) TriggerFriendlyName(instance string) string { return OwnedPrefix(instance) + r.Name }

// CallbackURL is where Twilio must call for this rule.
func (r *Rule) CallbackURL(publicURL string) string {
	return strings.TrimRight(publicURL, "/") + CallbackPathPrefix + r.Name
}

// Spec is the trigger this rule wants on every subaccount it matches.
//
// A velocity rule's is one step: non-recurring, "+amount/steps" above the
// usage when it is created; the daemon re-arms it after each firing.
func (r *Rule) Spec(instance, publicURL string) twilioapi.TriggerSpec {
	if r.Velocity != nil {
		return twilioapi.TriggerSpec{
			FriendlyName:   r.TriggerFriendlyName(instance),
			CallbackURL:    r.CallbackURL(publicURL),
			CallbackMethod: "POST",
			UsageCategory:  r.UsageCategory,
			TriggerBy:      r.TriggerBy,
			TriggerValue:   r.Velocity.StepValue(),
		}
	}
	return twilioapi.TriggerSpec{
		FriendlyName:   r.TriggerFriendlyName(instance),
		CallbackURL:    r.CallbackURL(publicURL),
		CallbackMethod: "POST",
		UsageCategory:  r.UsageCategory,
		TriggerBy:      r.TriggerBy,
		Recurring:      r.Recurring,
		TriggerValue:   r.Threshold.String(),
	}
}

// Set is a validated, immutable set of rules with unique names.
type Set struct {
	Rules  []*Rule // in file order, files in the order they were named
	byName map[string]*Rule
}

// NewSet builds a Set; names must already be unique (Load checks that).
func NewSet(rs []*Rule) *Set {
	s := &Set{Rules: rs, byName: make(map[string]*Rule, len(rs))}
	for _, r := range rs {
		s.byName[r.Name] = r
	}
	return s
}

// Get returns the rule with that name, or nil.
func (s *Set) Get(name string) *Rule {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// Len is the number of rules.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.Rules)
}
