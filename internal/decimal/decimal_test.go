package decimal

import (
	"encoding/json"
	"testing"
)

func TestParseAndString(t *testing.T) {
	cases := []struct{ in, out string }{
		{"50", "50"},
		{"50.12", "50.12"},
		{"1000.000000", "1000"},
		{"+30", "30"},
		{"-0.5", "-0.5"},
		{"2192.84855", "2192.84855"},
		{"0.1", "0.1"},
		{".5", "0.5"},
		{"007", "7"},
	}
	for _, c := range cases {
		d, err := Parse(c.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.in, err)
		}
		if got := d.String(); got != c.out {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, got, c.out)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{"", "+", "-", ".", "1e3", "1/3", "NaN", "Inf", " 1", "1 ", "1.2.3", "0x10", "abc"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
}

func TestExactArithmetic(t *testing.T) {
	// 0.1 + 0.2 == 0.3 exactly, which float32/float64 cannot do.
	sum := MustParse("0.1").Add(MustParse("0.2"))
	if !sum.Equal(MustParse("0.3")) {
		t.Fatalf("0.1+0.2 = %s", sum)
	}
	// A float32 would round 2192.84855 to 2192.8486.
	if MustParse("2192.84855").Cmp(MustParse("2192.8486")) >= 0 {
		t.Fatal("lost precision")
	}
	if MustParse("50").Cmp(MustParse("50.000000")) != 0 {
		t.Fatal("50 != 50.000000")
	}
	if got := MustParse("50.12").Sub(MustParse("0.12")).String(); got != "50" {
		t.Fatalf("Sub = %s", got)
	}
	if got := MustParse("1000").StringFixed(6); got != "1000.000000" {
		t.Fatalf("StringFixed = %s", got)
	}
	if Zero.String() != "0" || !Zero.IsZero() || FromInt(3).String() != "3" {
		t.Fatal("zero/int")
	}
}

func TestJSON(t *testing.T) {
	var v struct{ A, B, C Decimal }
	if err := json.Unmarshal([]byte(`{"A":"1.50","B":2.25,"C":null}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.A.String() != "1.5" || v.B.String() != "2.25" || !v.C.IsZero() {
		t.Fatalf("got %s %s %s", v.A, v.B, v.C)
	}
	out, _ := json.Marshal(v.A)
	if string(out) != `"1.5"` {
		t.Fatalf("marshal = %s", out)
	}
	if err := json.Unmarshal([]byte(`{"A":"x"}`), &v); err == nil {
		t.Fatal("bad decimal accepted")
	}
}
