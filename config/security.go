package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/rules"
)

// TLS is server.tls: the callback listener serves HTTPS itself with this
// certificate and key, re-read when they change on disk.
type TLS struct {
	CertFile string `yaml:"cert_file"` // absolute after loading; PEM, leaf first, then intermediates
	KeyFile  string `yaml:"key_file"`  // absolute after loading; PEM private key
}

// BasicAuth is server.basic_auth: the credentials the reconciler embeds in
// every owned trigger's CallbackUrl and the callback listener requires.
type BasicAuth struct {
	Username string `yaml:"username"`
	Password Secret `yaml:"password"` // or password_file
}

// TrustedProxies is server.trusted_proxies: the addresses (CIDR prefixes) of
// reverse proxies whose X-Forwarded-For names the real client, for the
// callback listener's per-client rate limit. A nil *TrustedProxies trusts none.
type TrustedProxies struct {
	Prefixes []netip.Prefix
}

// Contains reports whether addr is one of the trusted proxies.
func (p *TrustedProxies) Contains(addr netip.Addr) bool {
	if p == nil {
		return false
	}
	addr = addr.Unmap()
	for _, pfx := range p.Prefixes {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

// MarshalYAML shows the prefixes as strings (for /config).
func (p *TrustedProxies) MarshalYAML() (any, error) {
	out := make([]string, 0, len(p.Prefixes))
	for _, pfx := range p.Prefixes {
		out = append(out, pfx.String())
	}
	return out, nil
}

// The server keys this file parses (see serverSecurity).
var securityServerKeys = []string{"tls", "basic_auth", "allow_insecure_public_url", "trusted_proxies"}

// Limits on the Basic auth credentials. They travel inside the registered
// CallbackUrl (https://user:pass@host/...), so they are restricted to the
// characters a URL's userinfo carries without percent-encoding (RFC 3986
// "unreserved"): whether Twilio decodes percent-escapes there is unknown.
const (
	MinCallbackPasswordLen = 16
	MaxCallbackPasswordLen = 256
	MaxCallbackUsernameLen = 64
)

var userinfoRE = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)

// serverSecurity parses server.tls, server.basic_auth,
// server.allow_insecure_public_url and server.trusted_proxies, and checks that
// server.public_url is not plain HTTP on a public host unless allowed. It runs
// after server() has parsed public_url.
func (l *loader) serverSecurity(m *strict.Map) {
	d, s := l.d, &l.cfg.Server

	allowInsecure := false
	if av := m.Get("allow_insecure_public_url"); av.Present() {
		b, ok := d.Bool(av)
		allowInsecure = b || !ok // a malformed value is reported on its own, once
		s.AllowInsecurePublicURL = b
	}

	tlsV := m.Get("tls")
	if tlsV.Written() && (!tlsV.Present() || emptyMapping(tlsV)) {
		d.Errorf(tlsV, "is empty: give cert_file and key_file, or remove server.tls")
	} else if tlsV.Present() {
		s.TLS = l.tls(d.Map(tlsV, []string{"cert_file", "key_file"}))
	}

	baV := m.Get("basic_auth")
	if baV.Written() && (!baV.Present() || emptyMapping(baV)) {
		d.Errorf(baV, "is empty: give username and password (or password_file), or remove server.basic_auth")
	} else if baV.Present() {
		s.BasicAuth = l.basicAuth(d.Map(baV, []string{"username", "password", "password_file"}))
	}

	l.trustedProxies(m.Get("trusted_proxies"))

	// public_url: plain HTTP only on loopback or when the operator says so.
	pv := m.Get("public_url")
	u, err := url.Parse(s.PublicURL)
	if s.PublicURL == "" || err != nil || u.Scheme != "http" {
		return
	}
	switch {
	case tlsV.Present():
		d.Errorf(pv, "%q is http://, but server.tls makes the callback listener speak only HTTPS; use https://", s.PublicURL)
	case !IsLoopbackHost(u.Hostname()) && !allowInsecure:
		d.Errorf(pv, "%q is plain HTTP on a non-loopback host: Twilio would send every callback (and the "+
			"server.basic_auth password) unencrypted, readable and replayable by anyone on the path; use an "+
			"https:// URL (TLS at your ingress, or server.tls), or set server.allow_insecure_public_url: true "+
			"to accept that risk", s.PublicURL)
	}
}

// emptyMapping reports whether v is written as "{}".
func emptyMapping(v strict.Value) bool {
	return v.Node != nil && v.Node.Kind == yaml.MappingNode && len(v.Node.Content) == 0
}

func (l *loader) tls(m *strict.Map) *TLS {
	d := l.d
	certV, keyV := m.Get("cert_file"), m.Get("key_file")
	certGiven, cert, certOK := l.tlsPath(certV)
	keyGiven, key, keyOK := l.tlsPath(keyV)
	if !certOK || !keyOK {
		return nil
	}
	certPEM, err := rules.ReadFile(cert)
	if err != nil {
		d.Errorf(certV, "cannot read %q: %v", certGiven, err)
		return nil
	}
	keyPEM, err := rules.ReadFile(key)
	if err != nil {
		d.Errorf(keyV, "cannot read %q: %v", keyGiven, err)
		return nil
	}
	if _, err := parseCertPEM(certPEM); err != nil {
		d.Errorf(certV, "%q %v", certGiven, err)
		return nil
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		d.Errorf(keyV, "cannot use %q with the certificate in %q: %s", keyGiven, certGiven, keyPairReason(err))
		return nil
	}
	return &TLS{CertFile: cert, KeyFile: key}
}

// tlsPath returns a required file path as given and absolute (relative paths
// are relative to the config file's directory).
func (l *loader) tlsPath(v strict.Value) (given, abs string, ok bool) {
	d := l.d
	p, ok := d.String(v)
	switch {
	case !ok:
		if !v.Present() {
			d.Required(v)
		}
		return "", "", false
	case p == "":
		d.Errorf(v, "must not be empty")
		return "", "", false
	}
	abs = p
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(l.absDir, abs)
	}
	return p, filepath.Clean(abs), true
}

func (l *loader) basicAuth(m *strict.Map) *BasicAuth {
	d := l.d
	ba := &BasicAuth{}
	ok := true
	uv := m.Get("username")
	if user, present := d.String(uv); present {
		if len(user) > MaxCallbackUsernameLen || !userinfoRE.MatchString(user) {
			d.Errorf(uv, "%q must be 1 to %d characters of A-Z, a-z, 0-9 and -._~ (it is sent inside the callback URL)",
				user, MaxCallbackUsernameLen)
			ok = false
		}
		ba.Username = user
	} else {
		if !uv.Present() {
			d.Required(uv)
		}
		ok = false
	}

	pw, used, st := l.secret(m, "password", "password_file")
	switch {
	case st == secretAbsent:
		d.RequiredOr(m.Get("password"), " (or server.basic_auth.password_file)")
		ok = false
	case st == secretBad:
		ok = false
	case len(pw) < MinCallbackPasswordLen || len(pw) > MaxCallbackPasswordLen || !userinfoRE.MatchString(pw.Reveal()):
		// Never repeat the value: it is a secret.
		d.Errorf(used, "must be %d to %d characters of A-Z, a-z, 0-9 and -._~ (it is sent inside the callback URL; "+
			"generate one with: openssl rand -hex 32)", MinCallbackPasswordLen, MaxCallbackPasswordLen)
		ok = false
	default:
		ba.Password = pw
	}
	if !ok {
		return nil
	}
	return ba
}

func (l *loader) trustedProxies(v strict.Value) {
	d := l.d
	items, ok := d.List(v)
	if !ok {
		return
	}
	tp := &TrustedProxies{}
	for _, it := range items {
		s, ok := d.String(it)
		if !ok {
			if !it.Present() {
				d.Errorf(it, "must be a string, not null")
			}
			continue
		}
		pfx, err := parsePrefix(strings.TrimSpace(s))
		if err != nil {
			d.Errorf(it, "%q is not an IP address or CIDR prefix (like 10.0.0.0/8 or 192.0.2.7)", s)
			continue
		}
		tp.Prefixes = append(tp.Prefixes, pfx)
	}
	if len(tp.Prefixes) > 0 {
		l.cfg.Server.TrustedProxies = tp
	}
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// checkAPIBaseURLScheme refuses plain HTTP to anything but loopback: the
// parent account's auth token goes in every request's Authorization header.
func checkAPIBaseURLScheme(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || IsLoopbackHost(u.Hostname()) {
		return ""
	}
	return fmt.Sprintf("%q is plain HTTP: the parent account's auth token would cross the network unencrypted; "+
		"use https:// (http:// is allowed only for a loopback host, such as the simulator on 127.0.0.1)", s)
}

// IsLoopbackHost reports whether a URL's host (without port or brackets) is
// "localhost" or a loopback IP address (127.0.0.0/8, ::1).
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// ParseKeyPair reads a PEM certificate chain and private key (the contents
// of certFile and keyFile, named in errors) and checks that they belong
// together. Errors never contain key material.
func ParseKeyPair(certPEM, keyPEM []byte, certFile, keyFile string) (tls.Certificate, error) {
	if _, err := parseCertPEM(certPEM); err != nil {
		return tls.Certificate{}, fmt.Errorf("%s %w", certFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cannot use %s with the certificate in %s: %s", keyFile, certFile, keyPairReason(err))
	}
	return pair, nil
}

var errNoCert = errors.New("holds no PEM certificate")

// parseCertPEM parses the first certificate of a PEM chain.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errNoCert
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("holds a certificate that cannot be parsed: %v", err)
		}
		return c, nil
	}
}

// keyPairReason shortens crypto/tls's errors, which are already free of key
// material, to a stable reason.
func keyPairReason(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not match"):
		return "the private key does not match the certificate"
	case strings.Contains(msg, "failed to find any PEM data in key input"),
		strings.Contains(msg, "failed to find PEM block with type ending in \"PRIVATE KEY\""):
		return "no PEM private key found"
	case strings.Contains(msg, "rather than a key"):
		return "it holds a certificate, not a private key"
	case strings.Contains(msg, "failed to parse private key"):
		return "the private key cannot be parsed"
	}
	return strconv.Quote(msg)
}
