package rules

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

func TestLoadFilesGood(t *testing.T) {
	set, err := LoadFiles([]string{"testdata/good/rules.yaml", "testdata/good/more.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 3 {
		t.Fatalf("got %d rules, want 3", set.Len())
	}
	var names []string
	for _, r := range set.Rules {
		names = append(names, r.Name)
	}
	if want := []string{"sms-spend-daily", "trial-sms", "calls-yearly"}; !slices.Equal(names, want) {
		t.Errorf("rules in order %v, want %v", names, want)
	}

	r := set.Get("sms-spend-daily")
	want := Rule{
		Name:          "sms-spend-daily",
		Description:   "Stop tenants that spend more than $50 a day",
		Include:       []string{"*"},
		Exclude:       []string{"internal-*", "AC00000000000000000000000000000001"},
		UsageCategory: "totalprice",
		TriggerBy:     "price",
		Recurring:     "daily",
		Action:        "suspend",
		File:          "testdata/good/rules.yaml",
		Line:          2,
	}
	checkRule(t, r, want, "50")

	r = set.Get("trial-sms")
	want = Rule{
		Name:          "trial-sms",
		Include:       []string{"trial-*", "ACabcdefabcdefabcdefabcdefabcdef01"},
		UsageCategory: "sms-outbound",
		TriggerBy:     "usage", // Twilio's default
		Recurring:     "monthly",
		Action:        "notify",
		DryRun:        true,
		File:          "testdata/good/rules.yaml",
		Line:          13,
	}
	checkRule(t, r, want, "0.1")

	r = set.Get("calls-yearly")
	want = Rule{
		Name:          "calls-yearly",
		Include:       []string{"ACME-*"},
		UsageCategory: "calls",
		TriggerBy:     "count",
		Recurring:     "alltime",
		Action:        "suspend",
		File:          "testdata/good/more.yaml",
		Line:          2,
	}
	checkRule(t, r, want, "50")

	spec := set.Get("trial-sms").Spec("prod", "https://breaker.example.com")
	if spec.FriendlyName != "usagebreaker:prod:trial-sms" || spec.TriggerValue != "0.1" ||
		spec.CallbackURL != "https://breaker.example.com/twilio/usage-triggers/trial-sms" || spec.TriggerBy != "usage" {
		t.Errorf("Spec = %+v", spec)
	}
}

func checkRule(t *testing.T, got *Rule, want Rule, threshold string) {
	t.Helper()
	if got == nil {
		t.Fatalf("rule %s missing", want.Name)
	}
	if got.Threshold.String() != threshold || !got.Threshold.Equal(decimal.MustParse(threshold)) {
		t.Errorf("%s: threshold %s, want %s", want.Name, got.Threshold, threshold)
	}
	g := *got
	g.Threshold, g.compiled = decimal.Zero, nil
	if g.Name != want.Name || g.Description != want.Description || !slices.Equal(g.Include, want.Include) ||
		!slices.Equal(g.Exclude, want.Exclude) || g.UsageCategory != want.UsageCategory || g.TriggerBy != want.TriggerBy ||
		g.Recurring != want.Recurring || g.Action != want.Action || g.DryRun != want.DryRun || g.File != want.File || g.Line != want.Line {
		t.Errorf("rule\n got: %+v\nwant: %+v", g, want)
	}
	if got.compiled == nil {
		t.Errorf("%s: not compiled at load", want.Name)
	}
}

// TestThresholdExact: thresholds are read from the YAML text, never through a
// float, whether written as a string or a number.
func TestThresholdExact(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`"0.1"`, "0.1"},
		{`0.1`, "0.1"},
		{`50`, "50"},
		{`"50"`, "50"},
		{`"50.000000"`, "50"},
		{`50.000000`, "50"},
		{`0.000001`, "0.000001"},
		{`"12345678901234567890.123456"`, "12345678901234567890.123456"},
		{`9007199254740993`, "9007199254740993"}, // 2^53+1: not a float64
	} {
		data := "rules:\n  - name: r\n    accounts: {include: ['*']}\n    usage_category: totalprice\n" +
			"    recurring: daily\n    action: suspend\n    threshold: " + tc.yaml + "\n"
		rs, err := Parse("t.yaml", []byte(data))
		if err != nil {
			t.Errorf("threshold %s: %v", tc.yaml, err)
			continue
		}
		got := rs[0].Threshold
		if got.String() != tc.want || !got.Equal(decimal.MustParse(tc.want)) {
			t.Errorf("threshold %s = %s, want %s", tc.yaml, got, tc.want)
		}
	}
	// 0.1 + 0.2 is exactly 0.3 (it is not in float64).
	rs, err := Parse("t.yaml", []byte("rules:\n  - {name: a, accounts: {include: ['*']}, usage_category: sms, recurring: daily, action: suspend, threshold: 0.1}\n"+
		"  - {name: b, accounts: {include: ['*']}, usage_category: sms, recurring: daily, action: suspend, threshold: 0.2}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sum := rs[0].Threshold.Add(rs[1].Threshold); !sum.Equal(decimal.MustParse("0.3")) {
		t.Errorf("0.1 + 0.2 = %s", sum)
	}
}

const (
	sidA = "AC0123456789abcdef0123456789abcdef"
	sidB = "ACfedcba9876543210fedcba9876543210"
)

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		include, exclude []string
		sid, name        string
		want             bool
	}{
		{[]string{"*"}, nil, sidA, "anything", true},
		{[]string{"*"}, nil, sidA, "", true},
		{[]string{"*"}, nil, sidA, "a/b/c", true}, // * crosses "/"
		{[]string{"tenant-*"}, nil, sidA, "tenant-42", true},
		{[]string{"tenant-*"}, nil, sidA, "Tenant-42", false}, // case-sensitive
		{[]string{"tenant-*"}, nil, sidA, "my-tenant-42", false},
		{[]string{"*-prod"}, nil, sidA, "acme-prod", true},
		{[]string{"*-prod"}, nil, sidA, "acme-prod-2", false},
		{[]string{"a*b*c"}, nil, sidA, "aXXbYYbZZc", true},
		{[]string{"a*b*c"}, nil, sidA, "aXXbYYbZZ", false},
		{[]string{"t?"}, nil, sidA, "t1", true},
		{[]string{"t?"}, nil, sidA, "t12", false},
		{[]string{"t?"}, nil, sidA, "té", true}, // ? is one character, not one byte
		{[]string{"t[0-9]"}, nil, sidA, "t7", true},
		{[]string{"t[0-9]"}, nil, sidA, "tx", false},
		{[]string{"t[^0-9]"}, nil, sidA, "tx", true},
		{[]string{"t[!0-9]"}, nil, sidA, "t7", false},
		{[]string{"t[abc-]"}, nil, sidA, "t-", true},
		{[]string{`t\*`}, nil, sidA, "t*", true},
		{[]string{`t\*`}, nil, sidA, "tx", false},
		{[]string{"exact"}, nil, sidA, "exact", true},
		{[]string{"exact"}, nil, sidA, "exactly", false},
		// SIDs match the SID, not the friendly name.
		{[]string{sidA}, nil, sidA, "whatever", true},
		{[]string{sidA}, nil, sidB, sidA, false},
		{[]string{strings.ToUpper(sidA[2:])}, nil, sidA, "x", false}, // no AC: a glob
		{[]string{"AC" + strings.ToUpper(sidA[2:])}, nil, sidA, "x", true},
		// "ACME-*" has non-hex letters: a glob on the name.
		{[]string{"ACME-*"}, nil, sidA, "ACME-east", true},
		{[]string{"ACME-*"}, nil, sidA, "acme-east", false},
		// Exclude wins over include.
		{[]string{"*"}, []string{"internal-*"}, sidA, "internal-billing", false},
		{[]string{"*"}, []string{"internal-*"}, sidA, "customer-1", true},
		{[]string{"*"}, []string{sidA}, sidA, "customer-1", false},
		{[]string{sidA}, []string{"*"}, sidA, "customer-1", false},
		{[]string{"a-*", "b-*"}, []string{"b-2"}, sidA, "b-1", true},
		{[]string{"a-*", "b-*"}, []string{"b-2"}, sidA, "b-2", false},
	} {
		r := &Rule{Include: tc.include, Exclude: tc.exclude}
		c, err := compileEntries(tc.include, tc.exclude)
		if err != nil {
			t.Fatalf("%v %v: %v", tc.include, tc.exclude, err)
		}
		// Hand-built (compiled per call) and loaded (compiled once) agree.
		got := r.Matches(tc.sid, tc.name)
		r.compiled = c
		if got2 := r.Matches(tc.sid, tc.name); got != tc.want || got2 != tc.want {
			t.Errorf("include %q exclude %q: Matches(%s, %q) = %v (compiled %v), want %v",
				tc.include, tc.exclude, tc.sid, tc.name, got, got2, tc.want)
		}
	}
}

func TestMatchesLongNameIsLinear(t *testing.T) {
	r := &Rule{Include: []string{"*a*a*a*a*a*a*a*a*b"}}
	name := strings.Repeat("a", 10000)
	if r.Matches(sidA, name) {
		t.Error("matched")
	}
}

func TestMatchesInvalidHandBuilt(t *testing.T) {
	r := &Rule{Include: []string{"x["}}
	if r.Matches(sidA, "x[") {
		t.Error("a rule with an invalid entry matched")
	}
}

func TestLoadDuplicateAcrossFiles(t *testing.T) {
	_, err := LoadFiles([]string{"testdata/dup/a.yaml", "testdata/dup/b.yaml"})
	want := `testdata/dup/b.yaml:3: rule "sms-spend-daily": duplicate name; first defined at testdata/dup/a.yaml:2`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestLoadGlobs(t *testing.T) {
	set, files, err := Load([]string{"good/*.yaml", "good/rules.yaml"}, "testdata")
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{filepath.FromSlash("testdata/good/more.yaml"), filepath.FromSlash("testdata/good/rules.yaml")}
	if !slices.Equal(files, wantFiles) {
		t.Errorf("files %v, want %v (sorted, each once)", files, wantFiles)
	}
	if set.Len() != 3 || set.Rules[0].Name != "calls-yearly" {
		t.Errorf("got %d rules, first %q", set.Len(), set.Rules[0].Name)
	}

	abs, _ := filepath.Abs("testdata/good/more.yaml")
	if _, files, err = Load([]string{abs}, "elsewhere"); err != nil || len(files) != 1 || files[0] != abs {
		t.Errorf("absolute pattern: %v %v", files, err)
	}

	_, _, err = Load([]string{"good/*.yml", "good/["}, "testdata")
	want := "rule files: \"good/*.yml\" matches no files\nrule files: bad pattern \"good/[\""
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Errorf("error %T %v is not Errors of 2", err, err)
	}
}

func TestLoadUnreadable(t *testing.T) {
	_, err := LoadFiles([]string{"testdata/no-such.yaml"})
	if want := "testdata/no-such.yaml: cannot read: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = LoadFiles([]string{"testdata"})
	if want := "testdata: cannot read: is a directory"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// TestLoadCollectsAll: every problem is reported, in line order, not just the first.
func TestLoadCollectsAll(t *testing.T) {
	data := `rules:
  - name: a
    accounts: {include: ["x["]}
    usage_category: totalprices
    recurring: weekly
    threshold: 0
    action: kill
    bogus: 1
  - name: a
    accounts: {include: ["*"]}
    usage_category: sms
    recurring: daily
    threshold: 1
    action: suspend
  - description: no name
`
	_, err := Parse("r.yaml", []byte(data))
	want := `r.yaml:3: rule "a": accounts.include[0]: bad pattern "x[": "[" without a closing "]"
r.yaml:4: rule "a": unknown usage_category "totalprices" (did you mean "totalprice"?)
r.yaml:5: rule "a": recurring: "weekly" must be one of daily, monthly, yearly, alltime
r.yaml:6: rule "a": threshold: "0" must be greater than 0
r.yaml:7: rule "a": action: "kill" must be one of suspend, notify
r.yaml:8: rule "a": unknown key "bogus"
r.yaml:9: rule "a": duplicate name; first defined at r.yaml:2
r.yaml:15: rules[2]: name is required
r.yaml:15: rules[2]: accounts is required
r.yaml:15: rules[2]: usage_category is required
r.yaml:15: rules[2]: recurring is required
r.yaml:15: rules[2]: threshold is required
r.yaml:15: rules[2]: action is required`
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestEmptyRulesList(t *testing.T) {
	rs, err := Parse("r.yaml", []byte("rules: []\n"))
	if err != nil || len(rs) != 0 {
		t.Errorf("rules: [] gave %v, %v", rs, err)
	}
}

func TestAliasesResolved(t *testing.T) {
	data := `rules:
  - name: a
    accounts: &acc {include: ["*"], exclude: ["internal-*"]}
    usage_category: &cat sms
    recurring: daily
    threshold: 1
    action: suspend
  - name: b
    accounts: *acc
    usage_category: *cat
    recurring: daily
    threshold: 2
    action: suspend
`
	rs, err := Parse("r.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rs[1].Exclude, []string{"internal-*"}) || rs[1].UsageCategory != "sms" {
		t.Errorf("alias not followed: %+v", rs[1])
	}
}

func TestChecksum(t *testing.T) {
	load := func(files ...string) *Set {
		s, err := LoadFiles(files)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a := load("testdata/good/rules.yaml", "testdata/good/more.yaml")
	b := load("testdata/good/rules.yaml", "testdata/good/more.yaml")
	if a.Checksum() != b.Checksum() {
		t.Error("same rules, different checksums")
	}
	c := load("testdata/good/rules.yaml")
	if a.Checksum() == c.Checksum() {
		t.Error("different rules, same checksum")
	}
	if len(a.Checksum()) != 64 || (*Set)(nil).Checksum() == a.Checksum() {
		t.Error("bad checksum")
	}
}

func TestUsageCategories(t *testing.T) {
	cats := UsageCategories()
	if !slices.IsSorted(cats) {
		t.Error("usageCategories is not sorted (IsUsageCategory binary-searches it)")
	}
	if len(slices.Compact(slices.Clone(cats))) != len(cats) {
		t.Error("usageCategories has duplicates")
	}
	re := regexp.MustCompile(`^[a-z0-9-]+$`)
	for _, c := range cats {
		if !re.MatchString(c) {
			t.Errorf("category %q does not look like one", c)
		}
	}
	for _, c := range []string{"totalprice", "sms", "sms-outbound", "calls", "calls-inbound", "mms", "recordings", "pfax-minutes", "wireless-usage-voice"} {
		if !IsUsageCategory(c) {
			t.Errorf("IsUsageCategory(%q) = false", c)
		}
	}
	for _, c := range []string{"", "totalprices", "SMS", "zzz"} {
		if IsUsageCategory(c) {
			t.Errorf("IsUsageCategory(%q) = true", c)
		}
	}
}

func TestExampleRuleFile(t *testing.T) {
	set, err := LoadFiles([]string{"example.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 5 {
		t.Errorf("example.yaml has %d rules", set.Len())
	}
	r := set.Get("sms-spend-daily")
	if r == nil || !r.Matches(sidA, "customer-1") || r.Matches(sidA, "internal-tools") {
		t.Errorf("sms-spend-daily: %+v", r)
	}
}

func FuzzLoadRules(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	seeds = append(seeds, "example.yaml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Parse("fuzz.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for _, p := range errs {
				if p.File != "fuzz.yaml" || p.Msg == "" || p.Line < 0 {
					t.Fatalf("bad problem %+v", p)
				}
			}
			if rs != nil {
				t.Fatal("rules with an error")
			}
			return
		}
		for _, r := range rs {
			limit := r.Velocity == nil && r.Threshold.Sign() > 0 ||
				r.Velocity != nil && r.Threshold.Sign() == 0 && r.Recurring == "" && r.Velocity.Amount.Sign() > 0 && r.Velocity.Steps >= 1
			if !nameRE.MatchString(r.Name) || len(r.Include) == 0 || !IsUsageCategory(r.UsageCategory) || !limit || r.compiled == nil {
				t.Fatalf("invalid rule accepted: %+v", r)
			}
			r.Matches(sidA, "tenant-1")
			r.Matches("", string(data))
			r.Spec("prod", "https://x")
		}
		NewSet(rs).Checksum()
	})
}

// Twilio keeps adding usage categories and no longer publishes
// the list. A typo still gets its did-you-mean; a category newer than the
// list is usable with unlisted_category: true (its form is still checked).
func TestUnlistedUsageCategory(t *testing.T) {
	rule := func(cat, extra string) string {
		return "rules:\n  - name: a\n    accounts: {include: [\"*\"]}\n    usage_category: " + cat +
			"\n    trigger_by: count\n    recurring: daily\n    threshold: 1\n    action: suspend\n" + extra
	}
	if _, err := Parse("r.yaml", []byte(rule("sms-brand-new-2027", ""))); err == nil ||
		!strings.Contains(err.Error(), "r.yaml:4:") || !strings.Contains(err.Error(), "unlisted_category: true") {
		t.Errorf("an unknown category: %v", err)
	}
	if _, err := Parse("r.yaml", []byte(rule("totalprices", ""))); err == nil || !strings.Contains(err.Error(), `did you mean "totalprice"?`) {
		t.Errorf("a typo: %v", err)
	}
	s, err := Parse("r.yaml", []byte(rule("sms-brand-new-2027", "    unlisted_category: true\n")))
	if err != nil || s[0].UsageCategory != "sms-brand-new-2027" {
		t.Fatalf("unlisted_category: true: %v", err)
	}
	if _, err := Parse("r.yaml", []byte(rule("SMS_New", "    unlisted_category: true\n"))); err == nil ||
		!strings.Contains(err.Error(), "is not a usage category name") {
		t.Errorf("unlisted_category does not skip the form check: %v", err)
	}
	if _, err := Parse("r.yaml", []byte(rule("sms", "    unlisted_category: true\n"))); err != nil {
		t.Errorf("a listed category with unlisted_category: true: %v", err)
	}
}
