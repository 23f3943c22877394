package config

// securityBadConfigs are the bad fixtures of config/security.go (server.tls,
// server.basic_auth, server.allow_insecure_public_url,
// server.trusted_proxies, the https checks), one per error, with the exact
// error; TestLoadBadConfigs checks them with the others.
var securityBadConfigs = map[string]string{
	"tls-empty.yaml":                 "testdata/bad/tls-empty.yaml:7: server.tls: is empty: give cert_file and key_file, or remove server.tls",
	"tls-no-key.yaml":                "testdata/bad/tls-no-key.yaml:7: server.tls.key_file is required",
	"tls-cert-missing.yaml":          `testdata/bad/tls-cert-missing.yaml:8: server.tls.cert_file: cannot read "../tls/no-such.pem": no such file or directory`,
	"tls-cert-not-pem.yaml":          `testdata/bad/tls-cert-not-pem.yaml:8: server.tls.cert_file: "../tls/key.pem" holds no PEM certificate`,
	"tls-key-not-pem.yaml":           `testdata/bad/tls-key-not-pem.yaml:9: server.tls.key_file: cannot use "../tls/cert.pem" with the certificate in "../tls/cert.pem": it holds a certificate, not a private key`,
	"tls-key-mismatch.yaml":          `testdata/bad/tls-key-mismatch.yaml:9: server.tls.key_file: cannot use "../tls/other-key.pem" with the certificate in "../tls/cert.pem": the private key does not match the certificate`,
	"tls-http-public-url.yaml":       `testdata/bad/tls-http-public-url.yaml:6: server.public_url: "http://127.0.0.1:8443" is http://, but server.tls makes the callback listener speak only HTTPS; use https://`,
	"basic-auth-empty.yaml":          "testdata/bad/basic-auth-empty.yaml:7: server.basic_auth: is empty: give username and password (or password_file), or remove server.basic_auth",
	"basic-auth-no-username.yaml":    "testdata/bad/basic-auth-no-username.yaml:7: server.basic_auth.username is required",
	"basic-auth-username-bad.yaml":   `testdata/bad/basic-auth-username-bad.yaml:8: server.basic_auth.username: "twilio:x" must be 1 to 64 characters of A-Z, a-z, 0-9 and -._~ (it is sent inside the callback URL)`,
	"basic-auth-no-password.yaml":    "testdata/bad/basic-auth-no-password.yaml:7: server.basic_auth.password is required (or server.basic_auth.password_file)",
	"basic-auth-password-weak.yaml":  "testdata/bad/basic-auth-password-weak.yaml:9: server.basic_auth.password: must be 16 to 256 characters of A-Z, a-z, 0-9 and -._~ (it is sent inside the callback URL; generate one with: openssl rand -hex 32)",
	"basic-auth-password-chars.yaml": "testdata/bad/basic-auth-password-chars.yaml:9: server.basic_auth.password: must be 16 to 256 characters of A-Z, a-z, 0-9 and -._~ (it is sent inside the callback URL; generate one with: openssl rand -hex 32)",
	"basic-auth-password-both.yaml":  "testdata/bad/basic-auth-password-both.yaml:10: server.basic_auth.password and server.basic_auth.password_file are both set; use one",
	"public-url-insecure.yaml":       `testdata/bad/public-url-insecure.yaml:6: server.public_url: "http://breaker.example.com" is plain HTTP on a non-loopback host: Twilio would send every callback (and the server.basic_auth password) unencrypted, readable and replayable by anyone on the path; use an https:// URL (TLS at your ingress, or server.tls), or set server.allow_insecure_public_url: true to accept that risk`,
	"allow-insecure-not-bool.yaml":   `testdata/bad/allow-insecure-not-bool.yaml:7: server.allow_insecure_public_url: "yes please" is not a boolean (true or false)`,
	"api-base-url-insecure.yaml":     `testdata/bad/api-base-url-insecure.yaml:5: twilio.api_base_url: "http://api.twilio.com" is plain HTTP: the parent account's auth token would cross the network unencrypted; use https:// (http:// is allowed only for a loopback host, such as the simulator on 127.0.0.1)`,
	"trusted-proxies-bad.yaml":       `testdata/bad/trusted-proxies-bad.yaml:7: server.trusted_proxies[1]: "10.0.0.0/33" is not an IP address or CIDR prefix (like 10.0.0.0/8 or 192.0.2.7)`,
}

func init() {
	for name, want := range securityBadConfigs {
		badConfigs[name] = want
	}
}
