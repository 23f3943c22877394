package breaker

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Coverage states: what the last reconcile left of a rule's trigger on a
// subaccount.
const (
	CoverGuarded    = "guarded"     // the rule's trigger is in place as the rule wants it
	CoverNotMatched = "not matched" // the rule does not match the subaccount
	CoverMissing    = "missing"     // the rule matches, but no trigger of it is in place
	CoverDrifted    = "drifted"     // a trigger of the rule is in place, but not as the rule wants it
	CoverSuspended  = "suspended"   // the rule matches, but the subaccount is not active: left alone
)

// Coverage is the last reconcile's view of every subaccount it listed: per
// rule, one of the Cover* states. It is built as the reconcile goes and never
// changes afterwards.
type Coverage struct {
	At       time.Time // when the reconcile started
	Rules    []string  // the rules in force then, in file order
	Accounts []AccountCoverage
}

// AccountCoverage is one subaccount in Coverage.
type AccountCoverage struct {
	SID          string
	FriendlyName string
	Status       string   // active | suspended | closed
	States       []string // one per Coverage.Rules entry
	Error        string   // the reconcile's problem with this account, if any
}

// coverageBuilder collects a reconcile's view.
type coverageBuilder struct {
	c      *Coverage
	idx    map[string]int // account SID -> index in c.Accounts
	prefix string
}

// newCoverage starts the view of a reconcile that listed subs: matching
// rules of active accounts are CoverMissing until the account's reconcile
// says otherwise (an account the reconcile never reached stays so).
func newCoverage(at time.Time, set *rules.Set, subs []twilioapi.Account, prefix string) *coverageBuilder {
	b := &coverageBuilder{c: &Coverage{At: at}, idx: make(map[string]int, len(subs)), prefix: prefix}
	var rs []*rules.Rule
	if set != nil {
		rs = set.Rules
	}
	for _, r := range rs {
		b.c.Rules = append(b.c.Rules, r.Name)
	}
	b.c.Accounts = make([]AccountCoverage, 0, len(subs))
	for _, a := range subs {
		ac := AccountCoverage{SID: a.SID, FriendlyName: a.FriendlyName, Status: a.Status, States: make([]string, len(rs))}
		for i, r := range rs {
			switch {
			case !r.Matches(a.SID, a.FriendlyName):
				ac.States[i] = CoverNotMatched
			case a.Status != twilioapi.StatusActive:
				ac.States[i] = CoverSuspended
			default:
				ac.States[i] = CoverMissing
			}
		}
		b.idx[a.SID] = len(b.c.Accounts)
		b.c.Accounts = append(b.c.Accounts, ac)
	}
	return b
}

// add records one account's reconcile. Not safe for concurrent use.
func (b *coverageBuilder) add(sid string, ar accountResult, err error) {
	i, ok := b.idx[sid]
	if !ok {
		return
	}
	ac := &b.c.Accounts[i]
	if err != nil { // without the "account SID (name): " the row already says
		ac.Error = strings.TrimPrefix(err.Error(), fmt.Sprintf("account %s (%q): ", ac.SID, ac.FriendlyName))
	}
	for j, name := range b.c.Rules {
		if st, ok := ar.cover[b.prefix+name]; ok && ac.States[j] == CoverMissing {
			ac.States[j] = st
		}
	}
}

func (b *coverageBuilder) done() *Coverage {
	sort.SliceStable(b.c.Accounts, func(i, j int) bool {
		x, y := b.c.Accounts[i], b.c.Accounts[j]
		if c := strings.Compare(x.FriendlyName, y.FriendlyName); c != 0 {
			return c < 0
		}
		return x.SID < y.SID
	})
	return b.c
}

// covered notes what the reconcile left of the trigger named name.
func (r *accountResult) covered(name, state string) {
	if r.cover == nil {
		r.cover = map[string]string{}
	}
	r.cover[name] = state
}

// coveredAfterFailedCreate: the old triggers of that name, if any, still
// stand but are not what the rule wants.
func (r *accountResult) coveredAfterFailedCreate(name string, olds int) {
	if olds > 0 {
		r.covered(name, CoverDrifted)
		return
	}
	r.covered(name, CoverMissing)
}

// LastCoverage returns the view of the last finished reconcile, if any.
func (rc *Reconciler) LastCoverage() (*Coverage, bool) {
	r := rc.lastRecon.Load()
	if r == nil || r.Coverage == nil {
		return nil, false
	}
	return r.Coverage, true
}
