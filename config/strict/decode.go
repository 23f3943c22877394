package strict

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Decoder walks one YAML file and collects its problems in Errs.
type Decoder struct {
	File string // the file's name in messages
	Errs Errors

	// Expand turns on ${VAR} expansion in every scalar value read through
	// Scalar, String, Int, Bool and Duration ($$ is a literal $).
	Expand bool
	// LookupEnv looks variables up; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

// Value is one value in the file with where it is.
type Value struct {
	// Node is the value with aliases resolved; nil when the key is absent.
	// A null value ("key:", "key: ~") is a non-nil node for which Present is false.
	Node *yaml.Node
	// Path names the value in messages: "server.listen", "accounts.include[1]".
	Path string
	// Prefix goes before Path in messages, e.g. `rule "x": `.
	Prefix string
	// Line is the value's line; for an absent key, the enclosing mapping's line.
	Line int

	broken bool // the enclosing value was already reported as wrong
	keyLn  int  // the line of its key, for values in a mapping
}

// Present reports whether the value is there and not null.
func (v Value) Present() bool { return v.Node != nil && !isNull(v.Node) }

// Written reports whether the key was written, even with a null value.
func (v Value) Written() bool { return v.Node != nil }

// Rebase returns v with an empty Path and the given message prefix, for
// values whose children are named relative to them (a rule in a list).
func (v Value) Rebase(prefix string) Value {
	v.Path = ""
	v.Prefix = prefix
	return v
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// Errorf records a problem at v: "PREFIX PATH: message".
func (d *Decoder) Errorf(v Value, format string, args ...any) {
	d.Errs.Add(d.File, v.Line, "%s", v.name()+fmt.Sprintf(format, args...))
}

// ErrorfAt records a problem at a line, with v's prefix but without its path.
func (d *Decoder) ErrorfAt(line int, v Value, format string, args ...any) {
	d.Errs.Add(d.File, line, "%s", v.Prefix+fmt.Sprintf(format, args...))
}

func (v Value) name() string {
	if v.Path == "" {
		return v.Prefix
	}
	return v.Prefix + v.Path + ": "
}

// Required records "PATH is required" unless the enclosing value was already
// reported as wrong.
func (d *Decoder) Required(v Value) {
	if v.broken {
		return
	}
	d.Errs.Add(d.File, v.Line, "%s%s is required", v.Prefix, v.Path)
}

// RequiredOr records "PATH is required" followed by more (e.g. " (or x_file)"),
// unless the enclosing value was already reported as wrong.
func (d *Decoder) RequiredOr(v Value, more string) {
	if v.broken {
		return
	}
	d.Errs.Add(d.File, v.Line, "%s%s is required%s", v.Prefix, v.Path, more)
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are the messages of yaml.v3's parser (parserc.go), whose
// lines it reports 0-based; its scanner's are 1-based.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"found undefined tag handle":             true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
}

// Parse parses data as one YAML document and returns its root. ok is false
// (and a problem recorded) when it is not valid YAML or has several documents.
// An empty document gives an absent root.
func (d *Decoder) Parse(data []byte) (root Value, ok bool) {
	doc, extraLine, err := parse(data)
	if err != nil {
		line, msg := 0, strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
		}
		if parserProblems[msg] {
			// yaml.v3 reports parser (not scanner) errors with a 0-based
			// line, and none at all on the first line.
			line++
		}
		line = problemLine(data, msg, line)
		d.Errs.Add(d.File, line, "invalid YAML: %s", msg)
		return Value{Line: 1}, false
	}
	if extraLine > 0 {
		d.Errs.Add(d.File, extraLine, "only one YAML document is allowed")
		return Value{Line: 1}, false
	}
	root = Value{Line: 1}
	if doc != nil && doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		root.Node = resolve(doc.Content[0])
		if doc.Content[0].Line > 0 {
			root.Line = doc.Content[0].Line
		}
	}
	return root, true
}

// maxProblemSearch bounds problemLine's work (it parses a prefix per line).
const maxProblemSearch = 5000

// problemLine finds the line a YAML error is about. yaml.v3 reports where the
// enclosing construct starts (a list item's first line for a bad key further
// down it), not the line that broke it. The broken line is the first one at
// which the text read so far fails with the same message: every prefix of the
// file up to the line before it parses. The search starts at the reported
// line (the problem cannot be earlier). If no prefix reproduces the message
// (a multi-line construct), the reported line stands.
func problemLine(data []byte, msg string, reported int) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > maxProblemSearch {
		return reported
	}
	end := 0
	for k := 1; k <= len(lines); k++ {
		end += len(lines[k-1])
		if k < reported {
			continue
		}
		_, _, err := parse(data[:end])
		if err == nil {
			continue
		}
		got := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
			got = m[2]
		}
		if got == msg {
			return k
		}
	}
	return reported
}

var errInternal = errors.New("yaml: internal parser error")

func parse(data []byte) (doc *yaml.Node, extraLine int, err error) {
	defer func() {
		if r := recover(); r != nil {
			doc, extraLine, err = nil, 0, errInternal
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var first yaml.Node
	if err := dec.Decode(&first); err != nil {
		if err == io.EOF {
			return nil, 0, nil
		}
		return nil, 0, err
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case err == io.EOF:
		return &first, 0, nil
	case err != nil:
		return nil, 0, err
	}
	line := second.Line
	if len(second.Content) > 0 && second.Content[0].Line > 0 {
		line = second.Content[0].Line
	}
	return &first, max(line, 1), nil
}

// resolve follows aliases; a broken alias becomes nil.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	return n
}

// kind describes a node for "must be X, not Y" messages.
func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		default:
			return "a string"
		}
	}
	return "an unsupported value"
}

// Map is a decoded mapping; Get returns its values by key.
type Map struct {
	v    Value
	vals map[string]Value
	bad  bool
}

// Map checks that v is a mapping (absent or null counts as empty) whose keys
// are all in known, unique, plain strings. Keys in future are features of later
// versions and reported as such. The returned Map is usable even when v is not
// a mapping: its values are then absent and not reported as required.
func (d *Decoder) Map(v Value, known []string, future ...string) *Map {
	m := &Map{v: v, vals: map[string]Value{}}
	if !v.Present() {
		m.bad = v.broken
		return m
	}
	n := v.Node
	if n.Kind != yaml.MappingNode {
		if v.Path == "" && v.Prefix == "" {
			d.Errs.Add(d.File, v.Line, "the top level must be a mapping, not %s", kind(n))
		} else {
			d.Errorf(v, "must be a mapping, not %s", kind(n))
		}
		m.bad = true
		return m
	}
	in := ""
	if v.Path != "" {
		in = " in " + v.Path
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.ErrorfAt(k.Line, v, "keys must be plain strings, not %s%s", kind(resolve(k)), in)
			continue
		}
		key := k.Value
		if k.ShortTag() == "!!merge" {
			d.ErrorfAt(k.Line, v, "merge keys (\"<<\") are not supported%s", in)
			continue
		}
		if prev, dup := m.vals[key]; dup {
			d.ErrorfAt(k.Line, v, "duplicate key %q%s (first at line %d)", key, in, prev.keyLn)
			continue
		}
		if !slices.Contains(known, key) {
			hint := ""
			if slices.Contains(future, key) {
				hint = " (not supported in this version)"
			} else if s := Suggest(key, known); s != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.ErrorfAt(k.Line, v, "unknown key %q%s%s", key, in, hint)
			// Remember it anyway so that a repeat is still a duplicate.
			m.vals[key] = Value{Line: k.Line, keyLn: k.Line}
			continue
		}
		rv := resolve(val)
		if rv == nil {
			// A broken alias: treat it as null.
			rv = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: val.Line}
		}
		line := val.Line
		if line == 0 || isNull(rv) {
			line = k.Line
		}
		m.vals[key] = Value{Node: rv, Path: join(v.Path, key), Prefix: v.Prefix, Line: line, keyLn: k.Line}
	}
	return m
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Get returns the value for key (Node nil when absent).
func (m *Map) Get(key string) Value {
	if v, ok := m.vals[key]; ok && v.Path != "" {
		return v
	}
	line := m.v.Line
	if m.v.keyLn > 0 {
		line = m.v.keyLn
	}
	return Value{Path: join(m.v.Path, key), Prefix: m.v.Prefix, Line: line, broken: m.bad || m.v.broken}
}

// Bad reports whether the value was not a mapping.
func (m *Map) Bad() bool { return m.bad }

// Line is the line of the mapping's key (for a list item, of the item), the
// line a missing key is reported at.
func (m *Map) Line() int {
	if m.v.keyLn > 0 {
		return m.v.keyLn
	}
	return m.v.Line
}

// List returns the items of a list. ok is false when v is absent, null or not
// a list (the last is reported).
func (d *Decoder) List(v Value) (items []Value, ok bool) {
	if !v.Present() {
		return nil, false
	}
	if v.Node.Kind != yaml.SequenceNode {
		d.Errorf(v, "must be a list, not %s", kind(v.Node))
		return nil, false
	}
	items = make([]Value, 0, len(v.Node.Content))
	for i, c := range v.Node.Content {
		rc := resolve(c)
		if rc == nil {
			rc = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: c.Line}
		}
		line := c.Line
		if line == 0 {
			line = v.Line
		}
		items = append(items, Value{Node: rc, Path: fmt.Sprintf("%s[%d]", v.Path, i), Prefix: v.Prefix, Line: line})
	}
	return items, true
}

// Raw returns a scalar's literal text, never expanded. ok is false when v is
// absent or null (not reported) or not a scalar (reported, naming want).
func (d *Decoder) Raw(v Value, want string) (string, bool) {
	if !v.Present() {
		return "", false
	}
	if v.Node.Kind != yaml.ScalarNode {
		d.Errorf(v, "must be %s, not %s", want, kind(v.Node))
		return "", false
	}
	return v.Node.Value, true
}

// Scalar is Raw with ${VAR} expansion when the decoder expands.
func (d *Decoder) Scalar(v Value, want string) (string, bool) {
	s, ok := d.Raw(v, want)
	if !ok || !d.Expand {
		return s, ok
	}
	return d.expand(v, s)
}

// String returns a string value (see Scalar).
func (d *Decoder) String(v Value) (string, bool) { return d.Scalar(v, "a string") }

// Int returns an integer value written in decimal.
func (d *Decoder) Int(v Value) (int, bool) {
	s, ok := d.Scalar(v, "an integer")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 0)
	if err != nil {
		d.Errorf(v, "%q is not an integer", s)
		return 0, false
	}
	return int(n), true
}

// Bool returns true or false.
func (d *Decoder) Bool(v Value) (bool, bool) {
	s, ok := d.Scalar(v, "a boolean")
	if !ok {
		return false, false
	}
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	d.Errorf(v, "%q is not a boolean (true or false)", s)
	return false, false
}

// Duration returns a Go duration ("10s", "1m30s").
func (d *Decoder) Duration(v Value) (time.Duration, bool) {
	s, ok := d.Scalar(v, "a duration")
	if !ok {
		return 0, false
	}
	dur, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.Errorf(v, "%q is not a duration (like \"10s\" or \"1m\")", s)
		return 0, false
	}
	return dur, true
}

// expand replaces ${VAR} with the variable's value and $$ with $; any other $
// stays as it is. Each unset or malformed variable is reported.
func (d *Decoder) expand(v Value, s string) (string, bool) {
	if !strings.Contains(s, "$") {
		return s, true
	}
	lookup := d.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var b strings.Builder
	ok := true
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			i++
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i += 2
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				d.Errorf(v, "\"${\" without a closing \"}\"")
				return "", false
			}
			name := s[i+2 : i+2+end]
			i += 2 + end + 1
			if !validEnvName(name) {
				d.Errorf(v, "invalid environment variable name %q", name)
				ok = false
				continue
			}
			val, set := lookup(name)
			if !set {
				d.Errorf(v, "environment variable %s is not set", name)
				ok = false
				continue
			}
			b.WriteString(val)
		default:
			b.WriteByte('$')
			i++
		}
	}
	return b.String(), ok
}

func validEnvName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
