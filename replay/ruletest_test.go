package replay

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/config/strict"
)

// TestExampleRuleTests runs the shipped rules/example_test.yaml.
func TestExampleRuleTests(t *testing.T) {
	tf, err := LoadTestFile("../rules/example_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(tf.Cases) < 8 {
		t.Errorf("%d cases", len(tf.Cases))
	}
	for _, f := range tf.Run() {
		t.Error(f)
	}
}

// TestRuleTestFailures: each failed expectation is reported once, at the
// line of the expectation (or of the case, for a trip nobody listed).
func TestRuleTestFailures(t *testing.T) {
	tf, err := LoadTestFile("testdata/failing_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range tf.Run() {
		got = append(got, f.String())
	}
	want := []string{
		"testdata/failing_test.yaml:21: case wrong outcome: want spend-daily on tenant-a notified, got suspended (value 60 >= threshold 50)",
		"testdata/failing_test.yaml:28: case below the threshold: want spend-daily on tenant-a suspended, got no trip (current value 49.99 is below the rule's threshold 50)",
		"testdata/failing_test.yaml:29: case an unlisted trip: want no other trip on tenant-a, got sms-burst on tenant-a dry_run (dry run: would suspend (value 30 >= threshold 30))",
		"testdata/failing_test.yaml:43: case not excluded: want no trip on tenant-qa, got spend-daily on tenant-qa suspended (value 50 >= threshold 50)",
		"testdata/failing_test.yaml:50: case not matched: want spend-daily on internal-qa suspended, got no trip (the rule does not match internal-qa)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("failures:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestRuleTestBadFile: a bad test file is every problem, FILE:LINE each.
func TestRuleTestBadFile(t *testing.T) {
	_, err := LoadTestFile("testdata/bad_test.yaml")
	var errs strict.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`testdata/bad_test.yaml:5: case "typos": subaccounts[0].sid: "AC123" is not AC followed by 32 hex digits`,
		`testdata/bad_test.yaml:6: case "typos": subaccounts[1].status: "paused" is not active, suspended or closed`,
		`testdata/bad_test.yaml:8: case "typos": usage[0].account: "tenant-c" is not one of the case's subaccounts`,
		`testdata/bad_test.yaml:9: case "typos": usage[1].category: unknown usage category "totalprise" (did you mean "totalprice"?)`,
		`testdata/bad_test.yaml:9: case "typos": usage[1].price: "-1" is not a non-negative decimal`,
		`testdata/bad_test.yaml:11: case "typos": expect[0].rule: no rule "spend-dialy" in the rule files (did you mean "spend-daily"?)`,
		`testdata/bad_test.yaml:11: case "typos": expect[0].outcome: "suspend" is not an outcome (suspended, already_suspended, dry_run, notified, held)`,
		`testdata/bad_test.yaml:12: case "typos": unknown key "expect_nothing"`,
		`testdata/bad_test.yaml:13: case "typos": duplicate name; first at line 3`,
	}
	if got := strings.Split(errs.Error(), "\n"); !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", errs, strings.Join(want, "\n"))
	}

	// A rule file's own problems and a glob that matches nothing.
	for file, want := range map[string]string{
		"testdata/no_rules_test.yaml":  `testdata/no_rules_test.yaml:1: rule files: "nothing-*.yaml" matches no files`,
		"testdata/bad_rule_test.yaml":  `testdata/bad_rule.yaml:3: rule "x": unknown key "tresh"`,
		"testdata/no_cases_test.yaml":  "testdata/no_cases_test.yaml:2: cases: at least one case is required",
		"testdata/not-there_test.yaml": "testdata/not-there_test.yaml: cannot read: no such file or directory",
	} {
		_, err := LoadTestFile(file)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v\nwant a line %s", file, err, want)
		}
	}
}
