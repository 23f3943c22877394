package testenv

import (
	"fmt"
	"strings"
)

// Config is a daemon's config file against the simulator, with the keys
// the tests set; the rest is the daemon's defaults or Extra.
type Config struct {
	Instance string
	// AccountSID and AuthToken are the parent account's; with AuthToken ""
	// Twilio says how the token comes (auth_token_file).
	AccountSID, AuthToken string
	Twilio                string // more lines under twilio:, each "key: value"
	APIBaseURL            string
	MaxConcurrency        int // 0 leaves the key out
	// Listen and AdminListen are the callback and admin addresses;
	// PublicURL is where Twilio sends callbacks.
	Listen, PublicURL, AdminListen string
	Server                         string // more lines under server:
	State                          string // the lines under state: ("path: state.db" when empty)
	RuleFiles                      string // the rule_files pattern
	Poll                           string // poll.schedule
	AdminTokenFile                 string
	Extra                          string // appended as is (top-level keys)
}

// YAML is the config file's text.
func (c Config) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "instance: %s\ntwilio:\n  account_sid: %s\n", c.Instance, c.AccountSID)
	if c.AuthToken != "" {
		fmt.Fprintf(&b, "  auth_token: %s\n", c.AuthToken)
	}
	fmt.Fprintf(&b, "  api_base_url: %s\n", c.APIBaseURL)
	if c.MaxConcurrency != 0 {
		fmt.Fprintf(&b, "  max_concurrency: %d\n", c.MaxConcurrency)
	}
	b.WriteString(indent(c.Twilio))
	fmt.Fprintf(&b, "server:\n  listen: %q\n  public_url: %s\n  admin_listen: %q\n", c.Listen, c.PublicURL, c.AdminListen)
	b.WriteString(indent(c.Server))
	state := c.State
	if state == "" {
		state = "path: state.db"
	}
	fmt.Fprintf(&b, "state:\n%s", indent(state))
	fmt.Fprintf(&b, "reconcile:\n  schedule: \"@every 1h\"\nrule_files: [%q]\npoll:\n  schedule: %q\nadmin:\n  token_file: %s\n",
		c.RuleFiles, c.Poll, c.AdminTokenFile)
	b.WriteString(c.Extra)
	return b.String()
}

// indent indents YAML lines by two spaces, ending them with a newline.
func indent(lines string) string {
	if lines == "" {
		return ""
	}
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(lines, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
