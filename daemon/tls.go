package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/rules"
)

// DefaultTLSCheckInterval is how often the certificate and key files are
// checked for changes (on a handshake, and in the background for the metrics).
const DefaultTLSCheckInterval = 5 * time.Second

// certReloader serves the callback listener's certificate and re-reads it
// when the files change on disk (cert-manager, a renewal job), without a
// restart. A changed pair that cannot be used (a half-written rotation, a key
// that does not match) is logged once and the last good pair keeps being
// served. The files are read, at most once per interval, and compared by
// content, so renames, symlink swaps (Kubernetes secret volumes) and copies
// that keep the modification time are all seen.
type certReloader struct {
	paths    func() *config.TLS // the config in force (paths may change on reload)
	interval time.Duration      // <= 0: on every handshake
	log      *slog.Logger

	expiry prometheus.Gauge
	lastOK prometheus.Gauge

	checkMu  sync.Mutex // one check at a time (the background watch and a handshake)
	mu       sync.Mutex
	cert     *tls.Certificate
	sum      [sha256.Size]byte // of the files the served pair came from
	failed   string            // the problem last logged, so it is logged once
	checked  time.Time
	checking bool
}

func newCertReloader(paths func() *config.TLS, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) (*certReloader, error) {
	c := &certReloader{paths: paths, interval: interval, log: log,
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_tls_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the certificate the callback listener serves expires (server.tls).",
		}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_tls_certificate_last_reload_successful",
			Help: "1 if the certificate and key files on disk are the ones served; 0 if they changed and cannot be used (the previous pair is still served).",
		}),
	}
	if err := c.check(time.Now()); err != nil {
		return nil, err
	}
	reg.MustRegister(c.expiry, c.lastOK)
	return c, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (c *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	due := !c.checking && (c.interval <= 0 || time.Since(c.checked) >= c.interval)
	if due {
		c.checking = true // one handshake checks; the others serve what there is
	}
	c.mu.Unlock()
	if due {
		_ = c.check(time.Now())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert, nil
}

// watch checks the files every interval until ctx ends, so that the metrics
// and logs follow the files even when no one connects.
func (c *certReloader) watch(ctx context.Context) {
	every := c.interval
	if every <= 0 {
		every = DefaultTLSCheckInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = c.check(time.Now())
		}
	}
}

// check reads the files and swaps in the pair if it changed and is usable.
// The first check's error is returned (a start with an unusable pair fails).
func (c *certReloader) check(now time.Time) error {
	// Serialised: a check that read the files before another swapped in a
	// new pair must not then mark the metric with its stale outcome.
	c.checkMu.Lock()
	defer c.checkMu.Unlock()
	paths := c.paths()
	err := c.reload(paths, now)
	c.mu.Lock()
	c.checked, c.checking = now, false
	first := c.cert == nil
	c.mu.Unlock()
	if err == nil {
		return nil
	}
	if first {
		return fmt.Errorf("server.tls: %w", err)
	}
	c.lastOK.Set(0)
	c.mu.Lock()
	repeat := c.failed == err.Error()
	c.failed = err.Error()
	c.mu.Unlock()
	if !repeat {
		c.log.Error("TLS certificate files changed but cannot be used; still serving the previous certificate",
			"err", err, "cert_file", paths.CertFile, "key_file", paths.KeyFile)
	}
	return err
}

func (c *certReloader) reload(paths *config.TLS, now time.Time) error {
	if paths == nil {
		return errors.New("not configured")
	}
	certPEM, err := rules.ReadFile(paths.CertFile)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", paths.CertFile, err)
	}
	keyPEM, err := rules.ReadFile(paths.KeyFile)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", paths.KeyFile, err)
	}
	h := sha256.New()
	for _, b := range [][]byte{[]byte(paths.CertFile), []byte(paths.KeyFile), certPEM, keyPEM} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	c.mu.Lock()
	same := c.cert != nil && sum == c.sum
	c.mu.Unlock()
	if same {
		c.lastOK.Set(1) // back to what is served (e.g. a broken rotation undone)
		c.mu.Lock()
		c.failed = ""
		c.mu.Unlock()
		return nil
	}
	pair, err := config.ParseKeyPair(certPEM, keyPEM, paths.CertFile, paths.KeyFile)
	if err != nil {
		return err
	}
	leaf := pair.Leaf
	c.mu.Lock()
	replaced := c.cert != nil
	c.cert, c.sum, c.failed = &pair, sum, ""
	c.mu.Unlock()
	c.lastOK.Set(1)
	c.expiry.Set(float64(leaf.NotAfter.Unix()))
	msg := "TLS certificate loaded"
	if replaced {
		msg = "TLS certificate changed on disk; now serving the new one"
	}
	c.log.Info(msg, "subject", leaf.Subject.String(), "dns_names", leaf.DNSNames, "ip_addresses", fmt.Sprint(leaf.IPAddresses),
		"serial", leaf.SerialNumber.Text(16), "not_before", leaf.NotBefore, "not_after", leaf.NotAfter, "cert_file", paths.CertFile)
	switch {
	case now.After(leaf.NotAfter):
		c.log.Error("the TLS certificate has expired: Twilio will refuse to deliver callbacks", "not_after", leaf.NotAfter)
	case now.Before(leaf.NotBefore):
		c.log.Error("the TLS certificate is not valid yet", "not_before", leaf.NotBefore)
	case leaf.NotAfter.Sub(now) < 7*24*time.Hour:
		c.log.Warn("the TLS certificate expires in less than 7 days", "not_after", leaf.NotAfter)
	}
	return nil
}

// callbackTLSConfig is the callback listener's TLS configuration: TLS 1.2 or
// newer with Go's default (modern, AEAD-only for 1.2 with forward secrecy)
// cipher suites and curves; nil when server.tls is not set.
func (d *Daemon) callbackTLSConfig() *tls.Config {
	if d.edge.certs == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: d.edge.certs.GetCertificate,
	}
}

// serveCallbacks serves the callback listener, over TLS when it is configured.
func (d *Daemon) serveCallbacks() error {
	var err error
	if d.cbSrv.TLSConfig != nil {
		err = d.cbSrv.ServeTLS(d.cbLn, "", "")
	} else {
		err = d.cbSrv.Serve(d.cbLn)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("callback listener: %w", err)
	}
	return nil
}

// callbackErrorLog is the callback server's error log. Failed TLS handshakes
// (scanners, clients that do not trust the certificate) go to debug: anyone
// on the internet can make them, and they must not flood the log.
func (d *Daemon) callbackErrorLog() *log.Logger {
	return log.New(&serverLogWriter{log: d.log.With("component", "callback-server")}, "", 0)
}

type serverLogWriter struct{ log *slog.Logger }

func (w *serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(bytes.TrimRight(p, "\n")))
	level := slog.LevelWarn
	if strings.Contains(msg, "TLS handshake error") || strings.Contains(msg, "http2: server: error reading preface") {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}
