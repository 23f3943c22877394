package webhook

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/twilio/twilio-go/client"
)

// validSignature reports whether sig is Twilio's X-Twilio-Signature for a
// request to signedURL with this body, signed with token.
//
// It gives exactly the answers of twilio-go's RequestValidator.ValidateBody
// (a test compares them on thousands of generated requests) at a fraction of
// its cost, which matters when a flood of forged callbacks must be rejected:
// the URL variants (with the default port added, and with any port removed,
// as Twilio's SDKs accept both) are built the same way, each parameter counts
// with its first value, and the base64 signatures are compared in constant
// time; but the parameters are fed to one reused HMAC instead of being
// formatted into strings. JSON bodies (a bodySHA256 query parameter) are
// rare here and go to twilio-go itself.
func validSignature(token, signedURL string, body []byte, sig string) bool {
	if token == "" || len(sig) != base64.StdEncoding.EncodedLen(sha1.Size) {
		return false // no SHA-1 signature has another length
	}
	if strings.Contains(signedURL, "bodySHA256") {
		if parsed, err := url.Parse(signedURL); err != nil {
			return false
		} else if parsed.Query().Get("bodySHA256") != "" {
			v := client.NewRequestValidator(token)
			return v.ValidateBody(signedURL, body, sig)
		}
	}
	variants, ok := portVariants(signedURL)
	if !ok {
		return false
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return false
	}
	keys := make([]string, 0, 16)
	for k := range form {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	// The parameters, sorted, each name then value, are the same for both
	// URL variants: build them once in a pooled buffer.
	bp := bufPool.Get().(*[]byte)
	params := (*bp)[:0]
	for _, k := range keys {
		params = append(params, k...)
		params = append(params, form[k][0]...)
	}
	defer func() { *bp = params[:0]; bufPool.Put(bp) }()

	mac := hmac.New(sha1.New, []byte(token))
	var sum [sha1.Size]byte
	var enc [28]byte // base64 of 20 bytes
	check := func(u string) bool {
		mac.Reset()
		ub := append(params[len(params):], u...) // scratch space after the params
		mac.Write(ub)
		mac.Write(params)
		base64.StdEncoding.Encode(enc[:], mac.Sum(sum[:0]))
		return subtle.ConstantTimeCompare(enc[:], []byte(sig)) == 1
	}
	// Both are computed, like twilio-go does, so the time taken does not tell
	// which variant matched.
	a, b := check(variants[0]), check(variants[1])
	return a || b
}

// variantCache holds the port variants of the signed URLs seen, which are
// few (public_url + one path per rule). It stops growing at variantCacheMax
// entries, so requests to made-up paths cannot fill memory.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

var variantCache struct {
	sync.RWMutex
	m map[string][2]string
}

const variantCacheMax = 1024

// portVariants returns the URL with the scheme's default port added (unless it
// has a port) and with its port removed (unless it has none), built exactly as
// twilio-go's addPort and removePort build them.
func portVariants(raw string) ([2]string, bool) {
	variantCache.RLock()
	v, ok := variantCache.m[raw]
	variantCache.RUnlock()
	if ok {
		return v, true
	}
	parsed, err := url.Parse(raw)
	if err != nil {
		return v, false
	}
	v = [2]string{raw, raw}
	p := *parsed
	if parsed.Port() == "" {
		port := 80
		if parsed.Scheme == "https" {
			port = 443
		}
		p.Host = fmt.Sprintf("%s:%d", parsed.Host, port)
		v[0] = p.String()
	} else {
		p.Host = strings.Split(parsed.Host, ":")[0]
		v[1] = p.String()
	}
	variantCache.Lock()
	if variantCache.m == nil {
		variantCache.m = map[string][2]string{}
	}
	if len(variantCache.m) < variantCacheMax {
		variantCache.m[raw] = v
	}
	variantCache.Unlock()
	return v, true
}
