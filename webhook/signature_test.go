package webhook

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"

	"github.com/twilio/twilio-go/client"
)

// TestSignatureAgreesWithTwilioGo compares validSignature with twilio-go's
// own RequestValidator on generated requests: right signatures (over the URL
// as given, with the default port, without it), wrong tokens, altered
// parameters, odd URLs and bodies, garbage signatures.
func TestSignatureAgreesWithTwilioGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	urls := []string{
		"https://breaker.example.com/twilio/usage-triggers/spend",
		"https://breaker.example.com:443/twilio/usage-triggers/spend",
		"https://breaker.example.com:8443/twilio/usage-triggers/spend",
		"http://127.0.0.1:8080/twilio/usage-triggers/spend",
		"http://breaker.example.com/twilio/usage-triggers/spend?x=1&y=%2F",
		"https://user:pass@breaker.example.com/twilio/usage-triggers/spend",
		"https://[::1]:8443/twilio/usage-triggers/spend",
		"https://breaker.example.com/twilio/usage-triggers/sp%20end",
		"https://breaker.example.com/path?bodySHA256=abc",
		"::not a url",
	}
	tokens := []string{"12345", "tokenA", "tokenB"}
	agree, valid := 0, 0
	for i := 0; i < 4000; i++ {
		u := urls[rng.IntN(len(urls))]
		form := firing(acctA)
		switch rng.IntN(4) {
		case 0:
			form.Set("Extra", fmt.Sprint(rng.Int()))
		case 1:
			form.Set("CurrentValue", fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100)))
		case 2:
			form.Set("Z", "ü &=+%")
		}
		body := []byte(form.Encode())
		if rng.IntN(10) == 0 {
			body = []byte("a=%zz&b=1")
		}
		signer := tokens[rng.IntN(len(tokens))]
		checker := tokens[rng.IntN(len(tokens))]
		var sig string
		switch rng.IntN(5) {
		case 0:
			sig = sign(signer, u, form)
		case 1:
			sig = sign(signer, "https://breaker.example.com:443/twilio/usage-triggers/spend", form)
		case 2:
			sig = sign(signer, "https://breaker.example.com/twilio/usage-triggers/spend", form)
		case 3:
			b := make([]byte, 20)
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			sig = base64.StdEncoding.EncodeToString(b)
		case 4:
			sig = []string{"", "x", "bm90", "====", sign(signer, u, form) + "A"}[rng.IntN(5)]
		}
		v := client.NewRequestValidator(checker)
		want := v.ValidateBody(u, body, sig)
		got := validSignature(checker, u, body, sig)
		if got != want {
			t.Fatalf("url %q token %q sig %q body %q: ours %v, twilio-go %v", u, checker, sig, body, got, want)
		}
		agree++
		if want {
			valid++
		}
	}
	if valid < 300 {
		t.Fatalf("only %d of %d generated requests were validly signed; the comparison is too one-sided", valid, agree)
	}
	// The documented vector from DOMAIN.md §4 (GET-style params).
	params := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675310"}, "Digits": {"1234"}, "From": {"+14158675310"}, "To": {"+18005551212"}}
	if !validSignature("12345", "https://example.com/myapp.php?foo=1&bar=2", []byte(params.Encode()), "L/OH5YylLD5NRKLltdqwSvS0BnU=") {
		t.Fatal("documented vector rejected")
	}
}
