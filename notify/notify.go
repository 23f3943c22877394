// Package notify tells people about incidents: by SMS through the parent
// account's Messages API (twilio_sms), a Slack incoming webhook (slack), a
// signed JSON POST (webhook) or e-mail over SMTP with STARTTLS (email).
//
// A Notifier sends one Event. It does not retry: the breaker runs every
// notification as a durable action and retries it with backoff, so each
// notifier hears about each incident once. Errors say whether trying again
// can help (see Permanent).
package notify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/version"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Notifier types (config notifiers[].type).
const (
	TypeTwilioSMS = "twilio_sms"
	TypeSlack     = "slack"
	TypeWebhook   = "webhook"
	TypeEmail     = "email"
)

// Types lists the notifier types.
var Types = []string{TypeTwilioSMS, TypeSlack, TypeWebhook, TypeEmail}

// Event kinds.
const (
	KindIncident = "incident" // a trip and what was done about it
	KindGuard    = "guard"    // the guard started holding suspensions
	KindDeletes  = "deletes"  // a reconcile held trigger deletions (reconcile.max_deletes, allow_disarm)
)

// Event is what a notification is about. Templates see it as "." (see
// Template for the fields).
type Event struct {
	Kind     string // KindIncident | KindGuard
	ID       string // stable across retries: "{instance}-{kind}-{incident id}"; receivers can dedupe on it
	Instance string
	At       time.Time // when it happened (UTC)
	Headline string    // one line: what happened, to whom
	Incident *Incident // the incident (for a guard event: the first held one)
	Guard    *Guard    // nil unless Kind is KindGuard
	Deletes  *Deletes  // nil unless Kind is KindDeletes
}

// Deletes says which trigger deletions a reconcile held, for a deletes event.
type Deletes struct {
	Held       int      // owned triggers the reconcile would delete
	MaxDeletes int      // reconcile.max_deletes
	Rules      []string // the rules whose triggers would go (no longer wanted, or matching fewer subaccounts)
	Why        string   // what held them
	Release    string   // how to let them go
}

// Incident is an incident as notifications show it.
type Incident struct {
	ID              int64
	Rule            string
	RuleDescription string
	AccountSID      string
	AccountName     string
	UsageCategory   string
	TriggerBy       string // count | usage | price
	Recurring       string
	Period          string // e.g. "daily:2026-11-24", "daily:2026-11-24#2" after a re-arm
	Value           string // the value that crossed
	Threshold       string // the trigger value it crossed
	Action          string // the rule's action: suspend | notify
	DryRun          bool
	Outcome         string // suspended | already_suspended | dry_run | notified | skipped | failed | held
	Detail          string
	Taken           string // the action taken, or why none
	EndCalls        bool   // in-progress calls are ended after the suspension
	// Reactivate is the command that reactivates the subaccount ("" unless
	// the breaker suspended it).
	Reactivate string
	// AutoReactivate says when the rule's policy reactivates it, if it does.
	AutoReactivate string
	CreatedAt      time.Time
}

// Guard is the state of the blast-radius guard for a guard event.
type Guard struct {
	MaxSuspensions int
	Window         time.Duration
	Suspended      int    // suspensions in the window when it tripped
	Held           int    // suspensions held now
	Release        string // how to release them
}

// Notifier sends events to one destination.
type Notifier interface {
	Name() string
	Type() string
	// Send delivers ev once. Parts already delivered (a multi-recipient SMS)
	// are in p, and Send adds the parts it delivers, so a retry does not
	// repeat them. A nil error means delivered; see Permanent for errors.
	Send(ctx context.Context, ev *Event, p *Progress) error
}

// permanentError marks an error that a retry cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that trying again cannot fix (a 4xx answer, a
// rejected recipient, a certificate that does not verify).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Progress records the parts of a multi-part send that were delivered.
type Progress struct {
	done    []string
	changed bool
}

// ParseProgress reads a Progress saved with String.
func ParseProgress(s string) *Progress {
	p := &Progress{}
	for _, part := range strings.Split(s, "\n") {
		if part != "" {
			p.done = append(p.done, part)
		}
	}
	return p
}

// Done reports whether part was delivered.
func (p *Progress) Done(part string) bool { return p != nil && slices.Contains(p.done, part) }

// Mark records part as delivered.
func (p *Progress) Mark(part string) {
	if p != nil && !p.Done(part) {
		p.done = append(p.done, part)
		p.changed = true
	}
}

// Changed reports whether Mark added anything since ParseProgress.
func (p *Progress) Changed() bool { return p != nil && p.changed }

// String encodes the progress for storage.
func (p *Progress) String() string {
	if p == nil {
		return ""
	}
	return strings.Join(p.done, "\n")
}

// Spec configures one notifier (built from config.Notifier by the daemon).
// Secrets are plain strings here: a Spec is never printed.
type Spec struct {
	Name string
	Type string
	// Template and GuardTemplate override the text of incident and guard
	// events (text/template over *Event); "" means the default.
	Template      string
	GuardTemplate string
	Timeout       time.Duration // per send; default 10s

	// twilio_sms
	From                string
	MessagingServiceSID string
	To                  []string // twilio_sms: E.164 numbers; email: addresses

	// slack: WebhookURL; webhook: URL and Secret
	WebhookURL string
	URL        string
	Secret     string

	// email
	SMTP     string // host:port (STARTTLS)
	Username string
	Password string
	MailFrom string
	Subject  string // template; "" means "{{.Headline}}"
	CAPEM    []byte // extra roots to trust for the SMTP server's certificate (besides the system's)
}

// MessageSender sends an SMS from the parent account: all that the
// twilio_sms notifier needs of Twilio (twilioapi.API has it).
type MessageSender interface {
	SendMessage(ctx context.Context, msg twilioapi.Message) (string, error)
}

// Deps are what notifiers need from the daemon.
type Deps struct {
	API        MessageSender // for twilio_sms
	HTTPClient *http.Client  // for slack and webhook; default: no redirects, no cookies
	Now        func() time.Time
}

// DefaultTimeout bounds one send.
const DefaultTimeout = 10 * time.Second

// New builds the notifier a Spec describes.
func New(s Spec, deps Deps) (Notifier, error) {
	if s.Name == "" {
		return nil, errors.New("notify: a notifier needs a name")
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.HTTPClient == nil {
		deps.HTTPClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	tmpl, err := newTemplates(s.Type, s.Template, s.GuardTemplate)
	if err != nil {
		return nil, fmt.Errorf("notify: %s: %w", s.Name, err)
	}
	b := base{name: s.Name, typ: s.Type, timeout: s.Timeout, tmpl: tmpl}
	switch s.Type {
	case TypeTwilioSMS:
		return newSMS(b, s, deps)
	case TypeSlack:
		return newSlack(b, s, deps)
	case TypeWebhook:
		return newWebhook(b, s, deps)
	case TypeEmail:
		return newEmail(b, s, deps)
	}
	return nil, fmt.Errorf("notify: %s: unknown type %q", s.Name, s.Type)
}

// base is what every notifier has.
type base struct {
	name, typ string
	timeout   time.Duration
	tmpl      *templates
}

func (b base) Name() string { return b.name }
func (b base) Type() string { return b.typ }

// userAgent is sent with every HTTP notification.
func userAgent() string { return "usagebreaker/" + version.Version }
