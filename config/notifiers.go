package config

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/notify"
	"github.com/usagebreaker/usagebreaker/rules"
)

// The people-in-the-loop keys: notifiers, default_notifiers and guard.

// Notifier is one entry of notifiers (see notify.Spec for what each type needs).
type Notifier struct {
	Name          string        `yaml:"name"`
	Type          string        `yaml:"type"` // twilio_sms | slack | webhook | email
	Timeout       time.Duration `yaml:"-"`    // per send; default 10s
	Template      string        `yaml:"template,omitempty"`
	GuardTemplate string        `yaml:"guard_template,omitempty"`

	// twilio_sms (From is also email's sender)
	From                string   `yaml:"from,omitempty"`
	MessagingServiceSID string   `yaml:"messaging_service_sid,omitempty"`
	To                  []string `yaml:"to,omitempty"`

	WebhookURL Secret `yaml:"webhook_url,omitempty"` // slack
	URL        string `yaml:"url,omitempty"`         // webhook
	Secret     Secret `yaml:"secret,omitempty"`      // webhook

	// email
	SMTP      string `yaml:"smtp,omitempty"`
	Username  string `yaml:"username,omitempty"`
	Password  Secret `yaml:"password,omitempty"`
	Subject   string `yaml:"subject,omitempty"`
	TLSCAFile string `yaml:"tls_ca_file,omitempty"` // as written; CAPEM is its content
	CAPEM     []byte `yaml:"-"`

	Line int `yaml:"-"` // the line of the entry
}

// Guard limits suspensions per window (the blast-radius guard).
type Guard struct {
	MaxSuspensions int           `yaml:"max_suspensions"` // 0: the guard is off
	Window         time.Duration `yaml:"-"`
}

// DefaultGuardWindow is guard.window when only max_suspensions is given.
const DefaultGuardWindow = time.Hour

// MaxNotifierTimeout bounds notifiers[].timeout.
const MaxNotifierTimeout = 5 * time.Minute

var (
	notifierCommon = []string{"name", "type", "timeout", "template", "template_file", "guard_template", "guard_template_file"}
	notifierKeys   = map[string][]string{
		notify.TypeTwilioSMS: {"from", "messaging_service_sid", "to"},
		notify.TypeSlack:     {"webhook_url", "webhook_url_file"},
		notify.TypeWebhook:   {"url", "secret", "secret_file"},
		notify.TypeEmail:     {"smtp", "username", "password", "password_file", "from", "to", "subject", "tls_ca_file"},
	}
	guardKeys = []string{"max_suspensions", "window"}

	e164RE        = regexp.MustCompile(`^\+[1-9][0-9]{1,14}$`)
	shortCodeRE   = regexp.MustCompile(`^[0-9]{3,8}$`)
	alphaSenderRE = regexp.MustCompile(`^[A-Za-z0-9 ]{1,11}$`)
	msgServiceRE  = regexp.MustCompile(`^MG[0-9a-fA-F]{32}$`)
)

// allNotifierKeys is every key any notifier type has.
func allNotifierKeys() []string {
	keys := slices.Clone(notifierCommon)
	for _, t := range notify.Types {
		for _, k := range notifierKeys[t] {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// operator reads notifiers, default_notifiers and guard.
func (l *loader) operator(top *strict.Map) {
	l.notifiers(top.Get("notifiers"))
	l.defaultNotifiers(top.Get("default_notifiers"))
	l.guard(l.d.Map(top.Get("guard"), guardKeys))
}

func (l *loader) notifiers(v strict.Value) {
	d := l.d
	items, ok := d.List(v)
	if !ok {
		if v.Written() && !v.Present() {
			d.Errorf(v, "must be a list of notifiers, not null")
		}
		return
	}
	first := map[string]int{}
	for i, it := range items {
		n, ok := l.notifier(it, i)
		if n.Name != "" {
			if line, dup := first[n.Name]; dup {
				d.ErrorfAt(n.Line, strict.Value{}, "notifier %q: duplicate name; first defined at line %d", n.Name, line)
				continue
			}
			first[n.Name] = n.Line
		}
		if ok {
			l.cfg.Notifiers = append(l.cfg.Notifiers, n)
		} else if n.Name != "" {
			l.badNotifiers = append(l.badNotifiers, n.Name)
		}
	}
}

// peek returns the scalar value of key in a mapping node, if any.
func peek(v strict.Value, key string) string {
	if !v.Present() || v.Node.Kind != yaml.MappingNode {
		return ""
	}
	c := v.Node.Content
	for i := 0; i+1 < len(c); i += 2 {
		if c[i].Value == key && c[i+1].Kind == yaml.ScalarNode {
			return c[i+1].Value
		}
	}
	return ""
}

func (l *loader) notifier(it strict.Value, idx int) (Notifier, bool) {
	d := l.d
	n := Notifier{Line: it.Line}
	prefix := fmt.Sprintf("notifiers[%d]: ", idx)
	if name := peek(it, "name"); rules.NotifierNameRE.MatchString(name) {
		prefix = fmt.Sprintf("notifier %q: ", name)
	}
	it = it.Rebase(prefix)
	if !it.Present() {
		d.Errorf(it, "must be a mapping, not null")
		return n, false
	}
	before := len(d.Errs)
	m := d.Map(it, allNotifierKeys())
	if m.Bad() {
		return n, false
	}

	nameV := m.Get("name")
	if s, ok := d.String(nameV); ok {
		if rules.NotifierNameRE.MatchString(s) {
			n.Name = s
		} else {
			d.Errorf(nameV, "%q must be 1 to 32 characters of a-z, 0-9 and \"-\"", s)
		}
	} else if !nameV.Present() {
		d.Required(nameV)
	}

	typeV := m.Get("type")
	if s, ok := d.String(typeV); ok {
		if slices.Contains(notify.Types, s) {
			n.Type = s
		} else {
			hint := ""
			if sg := strict.Suggest(s, notify.Types); sg != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", sg)
			}
			d.Errorf(typeV, "%q must be one of %s%s", s, strings.Join(notify.Types, ", "), hint)
		}
	} else if !typeV.Present() {
		d.Required(typeV)
	}
	if n.Type == "" {
		return n, false
	}
	// Keys of the other types are errors that say whose they are.
	for _, k := range allNotifierKeys() {
		if kv := m.Get(k); kv.Written() && !slices.Contains(notifierCommon, k) && !slices.Contains(notifierKeys[n.Type], k) {
			var owners []string
			for _, t := range notify.Types {
				if slices.Contains(notifierKeys[t], k) {
					owners = append(owners, t)
				}
			}
			d.ErrorfAt(kv.Line, it, "%s is not a key of type %s (it belongs to %s)", k, n.Type, strings.Join(owners, ", "))
		}
	}

	n.Timeout = notify.DefaultTimeout
	if tv := m.Get("timeout"); tv.Present() {
		if dur, ok := d.Duration(tv); ok {
			if dur <= 0 || dur > MaxNotifierTimeout {
				d.Errorf(tv, "%s is out of range (more than 0, at most %s)", dur, MaxNotifierTimeout)
			} else {
				n.Timeout = dur
			}
		}
	}
	n.Template = l.template(m, "template", "template_file", notify.KindIncident)
	n.GuardTemplate = l.template(m, "guard_template", "guard_template_file", notify.KindGuard)

	switch n.Type {
	case notify.TypeTwilioSMS:
		l.smsKeys(m, &n)
	case notify.TypeSlack:
		tok, used, st := l.secret(m, "webhook_url", "webhook_url_file")
		switch st {
		case secretAbsent:
			d.RequiredOr(m.Get("webhook_url"), " (or webhook_url_file)")
		case secretOK:
			if problem := checkNotifyURL(string(tok)); problem != "" {
				d.Errorf(used, "%s", problem)
			} else {
				n.WebhookURL = tok
			}
		}
	case notify.TypeWebhook:
		uv := m.Get("url")
		if s, ok := d.String(uv); ok {
			if problem := checkNotifyURL(s); problem != "" {
				d.Errorf(uv, "%s", problem)
			} else {
				n.URL = s
			}
		} else if !uv.Present() {
			d.Required(uv)
		}
		sec, used, st := l.secret(m, "secret", "secret_file")
		switch {
		case st == secretAbsent:
			d.RequiredOr(m.Get("secret"), " (or secret_file)")
		case st == secretOK && len(sec) < 16:
			d.Errorf(used, "must be at least 16 characters (receivers verify signatures with it)")
		case st == secretOK:
			n.Secret = sec
		}
	case notify.TypeEmail:
		l.emailKeys(m, &n)
	}
	return n, len(d.Errs) == before
}

// template reads an optional message template, inline or from a file
// (relative to the config file), and checks it against a sample event.
func (l *loader) template(m *strict.Map, key, fileKey, kind string) string {
	d := l.d
	v, fv := m.Get(key), m.Get(fileKey)
	if v.Present() && fv.Present() {
		d.ErrorfAt(fv.Line, fv, "%s and %s are both set; use one", key, fileKey)
		return ""
	}
	var text string
	at := v
	switch {
	case v.Present():
		s, ok := d.Raw(v, "a string") // templates use {{ }}, not ${VAR}
		if !ok {
			return ""
		}
		text = s
	case fv.Present():
		at = fv
		p, ok := d.String(fv)
		if !ok {
			return ""
		}
		full := p
		if !filepath.IsAbs(full) {
			full = filepath.Join(l.dir, full)
		}
		data, err := rules.ReadFile(full)
		if err != nil {
			d.Errorf(fv, "cannot read %q: %v", p, err)
			return ""
		}
		if a, err := filepath.Abs(full); err == nil {
			l.cfg.Files = append(l.cfg.Files, a)
		}
		text = strings.TrimRight(string(data), "\r\n")
	default:
		return ""
	}
	if strings.TrimSpace(text) == "" {
		d.Errorf(at, "must not be empty")
		return ""
	}
	if err := notify.Check(kind, text); err != nil {
		d.Errorf(at, "%s", templateProblem(err))
		return ""
	}
	return text
}

func (l *loader) smsKeys(m *strict.Map, n *Notifier) {
	d := l.d
	fv, sv := m.Get("from"), m.Get("messaging_service_sid")
	switch {
	case fv.Present() && sv.Present():
		d.ErrorfAt(sv.Line, sv, "from and messaging_service_sid are both set; use one")
	case sv.Present():
		if s, ok := d.String(sv); ok {
			if msgServiceRE.MatchString(s) {
				n.MessagingServiceSID = s
			} else {
				d.Errorf(sv, "%q is not MG followed by 32 hex digits", s)
			}
		}
	case fv.Present():
		if s, ok := d.String(fv); ok {
			if e164RE.MatchString(s) || shortCodeRE.MatchString(s) || (alphaSenderRE.MatchString(s) && strings.ContainsFunc(s, isLetter)) {
				n.From = s
			} else {
				d.Errorf(fv, "%q is not an E.164 number (+15005550006), a short code or an alphanumeric sender ID", s)
			}
		}
	default:
		d.RequiredOr(fv, " (or messaging_service_sid)")
	}
	n.To = l.recipients(m.Get("to"), func(s string) string {
		if !e164RE.MatchString(s) {
			return fmt.Sprintf("%q is not an E.164 phone number (like +15558675310)", s)
		}
		return ""
	})
}

func isLetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }

// recipients reads a non-empty list of unique strings, each checked by bad.
func (l *loader) recipients(v strict.Value, bad func(string) string) []string {
	d := l.d
	if !v.Present() {
		d.Required(v)
		return nil
	}
	items, ok := d.List(v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.Errorf(v, "at least one recipient is required")
		return nil
	}
	var out []string
	for _, it := range items {
		if !it.Present() {
			d.Errorf(it, "must be a string, not null")
			continue
		}
		s, ok := d.String(it)
		if !ok {
			continue
		}
		if problem := bad(s); problem != "" {
			d.Errorf(it, "%s", problem)
			continue
		}
		if slices.Contains(out, s) {
			d.Errorf(it, "%q is listed twice", s)
			continue
		}
		out = append(out, s)
	}
	return out
}

func (l *loader) emailKeys(m *strict.Map, n *Notifier) {
	d := l.d
	hv := m.Get("smtp")
	if s, ok := d.String(hv); ok {
		host, port, err := net.SplitHostPort(s)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			d.Errorf(hv, "%q is not host:port (like smtp.example.com:587)", s)
		} else {
			n.SMTP = s
		}
	} else if !hv.Present() {
		d.Required(hv)
	}

	fv := m.Get("from")
	if s, ok := d.String(fv); ok {
		if _, err := mail.ParseAddress(s); err != nil {
			d.Errorf(fv, "%q is not an e-mail address", s)
		} else {
			n.From = s
		}
	} else if !fv.Present() {
		d.Required(fv)
	}
	n.To = l.recipients(m.Get("to"), func(s string) string {
		if _, err := mail.ParseAddress(s); err != nil {
			return fmt.Sprintf("%q is not an e-mail address", s)
		}
		return ""
	})

	uv := m.Get("username")
	if s, ok := d.String(uv); ok {
		if s == "" {
			d.Errorf(uv, "must not be empty (leave it out to send without authentication)")
		}
		n.Username = s
	}
	pw, used, st := l.secret(m, "password", "password_file")
	switch {
	case st == secretOK && n.Username == "":
		d.Errorf(used, "needs username")
	case st == secretAbsent && n.Username != "":
		d.ErrorfAt(uv.Line, uv, "password (or password_file) is required with username")
	case st == secretOK:
		n.Password = pw
	}

	if sv := m.Get("subject"); sv.Present() {
		if s, ok := d.Raw(sv, "a string"); ok {
			if err := notify.Check(notify.KindIncident, s); err != nil {
				d.Errorf(sv, "%s", templateProblem(err))
			} else if err := notify.Check(notify.KindGuard, s); err != nil {
				d.Errorf(sv, "%s (the subject is also used for the guard's page)", templateProblem(err))
			} else {
				n.Subject = s
			}
		}
	}

	if cv := m.Get("tls_ca_file"); cv.Present() {
		if p, ok := d.String(cv); ok {
			full := p
			if !filepath.IsAbs(full) {
				full = filepath.Join(l.dir, full)
			}
			data, err := rules.ReadFile(full)
			switch {
			case err != nil:
				d.Errorf(cv, "cannot read %q: %v", p, err)
			case !x509.NewCertPool().AppendCertsFromPEM(data):
				d.Errorf(cv, "%q holds no PEM certificate", p)
			default:
				n.TLSCAFile, n.CAPEM = p, data
				if a, err := filepath.Abs(full); err == nil {
					l.cfg.Files = append(l.cfg.Files, a)
				}
			}
		}
	}
}

// checkNotifyURL checks a Slack or webhook URL: https, or http to a
// loopback host (a sidecar); no user info or fragment. The URL itself is
// never repeated in a message: Slack's carries its secret in the path.
func checkNotifyURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Host == "":
		return "is not an absolute URL"
	case u.User != nil:
		return "must not contain a user name or password"
	case u.Fragment != "" || strings.Contains(s, "#"):
		return "must not have a fragment"
	case u.Scheme == "https":
		return ""
	case u.Scheme == "http":
		h := u.Hostname()
		if ip := net.ParseIP(h); h == "localhost" || (ip != nil && ip.IsLoopback()) {
			return ""
		}
		return "must be https (http is allowed only to localhost)"
	}
	return "must be an https URL"
}

func (l *loader) defaultNotifiers(v strict.Value) {
	d := l.d
	if v.Written() && !v.Present() {
		d.Errorf(v, "must be a list of notifier names, not null")
		return
	}
	items, ok := d.List(v)
	if !ok {
		return
	}
	l.cfg.DefaultNotifiers = []string{}
	known := l.notifierNames()
	for _, it := range items {
		s, ok := d.String(it)
		if !it.Present() {
			d.Errorf(it, "must be a notifier name, not null")
			continue
		}
		if !ok {
			continue
		}
		if problem := unknownNotifier(s, known); problem != "" {
			d.Errorf(it, "%s", problem)
			continue
		}
		if slices.Contains(l.cfg.DefaultNotifiers, s) {
			d.Errorf(it, "%q is listed twice", s)
			continue
		}
		l.cfg.DefaultNotifiers = append(l.cfg.DefaultNotifiers, s)
	}
}

// notifierNames are the names of the notifiers read (valid or not, so that
// one bad notifier does not make every reference to it an error too).
func (l *loader) notifierNames() []string {
	var names []string
	for _, n := range l.cfg.Notifiers {
		names = append(names, n.Name)
	}
	return append(names, l.badNotifiers...)
}

func unknownNotifier(name string, known []string) string {
	if slices.Contains(known, name) {
		return ""
	}
	if len(known) == 0 {
		return fmt.Sprintf("unknown notifier %q (no notifiers are configured)", name)
	}
	if sg := strict.Suggest(name, known); sg != "" {
		return fmt.Sprintf("unknown notifier %q (did you mean %q?)", name, sg)
	}
	return fmt.Sprintf("unknown notifier %q (configured: %s)", name, strings.Join(known, ", "))
}

func (l *loader) guard(m *strict.Map) {
	d := l.d
	mv, wv := m.Get("max_suspensions"), m.Get("window")
	if mv.Present() {
		if n, ok := d.Int(mv); ok {
			if n < 1 || n > 1000000 {
				d.Errorf(mv, "%d is out of range (1 to 1000000; leave guard out to turn it off)", n)
			} else {
				l.cfg.Guard.MaxSuspensions = n
			}
		}
	} else if wv.Present() && !m.Bad() {
		d.ErrorfAt(wv.Line, wv, "guard.window needs guard.max_suspensions")
	}
	l.cfg.Guard.Window = DefaultGuardWindow
	if wv.Present() {
		if dur, ok := d.Duration(wv); ok {
			if dur < time.Minute || dur > 31*24*time.Hour {
				d.Errorf(wv, "%s is out of range (1m to 744h)", dur)
			} else {
				l.cfg.Guard.Window = dur
			}
		}
	}
}

// checkRuleNotifiers checks that every name in a rule's notify list is a
// configured notifier; problems point at the rule file.
func (l *loader) checkRuleNotifiers(set *rules.Set) strict.Errors {
	var errs strict.Errors
	known := l.notifierNames()
	for _, r := range set.Rules {
		for i, name := range r.Notify {
			if problem := unknownNotifier(name, known); problem != "" {
				errs.Add(r.File, r.NotifyLines[i], "rule %q: notify[%d]: %s", r.Name, i, problem)
			}
		}
	}
	return errs
}

// redactedNotifier is a Notifier as /config shows it: secrets as <secret>,
// the timeout as a duration string.
type redactedNotifier struct {
	Notifier `yaml:",inline"`
	Timeout  string `yaml:"timeout"`
}

type redactedGuard struct {
	MaxSuspensions int    `yaml:"max_suspensions"`
	Window         string `yaml:"window"`
}

func redactNotifiers(ns []Notifier) []redactedNotifier {
	out := make([]redactedNotifier, len(ns))
	for i, n := range ns {
		out[i] = redactedNotifier{Notifier: n, Timeout: durationString(n.Timeout)}
	}
	return out
}

// templateProblem words a template error for a config message.
func templateProblem(err error) string {
	msg := strings.TrimPrefix(err.Error(), "template: ")
	if strings.Contains(msg, "nil pointer evaluating *notify.Guard") {
		msg += " (.Guard is set only on the guard's page: wrap it in {{with .Guard}}...{{end}})"
	}
	return msg
}
