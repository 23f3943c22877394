// Package decimal holds exact decimal numbers for money, usage and thresholds.
//
// Twilio sends prices and trigger values as decimal strings ("2192.84855",
// "1000.000000"); twilio-go decodes some of them into float32, which cannot hold
// them exactly. Everything in usagebreaker that compares or adds such values uses
// this type instead. A Decimal is immutable; the zero value is 0.
package decimal

import (
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
)

// Decimal is an exact decimal number.
type Decimal struct {
	r *big.Rat // nil means zero; never mutated after construction
}

// Zero is 0.
var Zero = Decimal{}

// Parse reads a plain decimal: an optional sign, digits, an optional fraction.
// Exponents, fractions like "1/3", spaces, "NaN" and "Inf" are rejected.
func Parse(s string) (Decimal, error) {
	body := s
	if strings.HasPrefix(body, "+") || strings.HasPrefix(body, "-") {
		body = body[1:]
	}
	if body == "" || body == "." {
		return Decimal{}, fmt.Errorf("%q is not a decimal number", s)
	}
	dot := false
	digits := 0
	for _, c := range body {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return Decimal{}, fmt.Errorf("%q is not a decimal number", s)
		}
	}
	if digits == 0 {
		return Decimal{}, fmt.Errorf("%q is not a decimal number", s)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return Decimal{}, fmt.Errorf("%q is not a decimal number", s)
	}
	return Decimal{r: r}, nil
}

// MustParse is Parse for constants; it panics on bad input.
func MustParse(s string) Decimal {
	d, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return d
}

// FromInt returns n as a Decimal.
func FromInt(n int64) Decimal { return Decimal{r: new(big.Rat).SetInt64(n)} }

func (d Decimal) rat() *big.Rat {
	if d.r == nil {
		return new(big.Rat)
	}
	return d.r
}

// Cmp compares d and o: -1 if d < o, 0 if equal, +1 if d > o.
func (d Decimal) Cmp(o Decimal) int { return d.rat().Cmp(o.rat()) }

// Equal reports whether d == o numerically ("50" equals "50.000000").
func (d Decimal) Equal(o Decimal) bool { return d.Cmp(o) == 0 }

// Sign returns -1, 0 or +1.
func (d Decimal) Sign() int { return d.rat().Sign() }

// IsZero reports whether d == 0.
func (d Decimal) IsZero() bool { return d.Sign() == 0 }

// Add returns d + o.
func (d Decimal) Add(o Decimal) Decimal { return Decimal{r: new(big.Rat).Add(d.rat(), o.rat())} }

// Sub returns d - o.
func (d Decimal) Sub(o Decimal) Decimal { return Decimal{r: new(big.Rat).Sub(d.rat(), o.rat())} }

// String returns the shortest exact form: "50", "50.12", "-0.5".
func (d Decimal) String() string {
	r := d.rat()
	if r.IsInt() {
		return r.Num().String()
	}
	// A value parsed from (or summed from) decimals has a denominator 2^a*5^b,
	// so max(a, b) fractional digits represent it exactly.
	den := new(big.Int).Set(r.Denom())
	twos, fives := 0, 0
	two, five, zero := big.NewInt(2), big.NewInt(5), new(big.Int)
	m := new(big.Int)
	for m.Mod(den, two).Cmp(zero) == 0 {
		den.Quo(den, two)
		twos++
	}
	for m.Mod(den, five).Cmp(zero) == 0 {
		den.Quo(den, five)
		fives++
	}
	prec := max(twos, fives)
	if den.Cmp(big.NewInt(1)) != 0 {
		prec = 18 // not a finite decimal (cannot come from Parse); round
	}
	return r.FloatString(prec)
}

// StringFixed returns d with exactly n fractional digits, rounded half away from
// zero when it has more: StringFixed(6) of 1000 is "1000.000000", as Twilio writes
// trigger values.
func (d Decimal) StringFixed(n int) string { return d.rat().FloatString(n) }

// MarshalJSON writes the decimal as a JSON string, as Twilio does.
func (d Decimal) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a JSON string or number.
func (d *Decimal) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*d = Decimal{}
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	v, err := Parse(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalText and UnmarshalText let a Decimal be a YAML or flag value.
func (d Decimal) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a plain decimal.
func (d *Decimal) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Tidy writes a decimal text in its shortest exact form, as a rule writes
// it: Twilio's echo "5.000000" is "5", "50.010000" is "50.01". Text that is
// not a decimal is returned as it is; a leading "+" (Twilio's "above current
// usage") is kept.
func Tidy(s string) string {
	if rest, ok := strings.CutPrefix(s, "+"); ok {
		return "+" + Tidy(rest)
	}
	d, err := Parse(s)
	if err != nil {
		return s
	}
	return d.String()
}

// DivInt returns d / n exactly (n must not be 0). The result may not be a
// finite decimal (1 / 3); String then rounds it to 18 places.
func (d Decimal) DivInt(n int64) Decimal {
	return Decimal{r: new(big.Rat).Quo(d.rat(), new(big.Rat).SetInt64(n))}
}
