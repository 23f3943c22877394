package replay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Rule unit tests, like `promtool test rules`. A test file names rule files
// (relative to itself) and cases; each case is a set of subaccounts, the usage
// Twilio would report for them in the rules' current period, and what the
// rules must do about it:
//
//	rule_files: [rules/*.yaml]
//	dry_run: false                 # optional: the global dry run, for every case
//	guard: {max_suspensions: 20}   # optional: the guard, for every case
//	cases:
//	  - name: acme over its daily cap is suspended
//	    dry_run: true               # optional, this case only
//	    guard: {max_suspensions: 1} # optional, this case only
//	    subaccounts:
//	      - {name: tenant-acme, sid: AC00000000000000000000000000000001}
//	      - {name: tenant-old, status: suspended}   # status: active (default) | suspended | closed
//	      - {name: internal-qa}                      # sid: made up from the name when absent
//	    usage:
//	      - {account: tenant-acme, category: totalprice, price: "12.50"}
//	      - {account: tenant-acme, category: sms, count: 40, usage: 40, price: "0.30"}
//	    expect:
//	      - {rule: spend-daily, account: tenant-acme, outcome: suspended}
//	    expect_none: [internal-qa]
//
// A rule sees the usage record of its usage_category (its count, usage or
// price, as trigger_by says); usage entries of one account and category add
// up. For totalprice, usage and price are one value (as Twilio reports it):
// either may be given. Each subaccount, in the order listed, meets each rule,
// in file order, through breaker.Decide: a subaccount one rule suspends is
// already_suspended for the next, and the guard's window holds the whole
// case (suspensions past max_suspensions are held).
//
// expect is exhaustive for the subaccounts it names: every trip on them must
// be listed, with its outcome. expect_none names subaccounts no rule may trip.
// Subaccounts in neither are not checked.

var (
	testKeys       = []string{"rule_files", "dry_run", "guard", "cases"}
	caseKeys       = []string{"name", "dry_run", "guard", "subaccounts", "usage", "expect", "expect_none"}
	guardKeys      = []string{"max_suspensions"}
	subaccountKeys = []string{"name", "sid", "status"}
	usageKeys      = []string{"account", "category", "count", "usage", "price"}
	expectKeys     = []string{"rule", "account", "outcome"}

	sidRE = regexp.MustCompile(`^AC[0-9a-fA-F]{32}$`)
)

// TestFile is a parsed rule test file.
type TestFile struct {
	Path  string
	Rules *rules.Set
	Cases []Case
}

// Case is one test case.
type Case struct {
	Name        string
	Line        int
	DryRun      bool // the global dry run
	Guard       breaker.GuardSettings
	Subaccounts []twilioapi.Account
	Usage       map[string]map[string]twilioapi.UsageRecord // account name -> category -> record
	Expect      []Expect
	ExpectNone  []ExpectNone
}

// Expect is one expected trip.
type Expect struct {
	Rule, Account, Outcome string
	Line                   int
}

// ExpectNone is a subaccount no rule may trip.
type ExpectNone struct {
	Account string
	Line    int
}

// Failure is one failed expectation.
type Failure struct {
	File      string
	Line      int
	Case      string
	Want, Got string
}

func (f Failure) String() string {
	return fmt.Sprintf("%s:%d: case %s: want %s, got %s", f.File, f.Line, f.Case, f.Want, f.Got)
}

// LoadTestFile reads a rule test file and the rule files it names, strictly.
// Problems in either are a strict.Errors (FILE:LINE: message each).
func LoadTestFile(path string) (*TestFile, error) {
	data, err := rules.ReadFile(path)
	if err != nil {
		return nil, strict.Errors{{File: path, Msg: "cannot read: " + err.Error()}}
	}
	d := &strict.Decoder{File: path}
	root, ok := d.Parse(data)
	if !ok {
		return nil, d.Errs
	}
	top := d.Map(root, testKeys)
	tf := &TestFile{Path: path}

	// The rules first: the cases name them.
	var patterns []string
	rv := top.Get("rule_files")
	if items, ok := d.List(rv); ok {
		for _, it := range items {
			if s, ok := d.String(it); ok {
				patterns = append(patterns, s)
			}
		}
		if len(items) == 0 {
			d.Errorf(rv, "at least one pattern is required")
		}
	} else if !rv.Present() && !top.Bad() {
		d.Required(rv)
	}
	errs := d.Errs
	if len(patterns) > 0 {
		set, _, err := rules.Load(patterns, filepath.Dir(path))
		var rerrs rules.Errors
		switch {
		case errors.As(err, &rerrs):
			for _, p := range rerrs {
				if p.File == "" { // a glob's problem: at rule_files
					p.File, p.Line = path, rv.Line
				}
				errs = append(errs, p)
			}
		case err != nil:
			errs.Add(path, rv.Line, "rule_files: %v", err)
		default:
			tf.Rules = set
		}
	}
	d.Errs = nil

	fileDry := false
	if v := top.Get("dry_run"); v.Present() {
		fileDry, _ = d.Bool(v)
	}
	fileGuard := parseGuard(d, top.Get("guard"), breaker.GuardSettings{})

	cv := top.Get("cases")
	items, ok := d.List(cv)
	if !ok && !cv.Present() && !top.Bad() {
		d.Required(cv)
	}
	if ok && len(items) == 0 {
		d.Errorf(cv, "at least one case is required")
	}
	names := map[string]int{}
	for i, it := range items {
		c, ok := parseCase(d, tf.Rules, it, i, fileDry, fileGuard)
		if first, dup := names[c.Name]; dup && c.Name != "" {
			d.ErrorfAt(c.Line, it, "case %q: duplicate name; first at line %d", c.Name, first)
			continue
		}
		names[c.Name] = c.Line
		if ok {
			tf.Cases = append(tf.Cases, c)
		}
	}
	errs = append(errs, d.Errs...)
	if len(errs) > 0 {
		errs.Sort([]string{path})
		return nil, errs
	}
	return tf, nil
}

// peekName is a case's name, when the item is a mapping with a string one.
func peekName(it strict.Value) string {
	if !it.Present() || it.Node.Kind != yaml.MappingNode {
		return ""
	}
	c := it.Node.Content
	for i := 0; i+1 < len(c); i += 2 {
		if c[i].Value == "name" && c[i+1].Kind == yaml.ScalarNode {
			return c[i+1].Value
		}
	}
	return ""
}

func parseGuard(d *strict.Decoder, v strict.Value, g breaker.GuardSettings) breaker.GuardSettings {
	if !v.Present() {
		return g
	}
	m := d.Map(v, guardKeys)
	if mv := m.Get("max_suspensions"); mv.Present() {
		if n, ok := d.Int(mv); ok {
			if n < 0 {
				d.Errorf(mv, "must be 0 (no guard) or more")
			} else {
				g.MaxSuspensions = n
			}
		}
	}
	return g
}

func parseCase(d *strict.Decoder, set *rules.Set, it strict.Value, idx int, dry bool, g breaker.GuardSettings) (Case, bool) {
	prefix := fmt.Sprintf("cases[%d]: ", idx)
	if name := peekName(it); name != "" {
		prefix = fmt.Sprintf("case %q: ", name)
	}
	it = it.Rebase(prefix)
	if !it.Present() {
		d.Errorf(it, "must be a mapping, not null")
		return Case{}, false
	}
	before := len(d.Errs)
	m := d.Map(it, caseKeys)
	if m.Bad() {
		return Case{}, false
	}
	c := Case{Line: it.Line, DryRun: dry, Usage: map[string]map[string]twilioapi.UsageRecord{}}
	nv := m.Get("name")
	if s, ok := d.String(nv); ok && strings.TrimSpace(s) != "" {
		c.Name = s
	} else if ok {
		d.Errorf(nv, "must not be empty")
	} else if !nv.Present() {
		d.Required(nv)
	}
	if v := m.Get("dry_run"); v.Present() {
		c.DryRun, _ = d.Bool(v)
	}
	c.Guard = parseGuard(d, m.Get("guard"), g)

	known := map[string]bool{}
	sv := m.Get("subaccounts")
	subs, ok := d.List(sv)
	if !ok && !sv.Present() {
		d.Required(sv)
	}
	if ok && len(subs) == 0 {
		d.Errorf(sv, "at least one subaccount is required")
	}
	sids := map[string]string{}
	for _, s := range subs {
		sm := d.Map(s, subaccountKeys)
		if sm.Bad() {
			continue
		}
		a := twilioapi.Account{Status: twilioapi.StatusActive}
		nv := sm.Get("name")
		name, ok := d.String(nv)
		if !ok {
			if !nv.Present() {
				d.Required(nv)
			}
			continue
		}
		if known[name] {
			d.Errorf(nv, "subaccount %q is listed twice", name)
			continue
		}
		a.FriendlyName = name
		a.SID = madeUpSID(name)
		if v := sm.Get("sid"); v.Present() {
			if sid, ok := d.String(v); ok {
				if !sidRE.MatchString(sid) {
					d.Errorf(v, "%q is not AC followed by 32 hex digits", sid)
				} else {
					a.SID = "AC" + strings.ToLower(sid[2:])
				}
			}
		}
		if other, dup := sids[a.SID]; dup {
			d.Errorf(sm.Get("sid"), "subaccounts %q and %q have the same SID %s", other, name, a.SID)
		}
		sids[a.SID] = name
		if v := sm.Get("status"); v.Present() {
			if st, ok := d.String(v); ok {
				if !slices.Contains([]string{twilioapi.StatusActive, twilioapi.StatusSuspended, twilioapi.StatusClosed}, st) {
					d.Errorf(v, "%q is not active, suspended or closed", st)
				}
				a.Status = st
			}
		}
		known[name] = true
		c.Subaccounts = append(c.Subaccounts, a)
	}
	account := func(v strict.Value) (string, bool) {
		name, ok := d.String(v)
		if !ok {
			if !v.Present() {
				d.Required(v)
			}
			return "", false
		}
		if !known[name] {
			d.Errorf(v, "%q is not one of the case's subaccounts", name)
			return "", false
		}
		return name, true
	}

	if uv := m.Get("usage"); uv.Present() {
		items, _ := d.List(uv)
		for _, u := range items {
			um := d.Map(u, usageKeys)
			if um.Bad() {
				continue
			}
			name, okName := account(um.Get("account"))
			cv := um.Get("category")
			cat, okCat := d.String(cv)
			switch {
			case !okCat && !cv.Present():
				d.Required(cv)
			case okCat && !rules.IsUsageCategory(cat):
				if sg := strict.Suggest(cat, rules.UsageCategories()); sg != "" {
					d.Errorf(cv, "unknown usage category %q (did you mean %q?)", cat, sg)
				} else {
					d.Errorf(cv, "unknown usage category %q", cat)
				}
				okCat = false
			}
			var vals [3]decimal.Decimal
			var given [3]bool
			for i, k := range []string{"count", "usage", "price"} {
				v := um.Get(k)
				if !v.Present() {
					continue
				}
				s, ok := d.Raw(v, "a decimal")
				if !ok {
					continue
				}
				x, err := decimal.Parse(strings.TrimSpace(s))
				if err != nil || x.Sign() < 0 {
					d.Errorf(v, "%q is not a non-negative decimal", s)
					continue
				}
				vals[i], given[i] = x, true
			}
			if !okName || !okCat {
				continue
			}
			if cat == "totalprice" { // usage is price; count is empty
				switch {
				case given[2] && !given[1]:
					vals[1] = vals[2]
				case given[1] && !given[2]:
					vals[2] = vals[1]
				}
			}
			byCat := c.Usage[name]
			if byCat == nil {
				byCat = map[string]twilioapi.UsageRecord{}
				c.Usage[name] = byCat
			}
			rec := byCat[cat]
			rec.Category = cat
			rec.Count = rec.Count.Add(vals[0])
			rec.Usage = rec.Usage.Add(vals[1])
			rec.Price = rec.Price.Add(vals[2])
			byCat[cat] = rec
		}
	}

	if ev := m.Get("expect"); ev.Present() {
		items, _ := d.List(ev)
		for _, e := range items {
			em := d.Map(e, expectKeys)
			if em.Bad() {
				continue
			}
			x := Expect{Line: e.Line}
			okAll := true
			rv := em.Get("rule")
			if s, ok := d.String(rv); ok {
				if set != nil && set.Get(s) == nil {
					names := make([]string, 0, set.Len())
					for _, r := range set.Rules {
						names = append(names, r.Name)
					}
					if sg := strict.Suggest(s, names); sg != "" {
						d.Errorf(rv, "no rule %q in the rule files (did you mean %q?)", s, sg)
					} else {
						d.Errorf(rv, "no rule %q in the rule files", s)
					}
					okAll = false
				}
				x.Rule = s
			} else {
				if !rv.Present() {
					d.Required(rv)
				}
				okAll = false
			}
			if name, ok := account(em.Get("account")); ok {
				x.Account = name
			} else {
				okAll = false
			}
			ov := em.Get("outcome")
			if s, ok := d.String(ov); ok {
				if !slices.Contains(Outcomes, s) {
					d.Errorf(ov, "%q is not an outcome (%s)", s, strings.Join(Outcomes, ", "))
					okAll = false
				}
				x.Outcome = s
			} else {
				if !ov.Present() {
					d.Required(ov)
				}
				okAll = false
			}
			if okAll {
				c.Expect = append(c.Expect, x)
			}
		}
	}
	if nv := m.Get("expect_none"); nv.Present() {
		items, _ := d.List(nv)
		for _, v := range items {
			if name, ok := account(v); ok {
				c.ExpectNone = append(c.ExpectNone, ExpectNone{Account: name, Line: v.Line})
			}
		}
	}
	if len(c.Expect) == 0 && len(c.ExpectNone) == 0 && len(d.Errs) == before {
		d.Errorf(it, "expects nothing: give expect, expect_none or both")
	}
	return c, len(d.Errs) == before
}

// madeUpSID is the SID of a test subaccount written without one.
func madeUpSID(name string) string {
	h := sha256.Sum256([]byte("usagebreaker test subaccount " + name))
	return "AC" + hex.EncodeToString(h[:16])
}

// trip is one rule's decision about one subaccount in a case.
type trip struct {
	rule, account string
	d             breaker.Decision
	matched       bool
}

// Run runs every case and returns the failed expectations, in file order.
func (f *TestFile) Run() []Failure {
	var out []Failure
	for _, c := range f.Cases {
		out = append(out, f.runCase(c)...)
	}
	return out
}

// Trips evaluates case c: every rule's decision about every subaccount.
func (f *TestFile) trips(c Case) []trip {
	gl := &guardLedger{g: c.Guard}
	var out []trip
	for i := range c.Subaccounts {
		acct := c.Subaccounts[i] // its status changes as rules suspend it
		for _, r := range f.Rules.Rules {
			rec := c.Usage[acct.FriendlyName][r.UsageCategory]
			t := breaker.Trip{Rule: r, Value: rec.Value(r.TriggerBy), DryRun: c.DryRun}
			out = append(out, trip{rule: r.Name, account: acct.FriendlyName, d: decide(t, &acct, gl),
				matched: r.Matches(acct.SID, acct.FriendlyName)})
		}
	}
	return out
}

func (f *TestFile) runCase(c Case) []Failure {
	all := f.trips(c)
	find := func(rule, account string) trip {
		for _, t := range all {
			if t.rule == rule && t.account == account {
				return t
			}
		}
		return trip{}
	}
	fail := func(line int, want, got string) Failure {
		return Failure{File: f.Path, Line: line, Case: c.Name, Want: want, Got: got}
	}
	var out []Failure
	expected := map[[2]string]bool{}
	named := map[string]bool{}
	for _, x := range c.Expect {
		expected[[2]string{x.Rule, x.Account}] = true
		named[x.Account] = true
		t := find(x.Rule, x.Account)
		want := fmt.Sprintf("%s on %s %s", x.Rule, x.Account, x.Outcome)
		switch {
		case !t.matched:
			out = append(out, fail(x.Line, want, fmt.Sprintf("no trip (the rule does not match %s)", x.Account)))
		case !t.d.Tripped():
			out = append(out, fail(x.Line, want, "no trip ("+t.d.Detail+")"))
		case string(t.d.Outcome) != x.Outcome:
			out = append(out, fail(x.Line, want, fmt.Sprintf("%s (%s)", t.d.Outcome, t.d.Detail)))
		}
	}
	// expect is exhaustive for the subaccounts it names.
	for _, t := range all {
		if named[t.account] && t.d.Tripped() && !expected[[2]string{t.rule, t.account}] {
			out = append(out, fail(c.Line, "no other trip on "+t.account, fmt.Sprintf("%s on %s %s (%s)", t.rule, t.account, t.d.Outcome, t.d.Detail)))
		}
	}
	for _, n := range c.ExpectNone {
		for _, t := range all {
			if t.account == n.Account && t.d.Tripped() {
				out = append(out, fail(n.Line, "no trip on "+n.Account, fmt.Sprintf("%s on %s %s (%s)", t.rule, t.account, t.d.Outcome, t.d.Detail)))
			}
		}
	}
	return out
}
