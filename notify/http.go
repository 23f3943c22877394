package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// post sends body and classifies the answer: 2xx is delivered; 408, 425,
// 429, 5xx and transport errors are worth retrying; any other status
// (including a redirect, which is not followed) is permanent.
func post(ctx context.Context, c *http.Client, timeout time.Duration, url string, hdr http.Header, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Permanent(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", userAgent())
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", redact(url), errors.Unwrap(err))
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	err = fmt.Errorf("POST %s: HTTP %d: %s", redact(url), resp.StatusCode, strings.TrimSpace(string(snippet)))
	switch s := resp.StatusCode; {
	case s == http.StatusRequestTimeout, s == http.StatusTooEarly, s == http.StatusTooManyRequests, s >= 500:
		return err
	}
	return Permanent(err)
}

// redact keeps a URL's scheme and host only: webhook URLs carry secrets in
// their paths (Slack's do).
func redact(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "<url>"
	}
	host, _, _ := strings.Cut(rest, "/")
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		host = host[i+1:]
	}
	return scheme + "://" + host + "/…"
}

// ---- slack ----

type slack struct {
	base
	client *http.Client
	url    string
}

func newSlack(b base, s Spec, deps Deps) (Notifier, error) {
	if s.WebhookURL == "" {
		return nil, fmt.Errorf("notify: %s: slack needs webhook_url", s.Name)
	}
	return &slack{base: b, client: deps.HTTPClient, url: s.WebhookURL}, nil
}

// slackEscape makes text plain for Slack: a subaccount's friendly name must
// not be able to ping a channel or hide a link.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func (n *slack) Send(ctx context.Context, ev *Event, _ *Progress) error {
	text, err := n.text(ev)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{"text": slackEscape.Replace(text)})
	return post(ctx, n.client, n.timeout, n.url, http.Header{"Content-Type": {"application/json"}}, body)
}

// ---- webhook ----

// Webhook headers.
const (
	HeaderTimestamp = "X-Usagebreaker-Timestamp" // unix seconds when this attempt was sent
	HeaderSignature = "X-Usagebreaker-Signature" // hex HMAC-SHA256 of "{timestamp}.{body}" with the shared secret
	HeaderDelivery  = "X-Usagebreaker-Delivery"  // Event.ID: the same on every retry of one notification
	HeaderEvent     = "X-Usagebreaker-Event"     // incident | guard
)

type webhook struct {
	base
	client *http.Client
	url    string
	secret []byte
	now    func() time.Time
}

func newWebhook(b base, s Spec, deps Deps) (Notifier, error) {
	if s.URL == "" || s.Secret == "" {
		return nil, fmt.Errorf("notify: %s: webhook needs url and secret", s.Name)
	}
	return &webhook{base: b, client: deps.HTTPClient, url: s.URL, secret: []byte(s.Secret), now: deps.Now}, nil
}

// Payload is the JSON body of a webhook notification.
type Payload struct {
	ID       string           `json:"id"`   // Event.ID, also in X-Usagebreaker-Delivery
	Type     string           `json:"type"` // incident | guard | deletes
	Instance string           `json:"instance"`
	Time     time.Time        `json:"time"`
	Headline string           `json:"headline"`
	Text     string           `json:"text"` // the rendered template
	Incident *PayloadIncident `json:"incident"`
	Guard    *PayloadGuard    `json:"guard,omitempty"`
	Deletes  *PayloadDeletes  `json:"deletes,omitempty"`
}

// PayloadIncident is Incident in a webhook body.
type PayloadIncident struct {
	ID              int64     `json:"id"`
	Rule            string    `json:"rule"`
	RuleDescription string    `json:"rule_description,omitempty"`
	AccountSID      string    `json:"account_sid"`
	AccountName     string    `json:"account_name"`
	UsageCategory   string    `json:"usage_category"`
	TriggerBy       string    `json:"trigger_by"`
	Recurring       string    `json:"recurring"`
	Period          string    `json:"period"`
	Value           string    `json:"value"`
	Threshold       string    `json:"threshold"`
	Action          string    `json:"action"`
	DryRun          bool      `json:"dry_run"`
	Outcome         string    `json:"outcome"`
	Detail          string    `json:"detail"`
	Taken           string    `json:"taken"`
	EndCalls        bool      `json:"end_calls"`
	Reactivate      string    `json:"reactivate_command,omitempty"`
	AutoReactivate  string    `json:"auto_reactivate,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
}

// PayloadGuard is Guard in a webhook body.
type PayloadGuard struct {
	MaxSuspensions int    `json:"max_suspensions"`
	Window         string `json:"window"`
	Suspended      int    `json:"suspended"`
	Held           int    `json:"held"`
	Release        string `json:"release"`
}

// PayloadDeletes is Deletes in a webhook body.
type PayloadDeletes struct {
	Held       int      `json:"held"`
	MaxDeletes int      `json:"max_deletes"`
	Rules      []string `json:"rules"`
	Why        string   `json:"why"`
	Release    string   `json:"release"`
}

// NewPayload is the webhook body for ev with its rendered text.
func NewPayload(ev *Event, text string) Payload {
	ev = tidy(ev)
	p := Payload{ID: ev.ID, Type: ev.Kind, Instance: ev.Instance, Time: ev.At.UTC(), Headline: ev.Headline, Text: text}
	if i := ev.Incident; i != nil {
		p.Incident = &PayloadIncident{ID: i.ID, Rule: i.Rule, RuleDescription: i.RuleDescription, AccountSID: i.AccountSID,
			AccountName: i.AccountName, UsageCategory: i.UsageCategory, TriggerBy: i.TriggerBy, Recurring: i.Recurring,
			Period: i.Period, Value: i.Value, Threshold: i.Threshold, Action: i.Action, DryRun: i.DryRun,
			Outcome: i.Outcome, Detail: i.Detail, Taken: i.Taken, EndCalls: i.EndCalls, Reactivate: i.Reactivate,
			AutoReactivate: i.AutoReactivate, CreatedAt: i.CreatedAt.UTC()}
	}
	if g := ev.Guard; g != nil {
		p.Guard = &PayloadGuard{MaxSuspensions: g.MaxSuspensions, Window: g.Window.String(), Suspended: g.Suspended,
			Held: g.Held, Release: g.Release}
	}
	if dl := ev.Deletes; dl != nil {
		p.Deletes = &PayloadDeletes{Held: dl.Held, MaxDeletes: dl.MaxDeletes, Rules: dl.Rules, Why: dl.Why, Release: dl.Release}
	}
	return p
}

func (n *webhook) Send(ctx context.Context, ev *Event, _ *Progress) error {
	text, err := n.text(ev)
	if err != nil {
		return err
	}
	body, err := json.Marshal(NewPayload(ev, text))
	if err != nil {
		return Permanent(err)
	}
	ts := strconv.FormatInt(n.now().Unix(), 10)
	hdr := http.Header{
		"Content-Type":  {"application/json"},
		HeaderTimestamp: {ts},
		HeaderSignature: {Sign(n.secret, ts, body)},
		HeaderDelivery:  {ev.ID},
		HeaderEvent:     {ev.Kind},
	}
	return post(ctx, n.client, n.timeout, n.url, hdr, body)
}

// Sign is the webhook signature: hex HMAC-SHA256 of "{timestamp}.{body}".
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Verify checks a webhook request as a receiver should: the signature over
// the exact body bytes, in constant time, and a timestamp within tolerance
// of now (which bounds replays). It is what the receiver snippet in docs/CONFIG.md does.
func Verify(secret []byte, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return errors.New("bad timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("timestamp outside the tolerance")
	}
	got, err := hex.DecodeString(signature)
	if err != nil {
		return errors.New("bad signature encoding")
	}
	want, _ := hex.DecodeString(Sign(secret, timestamp, body))
	if !hmac.Equal(got, want) {
		return errors.New("signature mismatch")
	}
	return nil
}
