package deploy_test

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README is the front door: short, and it holds the two commands a new
// user starts with.
const maxREADMEBytes = 20000

var readmeCommands = []string{"go run ./cmd/usagebreaker demo", "go test ./..."}

func TestREADMEFrontDoor(t *testing.T) {
	b := readRepoFile(t, "README.md")
	if len(b) > maxREADMEBytes {
		t.Errorf("README.md is %d bytes; at most %d (move reference material to docs/)", len(b), maxREADMEBytes)
	}
	for _, c := range readmeCommands {
		if !strings.Contains(string(b), c) {
			t.Errorf("README.md does not contain the command %q", c)
		}
	}
}

var (
	fenceRE      = regexp.MustCompile("(?ms)^[ \t]*```.*?^[ \t]*```[ \t]*$")
	inlineCodeRE = regexp.MustCompile("`[^`\n]*`")
	mdLinkRE     = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	schemeRE     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// TestDocsLinksResolve: every relative link in README.md and docs/*.md
// points at a file or directory of the repository, and its #anchor, if it
// has one and points into a markdown file, at one of that file's headings.
func TestDocsLinksResolve(t *testing.T) {
	docs, err := filepath.Glob(repoFile(t, "docs/*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"README.md"}
	for _, d := range docs {
		files = append(files, "docs/"+filepath.Base(d))
	}
	anchors := map[string]map[string]bool{} // repo-relative markdown file -> its heading anchors
	headingsOf := func(rel string) map[string]bool {
		if a, ok := anchors[rel]; ok {
			return a
		}
		a := map[string]bool{}
		text := fenceRE.ReplaceAllString(string(readRepoFile(t, rel)), "")
		for _, line := range strings.Split(text, "\n") {
			if h, ok := strings.CutPrefix(line, "#"); ok {
				a[githubAnchor(strings.TrimLeft(h, "#"))] = true
			}
		}
		anchors[rel] = a
		return a
	}
	checked := 0
	for _, rel := range files {
		text := string(readRepoFile(t, rel))
		text = fenceRE.ReplaceAllString(text, "")
		text = inlineCodeRE.ReplaceAllString(text, "``")
		for _, m := range mdLinkRE.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if schemeRE.MatchString(target) || strings.HasPrefix(target, "//") {
				continue // not relative
			}
			checked++
			p, frag, _ := strings.Cut(target, "#")
			dest := rel
			if p != "" {
				dest = path.Clean(path.Join(path.Dir(rel), p))
				if strings.HasPrefix(dest, "../") {
					t.Errorf("%s: link %q leaves the repository", rel, target)
					continue
				}
				if _, err := os.Stat(repoFile(t, dest)); err != nil {
					t.Errorf("%s: link %q: %s does not exist", rel, target, dest)
					continue
				}
			}
			if frag != "" && strings.HasSuffix(dest, ".md") && !headingsOf(dest)[frag] {
				t.Errorf("%s: link %q: %s has no heading with the anchor #%s", rel, target, dest, frag)
			}
		}
	}
	if checked == 0 {
		t.Error("no relative links found: the link pattern is broken")
	}
}
