package daemon_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/webhook"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "usagebreaker test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a server certificate for 127.0.0.1 and returns its PEM
// certificate and key.
func (ca *testCA) leaf(t *testing.T, serial int64, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// writeAtomic replaces a file the way cert-manager and kubelet do: write
// aside, then rename over.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// secureEnv is a daemon serving HTTPS callbacks with Basic auth, and a
// simulator that delivers them over HTTPS trusting the test CA.
type secureEnv struct {
	*env
	ca       *testCA
	client   *http.Client // HTTPS, trusting the test CA, no keep-alive
	simLogs  *testenv.Buffer
	password string
	secrets  map[string]string // name -> value that must never be logged
}

const (
	parentToken = "ParentAuthToken0123456789abcdefX"
	adminToken  = "AdminBearerToken-0123456789abcdef"
	password1   = "first-callback-password-0123456789"
	password2   = "second-callback-password-9876543210"
)

func startSecureEnv(t *testing.T, names []string, ruleText string, limit webhook.RejectLimit) *secureEnv {
	t.Helper()
	return startSecureEnvTLS(t, names, ruleText, limit, -1)
}

// startSecureEnvTLS is startSecureEnv with the certificate files checked
// every tlsInterval (negative: on every handshake, and every
// DefaultTLSCheckInterval in the background).
func startSecureEnvTLS(t *testing.T, names []string, ruleText string, limit webhook.RejectLimit, tlsInterval time.Duration) *secureEnv {
	t.Helper()
	se := &secureEnv{ca: newTestCA(t), simLogs: &testenv.Buffer{}, password: password1, secrets: map[string]string{}}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: se.ca.pool}, DisableKeepAlives: true}
	se.client = &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	se.env = startEnvOpts(t, names, ruleText, envOpts{
		instance: "sec",
		simOpts: twiliosim.Options{
			RetryDelay: -1, ParentAuthToken: parentToken,
			// Twilio's callbacks come over HTTPS and verify the certificate.
			CallbackClient: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: se.ca.pool}}},
			Logger:         slog.New(slog.NewJSONHandler(se.simLogs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
		// The API itself is on loopback: plain HTTP is allowed there.
		config: func(c *testenv.Config) {
			c.AuthToken, c.Twilio = "", "auth_token_file: secrets/twilio-token"
			c.PublicURL = "https://" + c.Listen
			c.Server = `tls:
  cert_file: tls/tls.crt
  key_file: tls/tls.key
basic_auth:
  username: twilio
  password_file: secrets/callback-password
trusted_proxies: ["127.0.0.1"]`
			c.AdminTokenFile = "secrets/admin-token"
		},
		setup: func(e *env) {
			for n, a := range e.accounts {
				se.secrets["auth token of "+n] = a.AuthToken
			}
			p := e.sim.Parent()
			se.secrets["parent auth token"] = parentToken
			se.secrets["parent basic auth header"] = base64.StdEncoding.EncodeToString([]byte(p.SID + ":" + parentToken))
			se.secrets["admin token"] = adminToken
			se.secrets["callback password 1"] = password1
			se.secrets["callback password 2"] = password2
			se.secrets["callback basic auth header 1"] = base64.StdEncoding.EncodeToString([]byte("twilio:" + password1))
			se.secrets["callback basic auth header 2"] = base64.StdEncoding.EncodeToString([]byte("twilio:" + password2))

			certPEM, keyPEM := se.ca.leaf(t, 1001, time.Now().Add(24*time.Hour))
			os.MkdirAll(filepath.Join(e.dir, "tls"), 0o755)
			os.MkdirAll(filepath.Join(e.dir, "secrets"), 0o755)
			writeAtomic(t, filepath.Join(e.dir, "tls", "tls.crt"), certPEM)
			writeAtomic(t, filepath.Join(e.dir, "tls", "tls.key"), keyPEM)
			writeAtomic(t, filepath.Join(e.dir, "secrets", "admin-token"), []byte(adminToken+"\n"))
			writeAtomic(t, filepath.Join(e.dir, "secrets", "twilio-token"), []byte(parentToken+"\n"))
			writeAtomic(t, filepath.Join(e.dir, "secrets", "callback-password"), []byte(password1+"\n"))
			e.options = func(o *daemon.Options) {
				o.TLSCheckInterval, o.RejectLimit, o.CallbackAuthGrace = tlsInterval, limit, -1
			}
		},
	})
	return se
}

// call sends a request to the callback listener over HTTPS.
func (se *secureEnv) call(method, path string, form url.Values, hdr map[string]string, user, pass string) (int, http.Header, string) {
	se.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, se.public+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := se.client.Do(req)
	if err != nil {
		se.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// replayAs re-sends a recorded delivery with the given credentials.
func (se *secureEnv) replayAs(d twiliosim.Delivery, user, pass string) int {
	se.t.Helper()
	form := url.Values{}
	for k, v := range d.Params {
		form.Set(k, v)
	}
	u, _ := url.Parse(d.URL)
	code, _, _ := se.call(http.MethodPost, u.Path, form, map[string]string{"X-Twilio-Signature": d.Signature}, user, pass)
	return code
}

// servedSerial connects to the callback listener and returns the serial of
// the certificate it presents (verified against the test CA).
func (se *secureEnv) servedSerial() int64 {
	se.t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(se.public, "https://"), &tls.Config{RootCAs: se.ca.pool})
	if err != nil {
		se.t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func (se *secureEnv) owned() map[string]twiliosim.Trigger {
	out := map[string]twiliosim.Trigger{}
	for _, a := range se.state().Accounts {
		for _, tr := range a.Triggers {
			if strings.HasPrefix(tr.FriendlyName, "usagebreaker:sec:") {
				out[a.FriendlyName+"/"+tr.FriendlyName] = tr
			}
		}
	}
	return out
}

const secRules = `rules:
  - name: spend-daily
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-daily
    accounts:
      include: ["tenant-*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 1000
    action: notify
`

func TestSecureEndToEnd(t *testing.T) {
	names := []string{"tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"}
	se := startSecureEnv(t, names, secRules, webhook.RejectLimit{Burst: 12, Every: time.Hour, MaxClients: 100})
	const owned = 10

	t.Run("triggers are registered with the credentials", func(t *testing.T) {
		got := se.owned()
		if len(got) != owned {
			t.Fatalf("%d owned triggers", len(got))
		}
		for k, tr := range got {
			rule := strings.TrimPrefix(tr.FriendlyName, "usagebreaker:sec:")
			want := "https://twilio:" + password1 + "@" + strings.TrimPrefix(se.public, "https://") + "/twilio/usage-triggers/" + rule
			if tr.CallbackURL != want {
				t.Errorf("%s: %s, want %s", k, tr.CallbackURL, want)
			}
		}
	})

	var trip twiliosim.Delivery
	t.Run("an HTTPS callback with Basic auth suspends", func(t *testing.T) {
		f := se.addUsage("tenant-a", "sms", "10", "50.5")
		if len(f) != 1 {
			t.Fatalf("firings %+v", f)
		}
		ds := se.wait(f)
		trip = ds[len(ds)-1]
		if trip.Status != 200 || trip.BasicAuthUser != "twilio" || !strings.HasPrefix(trip.URL, se.public+"/") {
			t.Fatalf("delivery %+v", trip)
		}
		se.waitFor("tenant-a suspended", func() bool { return se.account("tenant-a").Status == "suspended" })
	})

	t.Run("missing or wrong credentials get 401 and change nothing", func(t *testing.T) {
		before := se.incidentCount()
		victim := trip
		victim.Params = map[string]string{}
		for k, v := range trip.Params {
			victim.Params[k] = v
		}
		for _, c := range [][2]string{{"", ""}, {"twilio", password1 + "x"}, {"twilio", password2}} {
			if code := se.replayAs(victim, c[0], c[1]); code != 401 {
				t.Errorf("credentials %q: %d", c, code)
			}
		}
		code, hdr, _ := se.call(http.MethodPost, "/twilio/usage-triggers/spend-daily", url.Values{"AccountSid": {se.accounts["tenant-b"].SID}}, nil, "", "")
		if code != 401 || hdr.Get("WWW-Authenticate") != `Basic realm="usagebreaker", charset="UTF-8"` {
			t.Errorf("challenge: %d %q", code, hdr.Get("WWW-Authenticate"))
		}
		if after := se.incidentCount(); after != before {
			t.Errorf("incidents %d -> %d", before, after)
		}
		// The right credentials and Twilio's signature (over the URL without them): a duplicate, 200.
		if code := se.replayAs(trip, "twilio", password1); code != 200 {
			t.Errorf("replay with the credentials: %d", code)
		}
		if n := testenv.SuspendWrites(se.account("tenant-a")); n != 1 {
			t.Errorf("%d suspend writes", n)
		}
	})

	t.Run("everything but the callback path is a bare 404", func(t *testing.T) {
		for _, p := range []string{"/", "/metrics", "/twilio/usage-triggers", "/-/healthy"} {
			code, hdr, body := se.call(http.MethodGet, p, nil, nil, "twilio", password1)
			if code != 404 || body != "not found\n" || hdr.Get("Location") != "" {
				t.Errorf("GET %s: %d %q %v", p, code, body, hdr)
			}
		}
		// "OPTIONS *" is not answered by net/http's built-in handler either.
		conn, err := tls.Dial("tcp", strings.TrimPrefix(se.public, "https://"), &tls.Config{RootCAs: se.ca.pool, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("OPTIONS *: %d", resp.StatusCode)
		}
	})

	t.Run("TLS 1.2 at least, with a verified certificate", func(t *testing.T) {
		addr := strings.TrimPrefix(se.public, "https://")
		if c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: se.ca.pool, MaxVersion: tls.VersionTLS11}); err == nil {
			c.Close()
			t.Error("TLS 1.1 accepted")
		}
		if _, err := http.Get(se.public + "/"); err == nil {
			t.Error("a client that does not trust the test CA connected")
		}
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: se.ca.pool, MaxVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("TLS 1.2: %v", err)
		}
		c.Close()
	})

	t.Run("a certificate swapped on disk is served without restart", func(t *testing.T) {
		if s := se.servedSerial(); s != 1001 {
			t.Fatalf("serving serial %d", s)
		}
		// A broken rotation (a key that does not match) keeps the old pair.
		_, otherKey := se.ca.leaf(t, 1002, time.Now().Add(48*time.Hour))
		writeAtomic(t, filepath.Join(se.dir, "tls", "tls.key"), otherKey)
		se.waitFor("the broken pair noticed", func() bool {
			se.servedSerial()
			_, m := se.get("/metrics", false)
			return strings.Contains(m, "\nusagebreaker_tls_certificate_last_reload_successful 0\n")
		})
		if s := se.servedSerial(); s != 1001 {
			t.Fatalf("serving serial %d after a broken rotation", s)
		}
		certPEM, keyPEM := se.ca.leaf(t, 1003, time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC))
		writeAtomic(t, filepath.Join(se.dir, "tls", "tls.key"), keyPEM)
		writeAtomic(t, filepath.Join(se.dir, "tls", "tls.crt"), certPEM)
		se.waitFor("the new certificate served", func() bool { return se.servedSerial() == 1003 })
		se.waitFor("the metric says so", func() bool {
			return se.metric("usagebreaker_tls_certificate_last_reload_successful") == 1
		})
		_, m := se.get("/metrics", false)
		if se.metric("usagebreaker_tls_certificate_last_reload_successful") != 1 || // the sample, not the HELP text
			!strings.Contains(m, fmt.Sprintf("usagebreaker_tls_certificate_expiry_timestamp_seconds %g", float64(time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC).Unix()))) {
			t.Errorf("TLS metrics:\n%s", grepLines(m, "usagebreaker_tls_"))
		}
		// Twilio's next callback is delivered over the new certificate.
		f := se.addUsage("tenant-b", "sms", "10", "60")
		if ds := se.wait(f); ds[len(ds)-1].Status != 200 {
			t.Fatalf("delivery after the swap: %+v", ds)
		}
		se.waitFor("tenant-b suspended", func() bool { return se.account("tenant-b").Status == "suspended" })
		if !strings.Contains(se.logs.String(), "TLS certificate files changed but cannot be used") {
			t.Error("the broken rotation was not logged")
		}
	})

	t.Run("a password change re-registers every URL by update", func(t *testing.T) {
		before := se.owned()
		reqs := se.state().Requests
		writeAtomic(t, filepath.Join(se.dir, "secrets", "callback-password"), []byte(password2+"\n"))
		if code, body := se.post(se.admin, "/-/reload", nil, nil); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		// Suspended tenants (a, b) get the new URL too: else,
		// reactivated after the grace period, their callbacks would get 401.
		se.waitFor("URLs re-registered", func() bool {
			for _, tr := range se.owned() {
				if !strings.Contains(tr.CallbackURL, ":"+password2+"@") {
					return false
				}
			}
			return true
		})
		after := se.owned()
		for k, tr := range before {
			if after[k].SID != tr.SID {
				t.Errorf("%s: trigger %s replaced by %s", k, tr.SID, after[k].SID)
			}
			if !tr.DateCreated.Equal(after[k].DateCreated) || (tr.DateFired == nil) != (after[k].DateFired == nil) {
				t.Errorf("%s: firing state changed: %+v -> %+v", k, tr, after[k])
			}
		}
		now := se.state().Requests
		if now["triggers.create"] != reqs["triggers.create"] || now["triggers.delete"] != reqs["triggers.delete"] ||
			now["triggers.update"]-reqs["triggers.update"] != len(after) {
			t.Errorf("requests before %v, after %v (want %d updates, no create or delete)", reqs, now, len(after))
		}
		// The old password stops working once every trigger has the new one.
		se.waitFor("the old password refused", func() bool { return se.replayAs(trip, "twilio", password1) == 401 })
		f := se.addUsage("tenant-c", "sms", "10", "70")
		if ds := se.wait(f); ds[len(ds)-1].Status != 200 {
			t.Fatalf("delivery with the new password: %+v", ds)
		}
		se.waitFor("tenant-c suspended", func() bool { return se.account("tenant-c").Status == "suspended" })
	})

	t.Run("/config masks every secret", func(t *testing.T) {
		code, body := se.get("/config", false)
		if code != 200 || !strings.Contains(body, "<secret>") {
			t.Fatalf("/config: %d\n%s", code, body)
		}
		for name, v := range se.secrets {
			if strings.Contains(body, v) {
				t.Errorf("/config shows the %s", name)
			}
		}
		for _, want := range []string{"auth_token: <secret>", "password: <secret>", "token: <secret>", "username: twilio", "cert_file: "} {
			if !strings.Contains(body, want) {
				t.Errorf("/config lacks %q:\n%s", want, body)
			}
		}
	})

	t.Run("the admin API checks its token and logs each call", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, se.admin+"/api/v1/incidents", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken[:len(adminToken)-1]+"Y")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("wrong token: %d", resp.StatusCode)
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("right token: %d", resp.StatusCode)
		}
		logs := se.logs.String()
		for _, want := range []string{`"msg":"admin API: refused"`, `"msg":"admin API"`, `"path":"/config"`, `"path":"/-/reload"`} {
			if !strings.Contains(logs, want) {
				t.Errorf("no log line with %s", want)
			}
		}
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `"msg":"admin`) && !strings.Contains(l, `"remote":"127.0.0.1:`) {
				t.Errorf("admin log line without the caller: %s", l)
			}
		}
	})

	t.Run("a flood without credentials is throttled, real callbacks are not", func(t *testing.T) {
		// The flood comes through a trusted proxy (on loopback) that names the client.
		got429 := false
		for i := 0; i < 30; i++ {
			code, hdr, _ := se.call(http.MethodPost, "/twilio/usage-triggers/spend-daily", url.Values{"x": {"1"}},
				map[string]string{"X-Forwarded-For": "203.0.113.66"}, "twilio", "guess")
			switch code {
			case 401:
			case 429:
				got429 = hdr.Get("Retry-After") != ""
			default:
				t.Fatalf("flood request %d: %d", i, code)
			}
		}
		if !got429 {
			t.Fatal("never throttled")
		}
		if !strings.Contains(se.logs.String(), `"msg":"client throttled: too many rejected requests on the callback listener; answering 429 without further detail or logs until it slows down","component":"webhook","client":"203.0.113.66"`) {
			t.Error("the throttled client is not named by X-Forwarded-For from the trusted proxy")
		}
		// Twilio's callbacks from the same client address, with the credentials, still pass.
		if code, _, _ := se.call(http.MethodPost, "/twilio/usage-triggers/spend-daily", url.Values{"AccountSid": {se.accounts["tenant-e"].SID}},
			map[string]string{"X-Forwarded-For": "203.0.113.66"}, "twilio", password2); code != 403 {
			t.Fatalf("a request with the credentials from the throttled client: %d, want the signature check's 403", code)
		}
		f := se.addUsage("tenant-d", "sms", "10", "80")
		if ds := se.wait(f); ds[len(ds)-1].Status != 200 {
			t.Fatalf("a real callback during the flood: %+v", ds)
		}
		for _, want := range se.waitForSamples([]string{`usagebreaker_callbacks_total{outcome="unauthorized"}`, `usagebreaker_callbacks_total{outcome="rate_limited"}`}) {
			t.Errorf("/metrics lacks %s", want)
		}
	})

	t.Run("no secret in any log line", func(t *testing.T) {
		se.waitFor("tenant-d suspended", func() bool { return se.account("tenant-d").Status == "suspended" })
		se.stop()
		daemonLogs, simLogs := se.logs.String(), se.simLogs.String()
		if strings.Count(daemonLogs, "\n") < 50 || strings.Count(simLogs, "\n") < 5 {
			t.Fatalf("suspiciously few log lines: daemon %d, simulator %d", strings.Count(daemonLogs, "\n"), strings.Count(simLogs, "\n"))
		}
		for src, logs := range map[string]string{"daemon": daemonLogs, "simulator": simLogs} {
			for i, line := range strings.Split(logs, "\n") {
				for name, v := range se.secrets {
					if strings.Contains(line, v) {
						t.Errorf("%s log line %d shows the %s: %s", src, i+1, name, line)
					}
				}
			}
		}
		if !strings.Contains(daemonLogs, `"callback_url":"https://twilio:<secret>@`) {
			t.Error("the re-registration was not logged with the password masked")
		}
	})
}

// incidentCount counts incidents through the admin API, with this env's token.
func (se *secureEnv) incidentCount() int {
	se.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, se.admin+"/api/v1/incidents", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		se.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []daemon.IncidentJSON
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		se.t.Fatalf("incidents: %d", resp.StatusCode)
	}
	return len(out)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The certificate files are checked in the background, so a
// broken rotation shows in the metric (and the log) although no client
// connects.
func TestTLSBrokenRotationNoticedWithoutAConnection(t *testing.T) {
	se := startSecureEnvTLS(t, []string{"tenant-a"}, secRules, webhook.RejectLimit{}, 20*time.Millisecond)
	_, otherKey := se.ca.leaf(t, 1002, time.Now().Add(48*time.Hour))
	writeAtomic(t, filepath.Join(se.dir, "tls", "tls.key"), otherKey)
	se.waitFor("the broken pair noticed with no connection", func() bool {
		_, m := se.get("/metrics", false)
		return strings.Contains(m, "\nusagebreaker_tls_certificate_last_reload_successful 0\n")
	})
	se.waitFor("the broken rotation logged", func() bool {
		return strings.Contains(se.logs.String(), "TLS certificate files changed but cannot be used")
	})
	certPEM, keyPEM := se.ca.leaf(t, 1003, time.Now().Add(72*time.Hour))
	writeAtomic(t, filepath.Join(se.dir, "tls", "tls.key"), keyPEM)
	writeAtomic(t, filepath.Join(se.dir, "tls", "tls.crt"), certPEM)
	// e.metric reads the sample line (the HELP text also says "..._successful 1 if").
	se.waitFor("the good pair noticed with no connection", func() bool {
		return se.metric("usagebreaker_tls_certificate_last_reload_successful") == 1
	})
	if s := se.servedSerial(); s != 1003 {
		t.Fatalf("serving serial %d", s)
	}
}
