package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"os"
	"strings"
	"text/template"
	"time"
)

// email sends one message to all recipients over SMTP, always upgraded with
// STARTTLS (and the server's certificate verified) before any credential or
// content is sent. A server that does not offer STARTTLS is refused.
type email struct {
	base
	addr, host string
	username   string
	password   string
	from       string
	to         []string
	subject    *template.Template
	roots      *x509.CertPool
	now        func() time.Time
	helo       string
}

func newEmail(b base, s Spec, deps Deps) (Notifier, error) {
	host, _, err := net.SplitHostPort(s.SMTP)
	if err != nil || host == "" {
		return nil, fmt.Errorf("notify: %s: smtp %q is not host:port", s.Name, s.SMTP)
	}
	if _, err := mail.ParseAddress(s.MailFrom); err != nil {
		return nil, fmt.Errorf("notify: %s: from: %w", s.Name, err)
	}
	if len(s.To) == 0 {
		return nil, fmt.Errorf("notify: %s: email needs at least one recipient", s.Name)
	}
	for _, to := range s.To {
		if _, err := mail.ParseAddress(to); err != nil {
			return nil, fmt.Errorf("notify: %s: to %q: %w", s.Name, to, err)
		}
	}
	subj, err := Parse("subject", or(s.Subject, DefaultSubject))
	if err != nil {
		return nil, fmt.Errorf("notify: %s: subject: %w", s.Name, err)
	}
	var roots *x509.CertPool
	if len(s.CAPEM) > 0 {
		roots, err = x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(s.CAPEM) {
			return nil, fmt.Errorf("notify: %s: tls_ca_file holds no PEM certificate", s.Name)
		}
	}
	helo, _ := os.Hostname()
	if helo == "" || strings.ContainsAny(helo, " \r\n") {
		helo = "localhost"
	}
	return &email{base: b, addr: s.SMTP, host: host, username: s.Username, password: s.Password,
		from: s.MailFrom, to: s.To, subject: subj, roots: roots, now: deps.Now, helo: helo}, nil
}

func (n *email) Send(ctx context.Context, ev *Event, _ *Progress) error {
	body, err := n.text(ev)
	if err != nil {
		return err
	}
	subject, err := execute(n.subject, ev)
	if ev.Kind == KindDeletes {
		// The held-deletions page has no incident for a custom subject to name.
		subject, err = ev.Headline, nil
	}
	if err != nil {
		return Permanent(fmt.Errorf("render subject: %w", err))
	}
	msg := n.message(ev, subject, body)
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.deliver(ctx, msg)
}

// message builds the RFC 5322 message: UTF-8 text, quoted-printable, a
// Message-ID stable per event (so a retry that did arrive twice threads as
// one), and no header a data field could break (CR and LF are removed).
func (n *email) message(ev *Event, subject, body string) []byte {
	clean := strings.NewReplacer("\r", " ", "\n", " ")
	var b bytes.Buffer
	hdr := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	hdr("From", n.from)
	hdr("To", strings.Join(n.to, ", "))
	hdr("Subject", mime.QEncoding.Encode("utf-8", clean.Replace(subject)))
	hdr("Date", n.now().UTC().Format(time.RFC1123Z))
	domain := "usagebreaker.invalid"
	if a, err := mail.ParseAddress(n.from); err == nil {
		if _, d, ok := strings.Cut(a.Address, "@"); ok {
			domain = d
		}
	}
	id := ev.ID
	if id == "" {
		var r [8]byte
		_, _ = rand.Read(r[:])
		id = hex.EncodeToString(r[:])
	}
	hdr("Message-ID", fmt.Sprintf("<%s.%s@%s>", clean.Replace(id), n.name, domain))
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", `text/plain; charset="utf-8"`)
	hdr("Content-Transfer-Encoding", "quoted-printable")
	hdr("Auto-Submitted", "auto-generated")
	hdr("X-Usagebreaker-Event", ev.Kind)
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	_, _ = qp.Write([]byte(strings.ReplaceAll(body, "\n", "\r\n")))
	_ = qp.Close()
	b.WriteString("\r\n")
	return b.Bytes()
}

func (n *email) deliver(ctx context.Context, msg []byte) (err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", n.addr)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", n.addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c, err := smtp.NewClient(conn, n.host)
	if err != nil {
		conn.Close()
		return n.classify("greeting", err)
	}
	defer c.Close()
	if err := c.Hello(n.helo); err != nil {
		return n.classify("EHLO", err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return Permanent(fmt.Errorf("smtp %s does not offer STARTTLS; refusing to send mail or credentials in clear text", n.addr))
	}
	if err := c.StartTLS(&tls.Config{ServerName: n.host, RootCAs: n.roots, MinVersion: tls.VersionTLS12}); err != nil {
		return n.classify("STARTTLS", err)
	}
	if n.username != "" {
		if err := c.Auth(smtp.PlainAuth("", n.username, n.password, n.host)); err != nil {
			return n.classify("AUTH", err)
		}
	}
	if err := c.Mail(n.from); err != nil {
		return n.classify("MAIL FROM", err)
	}
	for _, to := range n.to {
		if err := c.Rcpt(to); err != nil {
			return n.classify("RCPT TO "+to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return n.classify("DATA", err)
	}
	if _, err := w.Write(msg); err != nil {
		return n.classify("DATA", err)
	}
	if err := w.Close(); err != nil {
		return n.classify("end of DATA", err)
	}
	_ = c.Quit() // the message is accepted; a failed QUIT changes nothing
	return nil
}

// classify: SMTP 4xx replies and network trouble are worth a retry; 5xx
// replies and certificate problems are not.
func (n *email) classify(step string, err error) error {
	err = fmt.Errorf("smtp %s: %s: %w", n.addr, step, err)
	var tp *textproto.Error
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &tp):
		if tp.Code >= 500 {
			return Permanent(err)
		}
		return err
	case errors.As(err, &cv), errors.As(err, &ua), errors.As(err, &hn):
		return Permanent(err)
	}
	return err
}
