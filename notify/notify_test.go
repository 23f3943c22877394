package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/smtptest"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// receiver is a loopback HTTP server that answers with the statuses queued
// in fail first, then 200, and records every request.
type receiver struct {
	mu   sync.Mutex
	fail []int
	got  []received
	srv  *http.Server
	url  string
}

type received struct {
	status int
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T, fail ...int) *receiver {
	t.Helper()
	rc := &receiver{fail: fail}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		status := http.StatusOK
		if len(rc.fail) > 0 {
			status, rc.fail = rc.fail[0], rc.fail[1:]
		}
		rc.got = append(rc.got, received{status, r.Header.Clone(), body})
		rc.mu.Unlock()
		if status == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", status)
			return
		}
		w.WriteHeader(status)
		io.WriteString(w, http.StatusText(status))
	})}
	go rc.srv.Serve(ln)
	t.Cleanup(func() { rc.srv.Close() })
	rc.url = "http://" + ln.Addr().String() + "/hooks/T000/B000/secretpath"
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

func (rc *receiver) delivered() []received {
	var out []received
	for _, r := range rc.requests() {
		if r.status == http.StatusOK {
			out = append(out, r)
		}
	}
	return out
}

// sendUntil calls Send the way the breaker's executor does: again after a
// retryable error (at most 10 times), never after a permanent one.
func sendUntil(t *testing.T, n Notifier, ev *Event, p *Progress) (attempts int, err error) {
	t.Helper()
	for attempts = 1; attempts <= 10; attempts++ {
		err = n.Send(context.Background(), ev, p)
		if err == nil || IsPermanent(err) {
			return attempts, err
		}
	}
	return attempts, err
}

func incidentEvent() *Event {
	ev := SampleEvent(KindIncident)
	ev.Incident.AccountName = "tenant <!channel> & co"
	ev.Headline = Headline(ev)
	return ev
}

func TestDefaultMessagesCarryTheFacts(t *testing.T) {
	for _, typ := range Types {
		tmpl, err := newTemplates(typ, "", "")
		if err != nil {
			t.Fatal(err)
		}
		b := base{name: "n", typ: typ, tmpl: tmpl}
		ev := SampleEvent(KindIncident)
		text, err := b.text(ev)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"SUSPENDED", "sms-spend-daily", "tenant-07", "AC0123456789abcdef0123456789abcdef",
			"totalprice", "50.01", "50", "suspended the subaccount", "2026-11-24 10:14:03 UTC",
			`usagebreaker reactivate AC0123456789abcdef0123456789abcdef --reason`, "after 24h"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s incident message lacks %q:\n%s", typ, want, text)
			}
		}
		if typ == TypeTwilioSMS && len(text) > 480 {
			t.Errorf("the default SMS is %d characters (3 segments); keep it short:\n%s", len(text), text)
		}
		g, err := b.text(SampleEvent(KindGuard))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"GUARD", "HELD", "20", "tenant-07", "/api/v1/guard/release"} {
			if !strings.Contains(g, want) {
				t.Errorf("%s guard message lacks %q:\n%s", typ, want, g)
			}
		}
	}
}

func TestHeadlines(t *testing.T) {
	ev := SampleEvent(KindIncident)
	for outcome, want := range map[string]string{
		"suspended":         "usagebreaker prod: SUSPENDED tenant-07 (AC0123456789abcdef0123456789abcdef), rule sms-spend-daily",
		"already_suspended": "usagebreaker prod: LIMIT CROSSED (already suspended) tenant-07",
		"dry_run":           "usagebreaker prod: DRY RUN tenant-07",
		"notified":          "usagebreaker prod: LIMIT CROSSED tenant-07",
		"skipped":           "usagebreaker prod: NOT ACTED ON tenant-07",
		"failed":            "usagebreaker prod: SUSPENSION FAILED tenant-07",
	} {
		ev.Incident.Outcome = outcome
		if got := Headline(ev); !strings.HasPrefix(got, want) {
			t.Errorf("%s: %q", outcome, got)
		}
	}
}

func TestCheckTemplates(t *testing.T) {
	if err := Check(KindIncident, `{{.Incident.AccountName}} {{utc .At}} {{upper .Incident.Rule}}`); err != nil {
		t.Errorf("good template: %v", err)
	}
	if err := Check(KindGuard, `{{.Guard.Held}} held`); err != nil {
		t.Errorf("good guard template: %v", err)
	}
	for text, want := range map[string]string{
		`{{.Incident.Acount}}`: `can't evaluate field Acount`,
		`{{.Incident.Rule`:     `unclosed action`,
		`{{nosuch .At}}`:       `function "nosuch" not defined`,
	} {
		if err := Check(KindIncident, text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check(%q) = %v, want %q", text, err, want)
		}
	}
}

func TestSlackRetriesAndEscapes(t *testing.T) {
	rc := newReceiver(t, 500, 503)
	n, err := New(Spec{Name: "ops-slack", Type: TypeSlack, WebhookURL: rc.url}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	attempts, err := sendUntil(t, n, incidentEvent(), nil)
	if err != nil || attempts != 3 {
		t.Fatalf("attempts %d, err %v", attempts, err)
	}
	got := rc.delivered()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	var body struct{ Text string }
	if err := json.Unmarshal(got[0].body, &body); err != nil || got[0].header.Get("Content-Type") != "application/json" {
		t.Fatalf("body %s, %v", got[0].body, err)
	}
	if !strings.Contains(body.Text, "tenant &lt;!channel&gt; &amp; co") || strings.Contains(body.Text, "<!channel>") {
		t.Errorf("not escaped for Slack: %s", body.Text)
	}
	if !strings.Contains(body.Text, "SUSPENDED") {
		t.Errorf("text: %s", body.Text)
	}
}

func TestHTTPErrorsClassified(t *testing.T) {
	for status, permanent := range map[int]bool{400: true, 404: true, 403: true, 302: true, 408: false, 429: false, 500: false, 502: false} {
		rc := newReceiver(t, status)
		n, _ := New(Spec{Name: "s", Type: TypeSlack, WebhookURL: rc.url}, Deps{})
		err := n.Send(context.Background(), incidentEvent(), nil)
		if err == nil || IsPermanent(err) != permanent {
			t.Errorf("HTTP %d: err %v, permanent %v; want permanent %v", status, err, IsPermanent(err), permanent)
		}
		if err != nil && strings.Contains(err.Error(), "secretpath") {
			t.Errorf("the error shows the webhook URL's secret path: %v", err)
		}
	}
	// Nothing listening: retryable.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	n, _ := New(Spec{Name: "s", Type: TypeSlack, WebhookURL: "http://" + addr + "/x"}, Deps{})
	if err := n.Send(context.Background(), incidentEvent(), nil); err == nil || IsPermanent(err) {
		t.Errorf("connection refused: %v", err)
	}
}

func TestWebhookSignedAndVerifiable(t *testing.T) {
	rc := newReceiver(t, 500, 500)
	secret := "whsec-0123456789"
	now := time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)
	n, err := New(Spec{Name: "siem", Type: TypeWebhook, URL: rc.url, Secret: secret}, Deps{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ev := incidentEvent()
	if attempts, err := sendUntil(t, n, ev, nil); err != nil || attempts != 3 {
		t.Fatalf("attempts %d, err %v", attempts, err)
	}
	reqs := rc.requests()
	if len(reqs) != 3 || len(rc.delivered()) != 1 {
		t.Fatalf("%d requests, %d delivered", len(reqs), len(rc.delivered()))
	}
	for _, r := range reqs {
		// What a receiver does: verify over the raw body, with a tolerance.
		ts, sig := r.header.Get(HeaderTimestamp), r.header.Get(HeaderSignature)
		if err := Verify([]byte(secret), ts, sig, r.body, now.Add(time.Minute), 5*time.Minute); err != nil {
			t.Errorf("receiver cannot verify: %v", err)
		}
		if r.header.Get(HeaderDelivery) != ev.ID || r.header.Get(HeaderEvent) != KindIncident {
			t.Errorf("headers %v", r.header)
		}
	}
	last := reqs[2]
	ts, sig := last.header.Get(HeaderTimestamp), last.header.Get(HeaderSignature)
	if ts != fmt.Sprint(now.Unix()) {
		t.Errorf("timestamp %q", ts)
	}
	for name, err := range map[string]error{
		"wrong secret":  Verify([]byte("other"), ts, sig, last.body, now, time.Minute),
		"altered body":  Verify([]byte(secret), ts, sig, append([]byte(" "), last.body...), now, time.Minute),
		"too old":       Verify([]byte(secret), ts, sig, last.body, now.Add(10*time.Minute), 5*time.Minute),
		"bad signature": Verify([]byte(secret), ts, "zz", last.body, now, time.Minute),
		"no timestamp":  Verify([]byte(secret), "", sig, last.body, now, time.Minute),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	var p Payload
	if err := json.Unmarshal(last.body, &p); err != nil {
		t.Fatal(err)
	}
	if p.ID != ev.ID || p.Type != "incident" || p.Incident == nil || p.Incident.AccountSID != ev.Incident.AccountSID ||
		p.Incident.Value != "50.01" || p.Incident.Threshold != "50" || p.Incident.Outcome != "suspended" ||
		!strings.Contains(p.Incident.Reactivate, "usagebreaker reactivate") || !strings.Contains(p.Text, "SUSPENDED") || p.Guard != nil {
		t.Errorf("payload = %+v", p)
	}
}

func startSim(t *testing.T) (*twiliosim.Sim, twilioapi.API) {
	t.Helper()
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: sim}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); sim.Close() })
	p := sim.Parent()
	api, err := twilioapi.New(twilioapi.Options{AccountSID: p.SID, AuthToken: p.AuthToken, BaseURL: "http://" + ln.Addr().String(),
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return sim, api
}

func TestSMSThroughTheMessagesAPI(t *testing.T) {
	sim, api := startSim(t)
	if _, err := sim.AddFault(twiliosim.Fault{Path: `/Messages\.json$`, Method: "POST", Status: 500, Times: 2}); err != nil {
		t.Fatal(err)
	}
	n, err := New(Spec{Name: "oncall-sms", Type: TypeTwilioSMS, From: "+15005550006", To: []string{"+15558675310", "+15558675311"}}, Deps{API: api})
	if err != nil {
		t.Fatal(err)
	}
	p := ParseProgress("")
	attempts, err := sendUntil(t, n, incidentEvent(), p)
	if err != nil || attempts != 3 {
		t.Fatalf("attempts %d, err %v", attempts, err)
	}
	msgs := sim.State().Messages
	if len(msgs) != 2 || msgs[0].To != "+15558675310" || msgs[1].To != "+15558675311" {
		t.Fatalf("messages = %+v", msgs)
	}
	if msgs[0].AccountSID != sim.Parent().SID || msgs[0].From != "+15005550006" || !strings.Contains(msgs[0].Body, "SUSPENDED") {
		t.Errorf("message = %+v", msgs[0])
	}
	if p.String() != "+15558675310\n+15558675311" {
		t.Errorf("progress %q", p.String())
	}
	// Everything already sent: a repeat sends nothing.
	if err := n.Send(context.Background(), incidentEvent(), p); err != nil || len(sim.State().Messages) != 2 {
		t.Errorf("repeat: %v, %d messages", err, len(sim.State().Messages))
	}
}

// fakeSMS fails chosen recipients.
type fakeSMS struct {
	twilioapi.API
	mu   sync.Mutex
	sent []string
	errs map[string][]error
}

func (f *fakeSMS) SendMessage(ctx context.Context, m twilioapi.Message) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if errs := f.errs[m.To]; len(errs) > 0 {
		f.errs[m.To] = errs[1:]
		return "", errs[0]
	}
	f.sent = append(f.sent, m.To)
	return "SM1", nil
}

func TestSMSPartialFailureResumes(t *testing.T) {
	api := &fakeSMS{errs: map[string][]error{
		"+2": {&twilioapi.Error{Operation: "messages.create", Status: 503}},
		"+3": {&twilioapi.Error{Operation: "messages.create", Status: 400, Code: 21211, Message: "invalid To"}},
	}}
	n, err := New(Spec{Name: "sms", Type: TypeTwilioSMS, MessagingServiceSID: "MG" + strings.Repeat("0", 32), To: []string{"+1", "+2", "+3"}}, Deps{API: api})
	if err != nil {
		t.Fatal(err)
	}
	p := ParseProgress("")
	err = n.Send(context.Background(), incidentEvent(), p)
	if err == nil || IsPermanent(err) || !p.Changed() || p.String() != "+1" {
		t.Fatalf("first: %v, progress %q", err, p)
	}
	// The executor stores p and retries with it.
	p = ParseProgress(p.String())
	err = n.Send(context.Background(), incidentEvent(), p)
	if !IsPermanent(err) || !strings.Contains(err.Error(), "+3") {
		t.Fatalf("second: %v", err)
	}
	if strings.Join(api.sent, ",") != "+1,+2" {
		t.Errorf("sent %v: +1 must get exactly one message", api.sent)
	}
}

func TestSMSBodyCapped(t *testing.T) {
	api := &capture{}
	n, _ := New(Spec{Name: "sms", Type: TypeTwilioSMS, From: "+1", To: []string{"+2"},
		Template: strings.Repeat("é", 2000)}, Deps{API: api})
	ev := SampleEvent(KindIncident)
	if err := n.Send(context.Background(), ev, nil); err != nil {
		t.Fatal(err)
	}
	if got := len([]rune(api.body)); got != MaxSMSBody {
		t.Errorf("body of %d characters", got)
	}
}

type capture struct {
	twilioapi.API
	body string
}

func (c *capture) SendMessage(ctx context.Context, m twilioapi.Message) (string, error) {
	c.body = m.Body
	return "SM1", nil
}

func startSMTP(t *testing.T, opts smtptest.Options) *smtptest.Server {
	t.Helper()
	s, err := smtptest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestEmailOverSTARTTLS(t *testing.T) {
	srv := startSMTP(t, smtptest.Options{Username: "breaker", Password: "pw-123"})
	srv.FailNext(2, 451)
	n, err := New(Spec{Name: "ops-mail", Type: TypeEmail, SMTP: srv.Addr, Username: "breaker", Password: "pw-123",
		MailFrom: "breaker@example.com", To: []string{"ops@example.com", "oncall@example.com"}, CAPEM: srv.CAPEM}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ev := incidentEvent()
	attempts, err := sendUntil(t, n, ev, nil)
	if err != nil || attempts != 3 {
		t.Fatalf("attempts %d, err %v\n%s", attempts, err, strings.Join(srv.Log(), "\n"))
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if !m.TLS || m.AuthUser != "breaker" || m.From != "breaker@example.com" || strings.Join(m.To, ",") != "ops@example.com,oncall@example.com" {
		t.Errorf("message = %+v", m)
	}
	h, err := smtptest.Reader(m).ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.Get("Subject"), "SUSPENDED") || h.Get("Message-Id") != "<"+ev.ID+".ops-mail@example.com>" ||
		h.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Errorf("headers = %v", h)
	}
	if !strings.Contains(m.Data, "AC0123456789abcdef0123456789abcdef") || !strings.Contains(m.Data, "usagebreaker reactivate") {
		t.Errorf("body:\n%s", m.Data)
	}
	// The credentials were sent only after STARTTLS.
	log := strings.Join(srv.Log(), "\n")
	if i, j := strings.Index(log, "STARTTLS"), strings.Index(log, "AUTH"); i < 0 || j < i {
		t.Errorf("AUTH before STARTTLS:\n%s", log)
	}
}

func TestEmailRefusals(t *testing.T) {
	ev := incidentEvent()
	spec := func(s *smtptest.Server) Spec {
		return Spec{Name: "m", Type: TypeEmail, SMTP: s.Addr, MailFrom: "b@example.com", To: []string{"o@example.com"}, CAPEM: s.CAPEM}
	}

	plain := startSMTP(t, smtptest.Options{NoSTARTTLS: true})
	n, _ := New(spec(plain), Deps{})
	if err := n.Send(context.Background(), ev, nil); !IsPermanent(err) || !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("no STARTTLS: %v", err)
	}
	if len(plain.Messages()) != 0 {
		t.Error("a message went out in clear text")
	}

	rejecting := startSMTP(t, smtptest.Options{})
	rejecting.FailNext(1, 550)
	n, _ = New(spec(rejecting), Deps{})
	if err := n.Send(context.Background(), ev, nil); !IsPermanent(err) {
		t.Errorf("550: %v", err)
	}

	untrusted := startSMTP(t, smtptest.Options{})
	s := spec(untrusted)
	s.CAPEM = nil // only the system roots: the test CA is not among them
	n, _ = New(s, Deps{})
	var cv *x509Error
	if err := n.Send(context.Background(), ev, nil); !IsPermanent(err) || errors.As(err, &cv) {
		t.Errorf("untrusted certificate: %v", err)
	}

	auth := startSMTP(t, smtptest.Options{Username: "u", Password: "right"})
	s = spec(auth)
	s.Username, s.Password = "u", "wrong"
	n, _ = New(s, Deps{})
	if err := n.Send(context.Background(), ev, nil); !IsPermanent(err) || !strings.Contains(err.Error(), "535") {
		t.Errorf("bad password: %v", err)
	}

	if _, err := New(Spec{Name: "m", Type: TypeEmail, SMTP: "nohost", MailFrom: "b@example.com", To: []string{"o@example.com"}}, Deps{}); err == nil {
		t.Error("smtp without a port accepted")
	}
	if _, err := New(Spec{Name: "m", Type: TypeEmail, SMTP: "h:25", MailFrom: "b@example.com", To: []string{"o@example.com"}, CAPEM: []byte("x")}, Deps{}); err == nil {
		t.Error("a CA file without certificates accepted")
	}
}

// x509Error is a type no error here is; it keeps errors.As honest above.
type x509Error struct{}

func (*x509Error) Error() string { return "" }

func TestProgressRoundTrip(t *testing.T) {
	p := ParseProgress("")
	if p.Done("a") || p.Changed() {
		t.Fatal("empty progress")
	}
	p.Mark("a")
	p.Mark("b")
	p.Mark("a")
	q := ParseProgress(p.String())
	if !q.Done("a") || !q.Done("b") || q.Done("c") || q.Changed() || q.String() != "a\nb" {
		t.Errorf("round trip: %q", q.String())
	}
	var nilp *Progress
	nilp.Mark("x")
	if nilp.Done("x") || nilp.String() != "" {
		t.Error("nil progress")
	}
}
