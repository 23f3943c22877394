package twiliosim

import (
	"crypto/rand"
	"encoding/hex"
	"regexp"
)

// newSID returns prefix + 32 lowercase hex digits, as Twilio's SIDs.
func newSID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// newToken returns 32 random ASCII letters and digits. Real auth tokens are
// 32 hex digits; any alphanumeric string works with twilio-go.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return string(b[:])
}

var sidRE = map[string]*regexp.Regexp{
	"AC": regexp.MustCompile(`^AC[0-9a-fA-F]{32}$`),
	"UT": regexp.MustCompile(`^UT[0-9a-fA-F]{32}$`),
	"CA": regexp.MustCompile(`^CA[0-9a-fA-F]{32}$`),
	"SM": regexp.MustCompile(`^SM[0-9a-fA-F]{32}$`),
	"MG": regexp.MustCompile(`^MG[0-9a-fA-F]{32}$`),
}
