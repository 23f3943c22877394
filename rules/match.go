package rules

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// An account entry in accounts.include or accounts.exclude is either an exact
// account SID (AC + 32 hex digits) or a glob on the subaccount's friendly name:
//
//	*      any run of characters, including none and including "/"
//	?      exactly one character
//	[abc]  one character of the class; [a-z] ranges, [^...] or [!...] negates
//	\x     the character x itself (\*, \?, \[, \\)
//
// Globs are case-sensitive and match the whole friendly name.

// entry is a compiled account entry.
type entry struct {
	sid  string // exact SID (upper "AC", lower-case hex), or "" for a glob
	glob []tok
}

type tokKind uint8

const (
	tokLit tokKind = iota
	tokAny
	tokStar
	tokClass
)

type tok struct {
	kind tokKind
	r    rune   // tokLit
	neg  bool   // tokClass: negated
	rs   []rune // tokClass: pairs lo, hi
}

// errSIDLike is returned for entries that look like a mistyped SID.
var errSIDLike = errors.New("looks like an account SID but is not AC followed by 32 hex digits")

// compileEntry parses one include/exclude entry.
func compileEntry(s string) (entry, error) {
	if s == "" {
		return entry{}, errors.New("empty entry")
	}
	if isHexAfterAC(s) {
		if len(s) != 34 {
			return entry{}, errSIDLike
		}
		return entry{sid: "AC" + strings.ToLower(s[2:])}, nil
	}
	if isLowerSIDLike(s) {
		// "ac0123..." would be a glob on friendly names that matches no
		// subaccount: a SID typed in the wrong case.
		return entry{}, errSIDLike
	}
	g, err := compileGlob(s)
	if err != nil {
		return entry{}, err
	}
	return entry{glob: g}, nil
}

// isHexAfterAC reports whether s is "AC" followed by one or more hex digits.
func isHexAfterAC(s string) bool {
	if len(s) < 3 || !strings.HasPrefix(s, "AC") {
		return false
	}
	for i := 2; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// isLowerSIDLike reports an entry that starts with "ac" (any case but "AC")
// followed by at least 16 hex digits and nothing else: a SID in the wrong
// case, not a friendly name.
func isLowerSIDLike(s string) bool {
	if len(s) < 18 || strings.HasPrefix(s, "AC") || !strings.EqualFold(s[:2], "ac") {
		return false
	}
	for i := 2; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func compileGlob(p string) ([]tok, error) {
	var toks []tok
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRuneInString(p[i:])
		switch r {
		case '*':
			if len(toks) == 0 || toks[len(toks)-1].kind != tokStar {
				toks = append(toks, tok{kind: tokStar})
			}
			i += size
		case '?':
			toks = append(toks, tok{kind: tokAny})
			i += size
		case '\\':
			if i+size >= len(p) {
				return nil, errors.New(`ends with a lone "\"`)
			}
			r2, size2 := utf8.DecodeRuneInString(p[i+size:])
			toks = append(toks, tok{kind: tokLit, r: r2})
			i += size + size2
		case '[':
			t, n, err := compileClass(p[i+size:])
			if err != nil {
				return nil, err
			}
			toks = append(toks, t)
			i += size + n
		default:
			toks = append(toks, tok{kind: tokLit, r: r})
			i += size
		}
	}
	return toks, nil
}

// compileClass parses a class after its "[" and returns how many bytes it
// used, including the closing "]".
func compileClass(p string) (tok, int, error) {
	t := tok{kind: tokClass}
	i := 0
	if i < len(p) && (p[i] == '^' || p[i] == '!') {
		t.neg = true
		i++
	}
	next := func() (rune, bool) { // one class character, maybe escaped
		if i >= len(p) {
			return 0, false
		}
		r, size := utf8.DecodeRuneInString(p[i:])
		i += size
		if r == '\\' {
			if i >= len(p) {
				return 0, false
			}
			r, size = utf8.DecodeRuneInString(p[i:])
			i += size
		}
		return r, true
	}
	for {
		if i >= len(p) {
			return tok{}, 0, errors.New(`"[" without a closing "]"`)
		}
		if p[i] == ']' {
			if len(t.rs) == 0 {
				return tok{}, 0, errors.New(`empty character class "[]"`)
			}
			return t, i + 1, nil
		}
		lo, ok := next()
		if !ok {
			return tok{}, 0, errors.New(`"[" without a closing "]"`)
		}
		hi := lo
		if i+1 < len(p) && p[i] == '-' && p[i+1] != ']' {
			i++
			if hi, ok = next(); !ok {
				return tok{}, 0, errors.New(`"[" without a closing "]"`)
			}
			if hi < lo {
				return tok{}, 0, fmt.Errorf("bad range %q in character class", string(lo)+"-"+string(hi))
			}
		}
		t.rs = append(t.rs, lo, hi)
	}
}

func (t *tok) matches(r rune) bool {
	switch t.kind {
	case tokLit:
		return r == t.r
	case tokAny:
		return true
	case tokClass:
		in := false
		for j := 0; j+1 < len(t.rs); j += 2 {
			if t.rs[j] <= r && r <= t.rs[j+1] {
				in = true
				break
			}
		}
		return in != t.neg
	}
	return false
}

// matchGlob reports whether the whole of s matches toks. Every token but the
// star matches one character, so the classic single-backtrack algorithm is
// exact and takes O(len(s)·len(toks)) at worst.
func matchGlob(toks []tok, s string) bool {
	ti, si := 0, 0
	starTi, starSi := -1, 0
	for si < len(s) {
		if ti < len(toks) {
			t := &toks[ti]
			if t.kind == tokStar {
				starTi, starSi = ti, si
				ti++
				continue
			}
			r, size := utf8.DecodeRuneInString(s[si:])
			if t.matches(r) {
				ti++
				si += size
				continue
			}
		}
		if starTi < 0 {
			return false
		}
		// Let the last star take one more character and retry after it.
		_, size := utf8.DecodeRuneInString(s[starSi:])
		starSi += size
		si = starSi
		ti = starTi + 1
	}
	for ti < len(toks) && toks[ti].kind == tokStar {
		ti++
	}
	return ti == len(toks)
}

func (e *entry) match(sid, friendlyName string) bool {
	if e.sid != "" {
		return len(sid) == len(e.sid) && strings.EqualFold(sid, e.sid)
	}
	return matchGlob(e.glob, friendlyName)
}

// compiled holds a rule's compiled entries.
type compiled struct {
	include, exclude []entry
}

func compileEntries(include, exclude []string) (*compiled, error) {
	c := &compiled{}
	for _, s := range include {
		e, err := compileEntry(s)
		if err != nil {
			return nil, err
		}
		c.include = append(c.include, e)
	}
	for _, s := range exclude {
		e, err := compileEntry(s)
		if err != nil {
			return nil, err
		}
		c.exclude = append(c.exclude, e)
	}
	return c, nil
}

// Matches reports whether the rule covers the subaccount: some include entry
// matches it and no exclude entry does (exclude wins). An SID entry compares
// with sid, a glob with friendlyName. Rules from Load are compiled once; a
// Rule built by hand is compiled on each call (and matches nothing if an
// entry is invalid).
func (r *Rule) Matches(sid, friendlyName string) bool {
	c := r.compiled
	if c == nil {
		var err error
		if c, err = compileEntries(r.Include, r.Exclude); err != nil {
			return false
		}
	}
	in := false
	for i := range c.include {
		if c.include[i].match(sid, friendlyName) {
			in = true
			break
		}
	}
	if !in {
		return false
	}
	for i := range c.exclude {
		if c.exclude[i].match(sid, friendlyName) {
			return false
		}
	}
	return true
}

// MatchesNothing reports a rule that can match no subaccount whatever the
// subaccounts are called: its exclude has "*", or every include entry is an
// exact name or SID that an exclude entry also matches. why says which.
// (A rule that matches none of the subaccounts there are now is found by the
// reconcile, which knows them.)
func (r *Rule) MatchesNothing() (bool, string) {
	for _, e := range r.Exclude {
		if e == "*" {
			return true, `exclude has "*", which matches every subaccount`
		}
	}
	c := r.compiled
	if c == nil {
		var err error
		if c, err = compileEntries(r.Include, r.Exclude); err != nil {
			return false, ""
		}
	}
	for i, inc := range r.Include {
		if strings.ContainsAny(inc, "*?[") {
			return false, "" // a glob: some name may get past the excludes
		}
		sid, name := "", inc
		if c.include[i].sid != "" {
			sid, name = c.include[i].sid, ""
		}
		excluded := false
		for j := range c.exclude {
			if c.exclude[j].match(sid, name) {
				excluded = true
				break
			}
		}
		if !excluded {
			return false, ""
		}
	}
	return len(r.Include) > 0, "every include entry is also excluded"
}
