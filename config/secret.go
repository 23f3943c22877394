package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// redactedSecret is how a non-empty Secret prints everywhere.
const redactedSecret = "<secret>"

// String returns "<secret>" ("" for an empty secret), never the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redactedSecret
}

// GoString is for %#v.
func (s Secret) GoString() string { return "config.Secret(" + strconv.Quote(s.String()) + ")" }

// Format makes every fmt verb (%v %s %q %x %+v %#v ...) print the redacted form.
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		io.WriteString(f, s.GoString())
	case verb == 'q':
		io.WriteString(f, strconv.Quote(s.String()))
	default:
		io.WriteString(f, s.String())
	}
}

// LogValue is for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON writes "<secret>".
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML writes <secret>.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalText writes <secret>, for any other encoder.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Redacted returns the effective config (after defaults and ${VAR}
// expansion) as YAML, with every secret shown as <secret> ("" when empty).
func (c *Config) Redacted() ([]byte, error) {
	if c == nil {
		return nil, errors.New("config: nil Config")
	}
	type twilio struct {
		AccountSID     string `yaml:"account_sid"`
		AuthToken      Secret `yaml:"auth_token"`
		APIBaseURL     string `yaml:"api_base_url"`
		MaxConcurrency int    `yaml:"max_concurrency"`
		Timeout        string `yaml:"timeout"`
	}
	view := struct {
		Instance  string    `yaml:"instance"`
		DryRun    bool      `yaml:"dry_run"`
		Twilio    twilio    `yaml:"twilio"`
		Server    Server    `yaml:"server"`
		State     State     `yaml:"state"`
		Reconcile Reconcile `yaml:"reconcile"`
		RuleFiles []string  `yaml:"rule_files"`
		Poll      Poll      `yaml:"poll"`
		Admin     Admin     `yaml:"admin"`
		// People in the loop (notifiers.go).
		Notifiers        []redactedNotifier `yaml:"notifiers"`
		DefaultNotifiers []string           `yaml:"default_notifiers"`
		Guard            redactedGuard      `yaml:"guard"`
	}{
		Instance: c.Instance,
		DryRun:   c.DryRun,
		Twilio: twilio{
			AccountSID:     c.Twilio.AccountSID,
			AuthToken:      c.Twilio.AuthToken,
			APIBaseURL:     c.Twilio.APIBaseURL,
			MaxConcurrency: c.Twilio.MaxConcurrency,
			Timeout:        durationString(c.Twilio.Timeout),
		},
		Server:    c.Server,
		State:     c.State,
		Reconcile: c.Reconcile,
		RuleFiles: c.RuleFiles,
		Poll:      c.Poll,
		Admin:     c.Admin,

		Notifiers:        redactNotifiers(c.Notifiers),
		DefaultNotifiers: c.DefaultNotifiers,
		Guard:            redactedGuard{c.Guard.MaxSuspensions, durationString(c.Guard.Window)},
	}
	out, err := yaml.Marshal(view)
	if err != nil || !c.DryRun {
		return out, err
	}
	return append([]byte(DryRunBanner+"\n"), out...), nil
}

func durationString(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	return d.String()
}
