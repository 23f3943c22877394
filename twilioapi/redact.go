package twilioapi

import "regexp"

// userinfoRe finds the password of a URL with credentials
// ("https://user:pass@host"), such as a trigger's CallbackUrl with
// server.basic_auth, which Twilio may echo in an error message.
var userinfoRe = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@?#]*):[^@\s/?#]*@`)

// redactUserinfo hides every URL password in s.
func redactUserinfo(s string) string {
	return userinfoRe.ReplaceAllString(s, "$1:<redacted>@")
}
