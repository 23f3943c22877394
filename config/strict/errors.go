// Package strict decodes YAML files strictly, through yaml.Node, so that every
// problem can be reported as FILE:LINE: message: unknown and duplicate keys,
// wrong kinds and types, and (optionally) ${VAR} expansion. Packages config and
// rules build their loaders on it; it knows nothing about either.
package strict

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a file.
type Problem struct {
	File string // as the user gave it or as a glob resolved it; "" if no file
	Line int    // 1-based; 0 when the problem has no line (e.g. unreadable file)
	Msg  string
}

// String formats the problem as FILE:LINE: message (FILE: message without a
// line, and just the message without a file).
func (p Problem) String() string {
	switch {
	case p.File == "":
		return p.Msg
	case p.Line <= 0:
		return p.File + ": " + p.Msg
	default:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
}

// Errors is every problem found; it is an error when it is not empty.
type Errors []Problem

// Error joins the problems one per line, without a trailing newline.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Err returns e as an error, or nil when there are no problems.
func (e Errors) Err() error {
	if len(e) == 0 {
		return nil
	}
	return e
}

// Add records a problem.
func (e *Errors) Add(file string, line int, format string, args ...any) {
	*e = append(*e, Problem{File: file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// Sort orders the problems by file (in the order of files, then files not in
// it in order of first appearance) and then by line, keeping the original order
// of problems on the same line.
func (e Errors) Sort(files []string) {
	rank := make(map[string]int, len(files))
	for _, f := range files {
		if _, ok := rank[f]; !ok {
			rank[f] = len(rank)
		}
	}
	for _, p := range e {
		if _, ok := rank[p.File]; !ok {
			rank[p.File] = len(rank)
		}
	}
	slices.SortStableFunc(e, func(a, b Problem) int {
		if c := cmp.Compare(rank[a.File], rank[b.File]); c != 0 {
			return c
		}
		return cmp.Compare(a.Line, b.Line)
	})
}
