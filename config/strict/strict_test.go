package strict

import "testing"

func TestProblemString(t *testing.T) {
	for _, tc := range []struct {
		p    Problem
		want string
	}{
		{Problem{"c.yaml", 3, "m"}, "c.yaml:3: m"},
		{Problem{"c.yaml", 0, "m"}, "c.yaml: m"},
		{Problem{"", 0, "m"}, "m"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%+v = %q, want %q", tc.p, got, tc.want)
		}
	}
	if (Errors{}).Err() != nil || (Errors{{Msg: "x"}}).Err() == nil {
		t.Error("Err")
	}
	e := Errors{{"b", 1, "b1"}, {"a", 9, "a9"}, {"a", 2, "a2"}, {"c", 1, "c1"}, {"a", 2, "a2-second"}}
	e.Sort([]string{"a", "b"})
	if got := e.Error(); got != "a:2: a2\na:2: a2-second\na:9: a9\nb:1: b1\nc:1: c1" {
		t.Errorf("sorted:\n%s", got)
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "aa", "EMPTY": "", "REF": "${A}"}
	d := &Decoder{File: "f", Expand: true, LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	for _, tc := range []struct{ in, want, err string }{
		{"x", "x", ""},
		{"${A}", "aa", ""},
		{"${EMPTY}", "", ""},
		{"${REF}", "${A}", ""},
		{"$$", "$", ""},
		{"$$A", "$A", ""},
		{"$A", "$A", ""},
		{"cost $5", "cost $5", ""},
		{"$", "$", ""},
		{"${A}-${A}", "aa-aa", ""},
		{"${NOPE}", "", "f:1: v: environment variable NOPE is not set"},
		{"${NOPE}${NADA}", "", "f:1: v: environment variable NOPE is not set\nf:1: v: environment variable NADA is not set"},
		{"${A", "", `f:1: v: "${" without a closing "}"`},
		{"${}", "", `f:1: v: invalid environment variable name ""`},
		{"${A-B}", "", `f:1: v: invalid environment variable name "A-B"`},
	} {
		d.Errs = nil
		got, ok := d.expand(Value{Path: "v", Line: 1}, tc.in)
		if tc.err == "" && (!ok || got != tc.want || d.Errs != nil) {
			t.Errorf("expand(%q) = %q, %v, %v; want %q", tc.in, got, ok, d.Errs, tc.want)
		}
		if tc.err != "" && (ok || d.Errs.Error() != tc.err) {
			t.Errorf("expand(%q) = %v, errors %v; want %s", tc.in, ok, d.Errs, tc.err)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"listen", "public_url", "admin_listen"}
	for in, want := range map[string]string{
		"listn": "listen", "lisen": "listen", "publicurl": "public_url", "admin-listen": "admin_listen",
		"tls": "", "x": "", "listen": "", "completely-different": "",
	} {
		if got := Suggest(in, keys); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

// A YAML syntax error names the broken line, not the first line
// of the list item (or mapping) around it.
func TestParseErrorLine(t *testing.T) {
	cases := []struct{ text, want string }{
		{"rules:\n  - name: a\n    accounts:\n      include: [\"*\"]\n    usage_category: sms\n   trigger_by: count\n",
			"f.yaml:6: invalid YAML: did not find expected '-' indicator"},
		{"rules:\n  - name: a\n    usage_category: sms\n    trigger_by: count\n  action: x\n",
			"f.yaml:5: invalid YAML: did not find expected '-' indicator"},
		{"rules:\n  - name: a\n    usage_category: sms\n    - trigger_by\n    action: x\n",
			"f.yaml:4: invalid YAML: did not find expected key"},
		{"rules:\n  - name: a\n    trigger_by: count\n    action: x\n\tfoo: 1\n",
			"f.yaml:5: invalid YAML: found a tab character that violates indentation"},
		{"rules:\n  - name: a\n    threshold: \"50\n    action: suspend\n",
			"f.yaml:3: invalid YAML: found unexpected end of stream"},
		{"a: 1\nb: 2\nc d\ne: 3\n", "f.yaml:3: invalid YAML: could not find expected ':'"},
		{"a: [1,\n  2\nb: 3\n", "f.yaml:3: invalid YAML: did not find expected ',' or ']'"},
	}
	for _, c := range cases {
		d := &Decoder{File: "f.yaml"}
		if _, ok := d.Parse([]byte(c.text)); ok {
			t.Errorf("%q parsed", c.text)
			continue
		}
		if got := d.Errs.Error(); got != c.want {
			t.Errorf("%q:\n got %s\nwant %s", c.text, got, c.want)
		}
	}
}
