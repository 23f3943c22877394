package twilioapi

import "testing"

func TestRedactUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"CallbackUrl is not a valid URL: https://twilio:s3cretpassword0123@b.example.com/x": "CallbackUrl is not a valid URL: https://twilio:<redacted>@b.example.com/x",
		"two: http://a:b@h1/p and HTTPS://c:d-e.f~g@h2:8443/q?x=1":                          "two: http://a:<redacted>@h1/p and HTTPS://c:<redacted>@h2:8443/q?x=1",
		"no password: https://user@host/x, none: https://host/x@y, mail: ops@example.com":   "no password: https://user@host/x, none: https://host/x@y, mail: ops@example.com",
	} {
		if got := redactUserinfo(in); got != want {
			t.Errorf("redactUserinfo(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}
