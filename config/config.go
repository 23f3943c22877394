// Package config loads usagebreaker's config file and, through package rules,
// every rule file it names: strictly (unknown keys are errors), with ${VAR}
// expansion and *_file secrets, reporting each problem as FILE:LINE: message.
package config

import (
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
)

// Secret is a string that never prints: fmt, slog, YAML and JSON all show
// "<secret>". Use Reveal to get the value where it is really needed.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// Config is a loaded, validated config with its rules.
type Config struct {
	Path     string `yaml:"-"` // absolute path of the config file
	Instance string `yaml:"instance"`

	Twilio    Twilio    `yaml:"twilio"`
	Server    Server    `yaml:"server"`
	State     State     `yaml:"state"`
	Reconcile Reconcile `yaml:"reconcile"`
	RuleFiles []string  `yaml:"rule_files"`
	Poll      Poll      `yaml:"poll"`
	Admin     Admin     `yaml:"admin"`

	// People in the loop (notifiers.go).
	Notifiers        []Notifier `yaml:"notifiers"`
	DefaultNotifiers []string   `yaml:"default_notifiers"` // nil when not written
	Guard            Guard      `yaml:"guard"`

	// DryRun makes every rule a dry run: incidents and notifications say
	// what would be done, and nothing is suspended at Twilio (dryrun.go).
	DryRun bool `yaml:"dry_run"`
	// AllowDisarm lets a rule set disarm every subaccount (no rules, or none
	// that can match) and a reconcile delete every owned trigger.
	AllowDisarm bool `yaml:"allow_disarm"`

	Rules *rules.Set `yaml:"-"`
	// Warnings are problems that do not stop the config (FILE:LINE: warning: ...).
	Warnings Errors `yaml:"-"`
	// Files lists every file the config was built from (the config file, each
	// rule file, each *_file secret), absolute, for change detection.
	Files []string `yaml:"-"`
}

// Twilio is the parent account and how to reach its API.
type Twilio struct {
	AccountSID     string        `yaml:"account_sid"`
	AuthToken      Secret        `yaml:"auth_token"`      // or auth_token_file
	APIBaseURL     string        `yaml:"api_base_url"`    // default https://api.twilio.com
	MaxConcurrency int           `yaml:"max_concurrency"` // default 10
	Timeout        time.Duration `yaml:"timeout"`         // per request attempt; default 10s
}

// Server is the two listeners.
type Server struct {
	Listen      string `yaml:"listen"`       // default ":8080"
	PublicURL   string `yaml:"public_url"`   // required; no trailing slash after loading
	AdminListen string `yaml:"admin_listen"` // default "127.0.0.1:9111"

	// Security (config/security.go); nil when not configured.
	TLS                    *TLS            `yaml:"tls,omitempty"`
	BasicAuth              *BasicAuth      `yaml:"basic_auth,omitempty"`
	AllowInsecurePublicURL bool            `yaml:"allow_insecure_public_url,omitempty"`
	TrustedProxies         *TrustedProxies `yaml:"trusted_proxies,omitempty"`
}

// State is where the database lives: a SQLite file (Path), or a Postgres
// database several replicas share (Postgres). Exactly one is set.
type State struct {
	Path     string    `yaml:"path,omitempty"` // default "data/usagebreaker.db", relative to the config file
	Postgres *Postgres `yaml:"postgres,omitempty"`
}

// Postgres is the state on Postgres (docs/HA.md).
type Postgres struct {
	DSN Secret `yaml:"dsn"` // or dsn_file; a URL or key=value DSN (pgx), e.g. with sslmode=verify-full
	// ClaimLease is how long a replica's claim on an action lasts; another
	// replica runs the action again only after it (default 30s).
	ClaimLease time.Duration `yaml:"claim_lease"`
}

// DefaultClaimLease is state.postgres.claim_lease's default.
const DefaultClaimLease = 30 * time.Second

// Reconcile is when the reconciler runs besides start and reload.
type Reconcile struct {
	Schedule string `yaml:"schedule"` // robfig/cron spec; default "@every 10m"
	// MaxDeletes: a reconcile that would delete more owned triggers than
	// this holds the deletions for a person (default 50).
	MaxDeletes int `yaml:"max_deletes"`
}

// Poll is the usage polling fallback.
type Poll struct {
	Schedule string `yaml:"schedule"` // default "@every 5m"; "" turns polling off
}

// Admin is the admin API.
type Admin struct {
	Token Secret `yaml:"token"` // or token_file; empty: the admin API is off
}
