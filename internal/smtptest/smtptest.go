// Package smtptest is a small, real SMTP server on loopback for tests: EHLO,
// STARTTLS (with a certificate from a CA it makes up, so a client can trust
// exactly that CA), AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT. It records
// every accepted message and can refuse the next N transactions with a
// temporary error, as a real server under load does.
package smtptest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// Message is one accepted message.
type Message struct {
	From     string
	To       []string
	Data     string // as received, dot-unstuffed, CRLF line ends
	AuthUser string // "" if the client did not authenticate
	TLS      bool   // the transaction ran after STARTTLS
}

// Options configure a Server.
type Options struct {
	// Username and Password, when set, are required (AUTH PLAIN, only after STARTTLS).
	Username, Password string
	// NoSTARTTLS makes the server not offer STARTTLS.
	NoSTARTTLS bool
}

// Server is a running test SMTP server.
type Server struct {
	Addr  string // host:port on loopback
	CAPEM []byte // the CA that signed the server's certificate (for 127.0.0.1 and localhost)

	opts Options
	ln   net.Listener
	tls  *tls.Config
	wg   sync.WaitGroup

	mu       sync.Mutex
	messages []Message
	failMail int // refuse this many more MAIL commands with failCode
	failCode int // 451 by default
	sessions int // connections accepted
	log      []string
}

// Start starts a server on 127.0.0.1; Close stops it.
func Start(opts Options) (*Server, error) {
	caPEM, cert, err := makeCert()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: ln.Addr().String(), CAPEM: caPEM, opts: opts, ln: ln,
		tls: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// FailNext makes the next n MAIL FROM commands fail with code (4xx: the
// client should retry; 5xx: it should not).
func (s *Server) FailNext(n, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failMail, s.failCode = n, code
}

// Messages returns the accepted messages.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Sessions is how many connections the server accepted.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// Log is every command the server received (AUTH payloads hidden).
func (s *Server) Log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// Close stops the server and waits for its connections.
func (s *Server) Close() {
	s.ln.Close()
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.sessions++
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			s.session(c)
		}()
	}
}

type session struct {
	tp       *textproto.Conn
	tls      bool
	authUser string
	from     string
	to       []string
}

func (s *Server) session(c net.Conn) {
	ss := &session{tp: textproto.NewConn(c)}
	reply := func(code int, msg string) bool { return ss.tp.PrintfLine("%d %s", code, msg) == nil }
	if !reply(220, "smtptest ESMTP") {
		return
	}
	for {
		line, err := ss.tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		s.mu.Lock()
		if verb == "AUTH" {
			s.log = append(s.log, "AUTH ...")
		} else {
			s.log = append(s.log, line)
		}
		s.mu.Unlock()
		switch verb {
		case "EHLO", "HELO":
			lines := []string{"smtptest"}
			if !ss.tls && !s.opts.NoSTARTTLS {
				lines = append(lines, "STARTTLS")
			}
			if ss.tls && s.opts.Username != "" {
				lines = append(lines, "AUTH PLAIN")
			}
			lines = append(lines, "8BITMIME")
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				if ss.tp.PrintfLine("250%s%s", sep, l) != nil {
					return
				}
			}
		case "STARTTLS":
			if ss.tls || s.opts.NoSTARTTLS {
				reply(503, "STARTTLS not available")
				continue
			}
			if !reply(220, "go ahead") {
				return
			}
			tc := tls.Server(c, s.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			c = tc
			ss = &session{tp: textproto.NewConn(tc), tls: true}
		case "AUTH":
			mech, payload, _ := strings.Cut(arg, " ")
			if !ss.tls || !strings.EqualFold(mech, "PLAIN") || s.opts.Username == "" {
				reply(504, "AUTH PLAIN only, after STARTTLS")
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(payload)
			parts := strings.Split(string(dec), "\x00")
			if err != nil || len(parts) != 3 || parts[1] != s.opts.Username || parts[2] != s.opts.Password {
				reply(535, "5.7.8 authentication failed")
				continue
			}
			ss.authUser = parts[1]
			reply(235, "2.7.0 authenticated")
		case "MAIL":
			if s.opts.Username != "" && ss.authUser == "" {
				reply(530, "5.7.0 authentication required")
				continue
			}
			s.mu.Lock()
			fail, code := s.failMail > 0, s.failCode
			if fail {
				s.failMail--
			}
			s.mu.Unlock()
			if fail {
				if code == 0 {
					code = 451
				}
				reply(code, fmt.Sprintf("%d.3.0 try again later", code/100))
				continue
			}
			ss.from, ss.to = addr(arg), nil
			reply(250, "ok")
		case "RCPT":
			if ss.from == "" {
				reply(503, "MAIL first")
				continue
			}
			ss.to = append(ss.to, addr(arg))
			reply(250, "ok")
		case "DATA":
			if len(ss.to) == 0 {
				reply(503, "RCPT first")
				continue
			}
			if !reply(354, "end with <CRLF>.<CRLF>") {
				return
			}
			lines, err := ss.tp.ReadDotLines()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.messages = append(s.messages, Message{From: ss.from, To: ss.to, Data: strings.Join(lines, "\r\n"),
				AuthUser: ss.authUser, TLS: ss.tls})
			s.mu.Unlock()
			ss.from, ss.to = "", nil
			reply(250, "queued")
		case "RSET":
			ss.from, ss.to = "", nil
			reply(250, "ok")
		case "NOOP":
			reply(250, "ok")
		case "QUIT":
			reply(221, "bye")
			return
		default:
			reply(502, "not implemented")
		}
	}
}

// addr takes the address out of "FROM:<a@b> SIZE=1" or "TO:<a@b>".
func addr(arg string) string {
	_, rest, _ := strings.Cut(arg, ":")
	rest = strings.TrimSpace(rest)
	if i := strings.IndexByte(rest, '>'); strings.HasPrefix(rest, "<") && i > 0 {
		return rest[1:i]
	}
	return rest
}

// makeCert makes a CA and a server certificate for 127.0.0.1 and localhost.
func makeCert() (caPEM []byte, cert tls.Certificate, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smtptest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, cert, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "smtptest"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, cert, err
	}
	cert, err = tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return nil, cert, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), cert, nil
}

// Reader is for tests that want to read a message's headers.
func Reader(m Message) *textproto.Reader {
	return textproto.NewReader(bufio.NewReader(strings.NewReader(m.Data + "\r\n")))
}
