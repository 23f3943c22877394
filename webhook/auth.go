package webhook

import (
	"net/http"
	"strings"
)

// validRequestSignature checks X-Twilio-Signature against the URL without
// credentials, which is how Twilio documents signing for SMS and voice
// webhooks whose URL carries user:pass@. Whether Usage Trigger callbacks
// follow that rule is not documented, so when the request came with Basic
// credentials the URL with them embedded is tried as well. Both are HMACs
// with the subaccount's auth token, so accepting either is no weaker.
func validRequestSignature(token string, r *http.Request, signedURL string, body []byte, sig string) bool {
	if validSignature(token, signedURL, body, sig) {
		return true
	}
	user, pass, ok := r.BasicAuth()
	if !ok || user == "" {
		return false
	}
	scheme, rest, ok := strings.Cut(signedURL, "://")
	if !ok {
		return false
	}
	return validSignature(token, scheme+"://"+user+":"+pass+"@"+rest, body, sig)
}
