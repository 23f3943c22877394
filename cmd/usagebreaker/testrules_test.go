package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestTestRules(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := dispatch(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, out, errs := run("test", "rules", "../../rules/example_test.yaml"); code != 0 || !strings.HasPrefix(out, "../../rules/example_test.yaml: ok: ") || errs != "" {
		t.Errorf("example: %d %q %q", code, out, errs)
	}
	code, out, errs := run("test", "rules", "../../rules/example_test.yaml", "../../replay/testdata/failing_test.yaml")
	if code != 1 || !strings.Contains(out, "failing_test.yaml: FAILED: 5 of 6 cases") ||
		!strings.Contains(errs, "../../replay/testdata/failing_test.yaml:21: case wrong outcome: want spend-daily on tenant-a notified, got suspended (value 60 >= threshold 50)\n") ||
		strings.Count(errs, "\n") != 5 {
		t.Errorf("failing: %d %q\n%s", code, out, errs)
	}
	code, _, errs = run("test", "rules", "../../replay/testdata/failing_test.yaml", "../../replay/testdata/bad_test.yaml")
	if code != 2 || !strings.Contains(errs, `../../replay/testdata/bad_test.yaml:12: case "typos": unknown key "expect_nothing"`) {
		t.Errorf("bad: %d\n%s", code, errs)
	}
	if code, _, _ := run("test", "rules"); code != 2 {
		t.Errorf("no file: %d", code)
	}
	if code, _, _ := run("test", "alerts", "x"); code != 2 {
		t.Errorf("test alerts: %d", code)
	}
}
