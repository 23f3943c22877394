package console

import (
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Coverage paging: the view can hold tens of thousands of subaccounts; a page
// shows at most maxPerPage of them.
const (
	defaultPerPage = 100
	maxPerPage     = 500
)

// StateUnguarded filters the subaccounts that are active and guarded by no
// rule: a trigger is missing or drifted, or no rule matches them.
const StateUnguarded = "unguarded"

// CoverageFilter selects and pages the coverage view.
type CoverageFilter struct {
	Query string // substring of the name or SID, any case
	State string // "" | StateUnguarded | a State* value (in Rule's column, or any column)
	Rule  string // "": every rule; else only subaccounts this rule matches
	Page  int    // from 1
	Per   int
}

func coverageFilter(q url.Values) CoverageFilter {
	f := CoverageFilter{Query: strings.TrimSpace(q.Get("q")), State: q.Get("state"), Rule: q.Get("rule")}
	f.Page, _ = strconv.Atoi(q.Get("page"))
	f.Per, _ = strconv.Atoi(q.Get("per"))
	if f.Page < 1 {
		f.Page = 1
	}
	if f.Per < 1 {
		f.Per = defaultPerPage
	}
	f.Per = min(f.Per, maxPerPage)
	return f
}

// query is the filter as a query string, on page p.
func (f CoverageFilter) query(p int) string {
	v := url.Values{}
	if f.Query != "" {
		v.Set("q", f.Query)
	}
	if f.State != "" {
		v.Set("state", f.State)
	}
	if f.Rule != "" {
		v.Set("rule", f.Rule)
	}
	if f.Per != defaultPerPage {
		v.Set("per", strconv.Itoa(f.Per))
	}
	if p > 1 {
		v.Set("page", strconv.Itoa(p))
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// Account ranks: unguarded first.
const (
	rankBroken    = iota // an active account with a missing or drifted trigger
	rankUnmatched        // an active account no rule matches
	rankSuspended        // not active: the reconciler leaves it alone
	rankGuarded          // every matching rule's trigger is in place
)

var rankLabel = map[int]string{
	rankBroken:    "unguarded",
	rankUnmatched: "unguarded: no rule matches",
	rankSuspended: "not active",
	rankGuarded:   "guarded",
}

func rank(a AccountCoverage) int {
	if a.Status != "active" {
		return rankSuspended
	}
	matched := false
	for _, s := range a.States {
		switch s {
		case StateMissing, StateDrifted:
			return rankBroken
		case StateGuarded:
			matched = true
		}
	}
	if !matched {
		return rankUnmatched
	}
	return rankGuarded
}

// coverageRow is an account on a page.
type coverageRow struct {
	AccountCoverage
	Label  string
	Broken bool
}

// coveragePage is one page of the filtered, ordered view.
type coveragePage struct {
	Filter     CoverageFilter
	Rules      []string
	Rows       []coverageRow
	Total      int // subaccounts in the view
	Matching   int // after the filter
	Pages      int
	Counts     map[string]int // per rank label, over the whole view
	Prev, Next string         // query strings; "" when none
	First      int            // 1-based index of the first row shown
}

// pageOf filters, orders (unguarded first, then by name) and pages the view.
func pageOf(v CoverageView, f CoverageFilter) coveragePage {
	p := coveragePage{Filter: f, Rules: v.Rules, Total: len(v.Accounts), Counts: map[string]int{}}
	ruleIdx := -1
	if f.Rule != "" {
		ruleIdx = slices.Index(v.Rules, f.Rule)
	}
	q := strings.ToLower(f.Query)
	type ranked struct {
		i, r int
	}
	var sel []ranked
	for i, a := range v.Accounts {
		r := rank(a)
		p.Counts[rankLabel[r]]++
		if q != "" && !strings.Contains(strings.ToLower(a.Name), q) && !strings.Contains(strings.ToLower(a.SID), q) {
			continue
		}
		if f.Rule != "" && (ruleIdx < 0 || a.States[ruleIdx] == StateNotMatched) {
			continue
		}
		if !stateMatches(a, r, f.State, ruleIdx) {
			continue
		}
		sel = append(sel, ranked{i, r})
	}
	sort.SliceStable(sel, func(x, y int) bool { return sel[x].r < sel[y].r })
	p.Matching = len(sel)
	p.Pages = max(1, (len(sel)+f.Per-1)/f.Per)
	page := min(f.Page, p.Pages)
	p.Filter.Page = page
	start := (page - 1) * f.Per
	end := min(start+f.Per, len(sel))
	p.First = start + 1
	for _, s := range sel[start:end] {
		a := v.Accounts[s.i]
		p.Rows = append(p.Rows, coverageRow{AccountCoverage: a, Label: rankLabel[s.r], Broken: s.r <= rankUnmatched})
	}
	if page > 1 {
		p.Prev = f.query(page - 1)
		if p.Prev == "" {
			p.Prev = "?"
		}
	}
	if page < p.Pages {
		p.Next = f.query(page + 1)
	}
	return p
}

func stateMatches(a AccountCoverage, r int, state string, ruleIdx int) bool {
	switch state {
	case "":
		return true
	case StateUnguarded:
		return r == rankBroken || r == rankUnmatched
	}
	if ruleIdx >= 0 {
		return a.States[ruleIdx] == state
	}
	return slices.Contains(a.States, state)
}
