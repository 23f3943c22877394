package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Problem is one problem in a rule file (FILE:LINE: message).
type Problem = strict.Problem

// Errors is every problem found; Load and LoadFiles return it as their error.
type Errors = strict.Errors

// Values of a rule's trigger_by and recurring.
const (
	TriggerByCount = "count"
	TriggerByUsage = "usage"
	TriggerByPrice = "price"

	RecurringDaily   = "daily"
	RecurringMonthly = "monthly"
	RecurringYearly  = "yearly"
	RecurringAllTime = "alltime"
)

// ThresholdDecimals is the most fractional digits a threshold may have:
// Twilio keeps trigger values with 6 ("1000.000000"), so a finer threshold
// would come back different from what the rule says.
const ThresholdDecimals = 6

// MaxFriendlyName is the longest FriendlyName Twilio accepts on a trigger.
const MaxFriendlyName = 64

var (
	ruleKeys = []string{"name", "description", "accounts", "usage_category", "trigger_by", "recurring", "threshold", "action", "dry_run",
		"notify", "end_calls", "reactivate", "rearm_allowance", "unlisted_category", "approval", "velocity"}
	futureRuleKeys []string
	accountsKeys   = []string{"include", "exclude"}

	nameRE     = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	categoryRE = regexp.MustCompile(`^[a-z0-9-]+$`)
)

// maxFileSize bounds what is read of a rule or secret file.
const maxFileSize = 16 << 20

// IsUsageCategory reports whether s is a known Twilio usage category.
func IsUsageCategory(s string) bool {
	_, ok := slices.BinarySearch(usageCategories, s)
	return ok
}

// UsageCategories returns the known Twilio usage categories, sorted.
func UsageCategories() []string { return slices.Clone(usageCategories) }

// Load resolves the glob patterns (relative to baseDir unless absolute; each
// must match at least one file), reads every file in order (a file matched
// twice is read once) and validates the rules. files are the files read, as
// resolved. The error is an Errors listing every problem.
func Load(patterns []string, baseDir string) (set *Set, files []string, err error) {
	var errs Errors
	seen := map[string]bool{}
	for _, p := range patterns {
		matched, err := Glob(p, baseDir)
		if err != nil {
			errs.Add("", 0, "rule files: %v", err)
			continue
		}
		for _, f := range matched {
			key := f
			if abs, err := filepath.Abs(f); err == nil {
				key = abs
			}
			if !seen[key] {
				seen[key] = true
				files = append(files, f)
			}
		}
	}
	if len(errs) > 0 {
		return nil, files, errs
	}
	set, err = LoadFiles(files)
	return set, files, err
}

// Glob returns the regular files pattern matches, sorted; pattern is relative
// to baseDir unless absolute. A malformed pattern or one that matches no file
// is an error naming the pattern. Rule unit tests live beside the rules, so a
// pattern with wildcards skips them (*_test.yaml, *_test.yml; see IsTestFile).
func Glob(pattern, baseDir string) ([]string, error) {
	if pattern == "" {
		return nil, errors.New("empty pattern")
	}
	p := pattern
	if !filepath.IsAbs(p) && baseDir != "" {
		p = filepath.Join(baseDir, p)
	}
	if _, err := filepath.Match(p, ""); err != nil {
		return nil, fmt.Errorf("bad pattern %q", pattern)
	}
	matches, err := filepath.Glob(p)
	if err != nil {
		return nil, fmt.Errorf("bad pattern %q", pattern)
	}
	var files []string
	wild := strings.ContainsAny(pattern, "*?[")
	for _, m := range matches {
		if wild && IsTestFile(m) {
			continue
		}
		if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() {
			files = append(files, m)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%q matches no files", pattern)
	}
	return files, nil
}

// IsTestFile reports whether the file is a rule unit test by its name
// (ends in _test.yaml or _test.yml), which rule_files globs skip.
func IsTestFile(name string) bool {
	base := filepath.Base(name)
	return strings.HasSuffix(base, "_test.yaml") || strings.HasSuffix(base, "_test.yml")
}

// LoadFiles reads and validates the rule files, in order; names must be
// unique across all of them. Rule.File is the file's name as given.
func LoadFiles(files []string) (*Set, error) {
	var (
		errs  Errors
		all   []*Rule
		first = map[string]*Rule{}
	)
	for _, f := range files {
		data, err := ReadFile(f)
		if err != nil {
			errs.Add(f, 0, "cannot read: %v", err)
			continue
		}
		rs, perrs := parse(f, data)
		errs = append(errs, perrs...)
		all = appendUnique(all, rs, first, &errs)
	}
	if len(errs) > 0 {
		errs.Sort(files)
		return nil, errs
	}
	return NewSet(all), nil
}

// Parse validates the rules in one file's content; file names it in messages.
func Parse(file string, data []byte) ([]*Rule, error) {
	rs, errs := parse(file, data)
	all := appendUnique(nil, rs, map[string]*Rule{}, &errs)
	if len(errs) > 0 {
		errs.Sort([]string{file})
		return nil, errs
	}
	return all, nil
}

// ReadFile reads a file of at most 16 MiB; the error is the bare reason
// ("no such file or directory"), for messages that name the file themselves.
func ReadFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, bare(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, bare(err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d MiB", maxFileSize>>20)
	}
	return data, nil
}

func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// parsed is a rule as parsed, with where its name is.
type parsed struct {
	r        *Rule
	nameLine int
	ok       bool // fully valid
}

// appendUnique appends the rules whose names were not seen before and reports
// the others as duplicates.
func appendUnique(all []*Rule, rs []parsed, first map[string]*Rule, errs *Errors) []*Rule {
	for _, p := range rs {
		if prev, dup := first[p.r.Name]; dup {
			errs.Add(p.r.File, p.nameLine, "rule %q: duplicate name; first defined at %s:%d", p.r.Name, prev.File, prev.Line)
			continue
		}
		first[p.r.Name] = p.r
		if p.ok {
			all = append(all, p.r)
		}
	}
	return all
}

// parse returns every rule with a valid name (whether or not the rest of it
// is valid, so that duplicates are still found) and every problem.
func parse(file string, data []byte) ([]parsed, Errors) {
	d := &strict.Decoder{File: file}
	root, ok := d.Parse(data)
	if !ok {
		return nil, d.Errs
	}
	top := d.Map(root, []string{"rules"})
	rv := top.Get("rules")
	if !rv.Present() {
		if !top.Bad() {
			d.Required(rv)
		}
		return nil, d.Errs
	}
	items, _ := d.List(rv)
	var out []parsed
	for i, it := range items {
		if p, ok := parseRule(d, it, i); ok {
			out = append(out, p)
		}
	}
	return out, d.Errs
}

// peekName returns the rule's name if the item is a mapping with a valid one.
func peekName(it strict.Value) string {
	if !it.Present() || it.Node.Kind != yaml.MappingNode {
		return ""
	}
	c := it.Node.Content
	for i := 0; i+1 < len(c); i += 2 {
		if c[i].Value == "name" && c[i+1].Kind == yaml.ScalarNode && nameRE.MatchString(c[i+1].Value) {
			return c[i+1].Value
		}
	}
	return ""
}

func parseRule(d *strict.Decoder, it strict.Value, idx int) (parsed, bool) {
	prefix := fmt.Sprintf("rules[%d]: ", idx)
	if name := peekName(it); name != "" {
		prefix = fmt.Sprintf("rule %q: ", name)
	}
	it = it.Rebase(prefix)
	errsBefore := len(d.Errs)
	if !it.Present() {
		d.Errorf(it, "must be a mapping, not null")
		return parsed{}, false
	}
	m := d.Map(it, ruleKeys, futureRuleKeys...)
	if m.Bad() {
		return parsed{}, false
	}

	r := &Rule{File: d.File, Line: it.Line, TriggerBy: TriggerByUsage}

	nameV := m.Get("name")
	nameOK := false
	if s, ok := d.String(nameV); ok {
		if nameRE.MatchString(s) {
			r.Name, nameOK = s, true
		} else {
			d.Errorf(nameV, "%q must be 1 to 32 characters of a-z, 0-9 and \"-\"", s)
		}
	} else if !nameV.Present() {
		d.Required(nameV)
	}

	if v := m.Get("description"); v.Present() {
		r.Description, _ = d.String(v)
	}

	accV := m.Get("accounts")
	acc := d.Map(accV, accountsKeys)
	if !accV.Present() {
		d.Required(accV)
	} else if !acc.Bad() {
		incV := acc.Get("include")
		var n int
		r.Include, n = entries(d, incV)
		if !incV.Present() {
			d.Required(incV)
		} else if n == 0 {
			d.Errorf(incV, "at least one entry is required")
		}
		r.Exclude, _ = entries(d, acc.Get("exclude"))
	}

	catV := m.Get("usage_category")
	unlisted := false
	if b, ok := d.Bool(m.Get("unlisted_category")); ok {
		unlisted = b
	}
	if s, ok := d.String(catV); ok {
		r.UsageCategory = s
		checkCategory(d, catV, s, unlisted)
	} else if !catV.Present() {
		d.Required(catV)
	}

	tbV := m.Get("trigger_by")
	if s, ok := d.String(tbV); ok {
		if oneOf(s, TriggerByCount, TriggerByUsage, TriggerByPrice) {
			r.TriggerBy = s
		} else {
			d.Errorf(tbV, "%q must be one of count, usage, price", s)
		}
	}

	// A velocity rule (velocity.go) has neither recurring nor threshold.
	velV := m.Get("velocity")
	velocity := velV.Written()
	recV := m.Get("recurring")
	if velocity && recV.Written() {
		d.Errorf(recV, "a velocity rule has no recurring (its triggers are non-recurring and re-armed after each step); remove it")
	} else if s, ok := d.String(recV); ok {
		if oneOf(s, RecurringDaily, RecurringMonthly, RecurringYearly, RecurringAllTime) {
			r.Recurring = s
		} else {
			d.Errorf(recV, "%q must be one of daily, monthly, yearly, alltime", s)
		}
	} else if !recV.Present() && !velocity {
		d.Required(recV)
	}

	thV := m.Get("threshold")
	if velocity && thV.Written() {
		d.Errorf(thV, "a velocity rule has no threshold (it trips on growth of velocity.amount within velocity.within); remove it")
	} else if s, ok := d.Raw(thV, "a decimal number"); ok {
		if t, ok := threshold(d, thV, s); ok {
			r.Threshold = t
		}
	} else if !thV.Present() && !velocity {
		d.Required(thV)
	}
	if velocity {
		parseVelocity(d, velV, r)
	}

	actV := m.Get("action")
	if s, ok := d.String(actV); ok {
		if oneOf(s, ActionSuspend, ActionNotify) {
			r.Action = s
		} else {
			d.Errorf(actV, "%q must be one of suspend, notify", s)
		}
	} else if !actV.Present() {
		d.Required(actV)
	}

	if b, ok := d.Bool(m.Get("dry_run")); ok {
		r.DryRun = b
	}

	if r.UsageCategory == "totalprice" && r.TriggerBy == TriggerByCount {
		d.Errorf(tbV, "count never fires for usage_category totalprice (it has no count); use price")
	}

	parseOperatorKeys(d, m, r)
	if velocity {
		checkVelocityKeys(d, m, r)
	}

	valid := len(d.Errs) == errsBefore
	if valid {
		c, err := compileEntries(r.Include, r.Exclude)
		if err != nil { // cannot happen: entries were checked
			d.ErrorfAt(r.Line, it, "%v", err)
			valid = false
		}
		r.compiled = c
	}
	if !nameOK {
		return parsed{}, false
	}
	return parsed{r: r, nameLine: nameV.Line, ok: valid}, true
}

// entries reads accounts.include or accounts.exclude: the valid entries and
// how many items the list has (-1 when absent or not a list).
func entries(d *strict.Decoder, v strict.Value) ([]string, int) {
	items, ok := d.List(v)
	if !ok {
		return nil, -1
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if !it.Present() {
			d.Errorf(it, "must be a string, not null")
			continue
		}
		s, ok := d.String(it)
		if !ok {
			continue
		}
		switch _, err := compileEntry(s); {
		case err == nil:
			out = append(out, s)
		case s == "":
			d.Errorf(it, "must not be empty")
		case errors.Is(err, errSIDLike):
			d.Errorf(it, "%q %v", s, err)
		default:
			d.Errorf(it, "bad pattern %q: %v", s, err)
		}
	}
	return out, len(items)
}

// checkCategory checks a usage_category against Twilio's list (categories.go).
// With unlisted_category: true (a category Twilio added after the list was
// written) only its form is checked: Twilio no longer publishes the list.
func checkCategory(d *strict.Decoder, v strict.Value, s string, unlisted bool) {
	if !categoryRE.MatchString(s) {
		hint := ""
		norm := strings.NewReplacer("_", "-", " ", "-").Replace(strings.ToLower(s))
		if IsUsageCategory(norm) {
			hint = fmt.Sprintf(" (did you mean %q?)", norm)
		} else if sg := strict.Suggest(norm, usageCategories); sg != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", sg)
		}
		d.Errorf(v, "%q is not a usage category name (lower-case letters, digits and \"-\")%s", s, hint)
		return
	}
	if unlisted || IsUsageCategory(s) {
		return
	}
	if sg := strict.Suggest(s, usageCategories); sg != "" {
		d.ErrorfAt(v.Line, v, "unknown usage_category %q (did you mean %q?)", s, sg)
	} else {
		d.ErrorfAt(v.Line, v, "unknown usage_category %q: not in usagebreaker's list of Twilio's categories; "+
			"if Twilio added it since, set unlisted_category: true on the rule", s)
	}
}

// threshold parses the threshold's literal text exactly (never via float).
func threshold(d *strict.Decoder, v strict.Value, s string) (decimal.Decimal, bool) {
	if strings.HasPrefix(s, "+") {
		d.Errorf(v, "%q starts with \"+\", which Twilio reads as an offset above current usage; write the threshold itself", s)
		return decimal.Zero, false
	}
	t, err := decimal.Parse(s)
	if err != nil {
		d.Errorf(v, "%q is not a decimal number", s)
		return decimal.Zero, false
	}
	if t.Sign() <= 0 {
		d.Errorf(v, "%q must be greater than 0", s)
		return decimal.Zero, false
	}
	if frac := fracDigits(t); frac > ThresholdDecimals {
		d.Errorf(v, "%q has more than %d decimal places (Twilio keeps %d)", s, ThresholdDecimals, ThresholdDecimals)
		return decimal.Zero, false
	}
	return t, true
}

// fracDigits is how many fractional digits d needs.
func fracDigits(d decimal.Decimal) int {
	s := d.String()
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

func oneOf(s string, options ...string) bool { return slices.Contains(options, s) }

// Checksum is a hex SHA-256 of what the rules mean (not where they are
// written): equal sets give equal checksums.
func (s *Set) Checksum() string {
	h := sha256.New()
	if s != nil {
		for _, r := range s.Rules {
			fields := []string{r.Name, r.Description, strings.Join(r.Include, "\x01"), strings.Join(r.Exclude, "\x01"),
				r.UsageCategory, r.TriggerBy, r.Recurring, r.Threshold.String(), r.Action, strconv.FormatBool(r.DryRun),
				strconv.FormatBool(r.NotifySet), strings.Join(r.Notify, "\x01"), strconv.FormatBool(r.EndCalls),
				r.Reactivate.String(), r.RearmAllowance.String(), r.Approval.String(), r.Velocity.String()}
			for _, f := range fields {
				fmt.Fprintf(h, "%d:%s;", len(f), f)
			}
			h.Write([]byte{'\n'})
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
