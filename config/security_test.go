package config

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/rules"
)

func TestLoadSecurity(t *testing.T) {
	cert, _ := os.ReadFile("testdata/tls/cert.pem")
	key, _ := os.ReadFile("testdata/tls/key.pem")
	dir := writeTree(t, map[string]string{
		"config.yaml": `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token: abc123
server:
  public_url: https://breaker.example.com
  tls:
    cert_file: tls/tls.crt
    key_file: tls/tls.key
  basic_auth:
    username: twilio
    password_file: secrets/callback-password
  trusted_proxies: ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"]
rule_files: ["r.yaml"]
`,
		"tls/tls.crt":               string(cert),
		"tls/tls.key":               string(key),
		"secrets/callback-password": "Passw0rd-of-20-chars\n",
		"r.yaml":                    fmt.Sprintf(ruleYAML, "a"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	s := cfg.Server
	if s.TLS == nil || s.TLS.CertFile != filepath.Join(dir, "tls", "tls.crt") || s.TLS.KeyFile != filepath.Join(dir, "tls", "tls.key") {
		t.Errorf("tls = %+v", s.TLS)
	}
	if s.BasicAuth == nil || s.BasicAuth.Username != "twilio" || s.BasicAuth.Password.Reveal() != "Passw0rd-of-20-chars" {
		t.Errorf("basic_auth = %+v", s.BasicAuth)
	}
	if !slices.Contains(cfg.Files, filepath.Join(dir, "secrets", "callback-password")) {
		t.Errorf("the password file is not in Files: %v", cfg.Files)
	}
	for _, f := range cfg.Files {
		if strings.HasSuffix(f, ".crt") || strings.HasSuffix(f, ".key") {
			// The certificate reloader follows them; a reload must not.
			t.Errorf("a TLS file is in Files: %s", f)
		}
	}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "198.51.100.0/24"}
	var got []string
	for _, p := range s.TrustedProxies.Prefixes {
		got = append(got, p.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("trusted_proxies = %v, want %v", got, want)
	}
	for addr, in := range map[string]bool{"10.1.2.3": true, "192.0.2.7": true, "192.0.2.8": false,
		"::ffff:10.9.9.9": true, "2001:db8:1::1": true, "2001:db9::1": false, "198.51.100.77": true} {
		if s.TrustedProxies.Contains(netip.MustParseAddr(addr)) != in {
			t.Errorf("Contains(%s) != %v", addr, in)
		}
	}
	if (*TrustedProxies)(nil).Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Error("nil TrustedProxies trusts")
	}

	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "Passw0rd-of-20-chars") {
		t.Fatalf("/config shows the basic_auth password:\n%s", out)
	}
	var m struct {
		Server struct {
			TLS            map[string]string `yaml:"tls"`
			BasicAuth      map[string]string `yaml:"basic_auth"`
			TrustedProxies []string          `yaml:"trusted_proxies"`
		} `yaml:"server"`
	}
	if err := yaml.Unmarshal(out, &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if m.Server.BasicAuth["password"] != "<secret>" || m.Server.BasicAuth["username"] != "twilio" ||
		m.Server.TLS["cert_file"] != s.TLS.CertFile || !slices.Equal(m.Server.TrustedProxies, want) {
		t.Errorf("redacted server:\n%s", out)
	}
}

func TestLoadPublicURLSchemes(t *testing.T) {
	for _, c := range []struct {
		publicURL, extra, apiBase string
		ok                        bool
	}{
		{"https://breaker.example.com", "", "", true},
		{"http://127.0.0.1:8080", "", "http://127.0.0.1:9000", true},
		{"http://127.9.9.9", "", "http://localhost:9000", true},
		{"http://[::1]:8080", "", "http://[::1]:9000", true},
		{"http://LOCALHOST:8080", "", "", true},
		{"http://breaker.example.com", "", "", false},
		{"http://breaker.example.com", "  allow_insecure_public_url: true\n", "", true},
		{"http://breaker.example.com", "  allow_insecure_public_url: false\n", "", false},
		{"http://10.0.0.1:8080", "", "", false},
		{"http://localhost.example.com", "", "", false},
		{"https://breaker.example.com", "", "http://api.twilio.com", false},
		{"https://breaker.example.com", "", "http://10.0.0.5:9000", false},
		{"https://breaker.example.com", "", "https://api.example.com", true},
	} {
		api := ""
		if c.apiBase != "" {
			api = "  api_base_url: " + c.apiBase + "\n"
		}
		dir := writeTree(t, map[string]string{
			"config.yaml": "instance: prod\ntwilio:\n  account_sid: " + testSID + "\n  auth_token: abc123\n" + api +
				"server:\n  public_url: " + c.publicURL + "\n" + c.extra + "rule_files: [r.yaml]\n",
			"r.yaml": fmt.Sprintf(ruleYAML, "a"),
		})
		_, err := Load(filepath.Join(dir, "config.yaml"))
		if (err == nil) != c.ok {
			t.Errorf("public_url %s %q api %s: err = %v, want ok=%v", c.publicURL, c.extra, c.apiBase, err, c.ok)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LocalHost": true, "127.0.0.1": true, "127.1.2.3": true, "::1": true,
		"::ffff:127.0.0.1": true, "0.0.0.0": false, "10.0.0.1": false, "example.com": false,
		"localhost.example.com": false, "": false, "128.0.0.1": false, "::": false,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v", host, got)
		}
	}
}

// LoadKeyPair is ParseKeyPair on two files, as the daemon's certificate
// reloader reads them.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := rules.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cannot read %s: %w", certFile, err)
	}
	keyPEM, err := rules.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cannot read %s: %w", keyFile, err)
	}
	return ParseKeyPair(certPEM, keyPEM, certFile, keyFile)
}

func TestLoadKeyPair(t *testing.T) {
	pair, err := LoadKeyPair("testdata/tls/cert.pem", "testdata/tls/key.pem")
	if err != nil || pair.Leaf == nil || pair.Leaf.Subject.CommonName != "breaker.example.com" {
		t.Fatalf("LoadKeyPair = %+v, %v", pair.Leaf, err)
	}
	for _, c := range []struct{ cert, key, want string }{
		{"testdata/tls/nope.pem", "testdata/tls/key.pem", "cannot read testdata/tls/nope.pem: no such file or directory"},
		{"testdata/tls/cert.pem", "testdata/tls/nope.pem", "cannot read testdata/tls/nope.pem: no such file or directory"},
		{"testdata/tls/key.pem", "testdata/tls/key.pem", "testdata/tls/key.pem holds no PEM certificate"},
		{"testdata/tls/cert.pem", "testdata/tls/other-key.pem",
			"cannot use testdata/tls/other-key.pem with the certificate in testdata/tls/cert.pem: the private key does not match the certificate"},
	} {
		if _, err := LoadKeyPair(c.cert, c.key); err == nil || err.Error() != c.want {
			t.Errorf("LoadKeyPair(%s, %s) = %v, want %s", c.cert, c.key, err, c.want)
		}
	}
}

// TestExampleSecurityBlocks: the commented-out server.tls, server.basic_auth
// and server.trusted_proxies blocks of config.example.yaml are valid once
// uncommented (with files that exist).
func TestExampleSecurityBlocks(t *testing.T) {
	exampleEnv(t)
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	certAbs, _ := filepath.Abs("testdata/tls/cert.pem")
	keyAbs, _ := filepath.Abs("testdata/tls/key.pem")
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	var lines []string
	uncommented := 0
	for _, l := range strings.Split(string(data), "\n") {
		for _, key := range []string{"tls:", "  cert_file:", "  key_file:", "basic_auth:", "  username:", "  password_file:", "trusted_proxies:"} {
			if strings.HasPrefix(l, "  # "+key) {
				l = "  " + strings.TrimPrefix(l, "  # ")
				uncommented++
			}
		}
		l = strings.Replace(l, "/etc/usagebreaker/tls/tls.crt", certAbs, 1)
		l = strings.Replace(l, "/etc/usagebreaker/tls/tls.key", keyAbs, 1)
		l = strings.Replace(l, "/run/secrets/usagebreaker-callback-password", pw, 1)
		lines = append(lines, l)
	}
	if uncommented != 7 {
		t.Fatalf("uncommented %d lines; the example's security blocks changed shape", uncommented)
	}
	rulesText, err := os.ReadFile("../rules/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeTree(t, map[string]string{"config.yaml": strings.Join(lines, "\n"), "rules/example.yaml": string(rulesText)})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	s := cfg.Server
	if s.TLS == nil || s.BasicAuth == nil || s.BasicAuth.Username != "twilio" || s.TrustedProxies == nil {
		t.Errorf("server = %+v", s)
	}
}
