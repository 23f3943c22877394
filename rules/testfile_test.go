package rules

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestGlobSkipsRuleTests: rule unit tests live beside the rules; a wildcard
// pattern skips them, a pattern naming one does not.
func TestGlobSkipsRuleTests(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.yaml", "a_test.yaml", "b_test.yml", "test.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("rules: []\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Glob("*", dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "test.yaml")}
	if !slices.Equal(got, want) {
		t.Errorf("Glob(*) = %v, want %v", got, want)
	}
	if got, err := Glob("a_test.yaml", dir); err != nil || len(got) != 1 {
		t.Errorf("Glob(a_test.yaml) = %v, %v", got, err)
	}
	if _, err := Glob("*_test.yaml", dir); err == nil {
		t.Error("a pattern matching only tests matched something")
	}
}
