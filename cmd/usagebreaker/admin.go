package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/version"
)

// The commands that talk to the admin API: incidents and reactivate. The
// bearer token comes from USAGEBREAKER_ADMIN_TOKEN.

const (
	defaultAdminURL = "http://127.0.0.1:9111"
	tokenEnv        = "USAGEBREAKER_ADMIN_TOKEN"
	adminURLEnv     = "USAGEBREAKER_ADMIN_URL"
)

// adminURLFlag is --admin-url: the admin listener's base URL, by default
// USAGEBREAKER_ADMIN_URL, else http://127.0.0.1:9111. Every command that
// talks to the admin listener takes it.
func adminURLFlag(fs *flag.FlagSet) *string {
	return fs.String("admin-url", "", "the admin listener's base URL (default $"+adminURLEnv+", else "+defaultAdminURL+")")
}

// adminTarget resolves --admin-url and says where the URL came from, so an
// error can say what to change.
func adminTarget(flagValue string) (base, from string) {
	if v := strings.TrimSpace(flagValue); v != "" {
		return v, "--admin-url"
	}
	if v := strings.TrimSpace(os.Getenv(adminURLEnv)); v != "" {
		return v, adminURLEnv
	}
	return defaultAdminURL, "the default"
}

type adminClient struct {
	base  string
	from  string // where base came from (adminTarget)
	token string
	http  *http.Client
}

func newAdminClient(flagValue string, timeout time.Duration) (*adminClient, error) {
	base, from := adminTarget(flagValue)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("admin URL %q (from %s) is not an http(s) URL such as %s", base, from, defaultAdminURL)
	}
	tok := strings.TrimSpace(os.Getenv(tokenEnv))
	if tok == "" {
		return nil, fmt.Errorf("%s is not set: export the admin token (admin.token_file) first", tokenEnv)
	}
	return &adminClient{base: strings.TrimRight(base, "/"), from: from, token: tok, http: &http.Client{Timeout: timeout}}, nil
}

// unreachable words a request that got no answer: what was tried, from
// where the address came, and what to set.
func unreachable(base, from string, err error) error {
	return fmt.Errorf("cannot reach usagebreaker's admin API at %s (from %s): %w; is usagebreaker running, and is that its server.admin_listen? "+
		"Point --admin-url or %s at it", base, from, err, adminURLEnv)
}

// do sends a request and returns the status and body.
func (c *adminClient) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("User-Agent", "usagebreaker-cli/"+version.Version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(daemon.HeaderOperator, operator())
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, unreachable(c.base, c.from, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	return resp.StatusCode, b, err
}

// operator names the person at the terminal, for the audit ("alice@laptop").
func operator() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	if host != "" {
		return name + "@" + host
	}
	return name
}

// apiError words a non-2xx answer.
func apiError(status int, body []byte) string {
	var e daemon.ErrorJSON
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	msg := strings.TrimSpace(string(body))
	switch status {
	case http.StatusUnauthorized:
		return "the admin API refused the token (" + tokenEnv + "): " + msg
	case http.StatusNotFound:
		return "not found: " + msg
	}
	return fmt.Sprintf("HTTP %d: %s", status, msg)
}

// splitArgs separates positional arguments from flags, so that
// "reactivate SID --reason x" and "reactivate --reason x SID" both work.
func splitArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func cmdIncidents(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("incidents", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := adminURLFlag(fs)
	limit := fs.Int("limit", 50, "how many incidents, newest first (1 to 1000)")
	account := fs.String("account", "", "only this subaccount SID")
	rule := fs.String("rule", "", "only this rule")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of a table")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the admin API")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "incidents: unexpected argument %q\n", pos[0])
		return 2
	}
	c, err := newAdminClient(*base, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "incidents:", err)
		return 1
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *account != "" {
		q.Set("account", *account)
	}
	if *rule != "" {
		q.Set("rule", *rule)
	}
	status, body, err := c.do(http.MethodGet, "/api/v1/incidents?"+q.Encode(), nil)
	if err != nil {
		fmt.Fprintln(stderr, "incidents:", err)
		return 1
	}
	if status != http.StatusOK {
		fmt.Fprintln(stderr, "incidents:", apiError(status, body))
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var incs []daemon.IncidentJSON
	if err := json.Unmarshal(body, &incs); err != nil {
		fmt.Fprintln(stderr, "incidents: the admin API answered something else than incidents:", err)
		return 1
	}
	printIncidents(stdout, incs)
	return 0
}

// printIncidents prints a table, newest first.
func printIncidents(w io.Writer, incs []daemon.IncidentJSON) {
	if len(incs) == 0 {
		fmt.Fprintln(w, "no incidents")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWHEN (UTC)\tRULE\tSUBACCOUNT\tSID\tVALUE / THRESHOLD\tOUTCOME\tNOTIFIED\tREACTIVATED")
	for _, i := range incs {
		outcome := i.Outcome
		switch {
		case i.Held:
			outcome = "HELD (guard)"
		case i.State == "pending":
			outcome = "pending"
		case i.DryRun && outcome == "dry_run":
			outcome = "dry_run"
		}
		sent, total := 0, 0
		for _, a := range i.Actions {
			if strings.HasPrefix(string(a.Kind), "notify:") {
				total++
				if a.Outcome == "sent" {
					sent++
				}
			}
		}
		notified := "-"
		if total > 0 {
			notified = fmt.Sprintf("%d/%d", sent, total)
		}
		react := "-"
		if r := i.Reactivation; r != nil {
			react = fmt.Sprintf("%s %s", r.At.UTC().Format("2006-01-02 15:04"), r.Via)
		} else {
			for _, a := range i.Actions {
				if a.Kind == "reactivate" && a.State == "available" {
					react = "due " + a.NextAttemptAt.UTC().Format("2006-01-02 15:04")
				}
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s / %s\t%s\t%s\t%s\n", i.ID, i.CreatedAt.UTC().Format("2006-01-02 15:04:05"),
			i.Rule, clip(i.AccountName, 32), i.AccountSID, decimal.Tidy(i.CurrentValue), decimal.Tidy(i.TriggerValue), outcome, notified, react)
	}
	tw.Flush()
}

func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func cmdReactivate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reactivate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: usagebreaker reactivate SID --reason TEXT [--admin-url URL]")
		fs.PrintDefaults()
	}
	base := adminURLFlag(fs)
	reason := fs.String("reason", "", "why it is safe to reactivate (required; kept in the audit)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the admin API")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	sid := pos[0]
	if !breaker.ValidAccountSID(sid) {
		fmt.Fprintf(stderr, "reactivate: %q is not an account SID (AC followed by 32 hex digits)\n", sid)
		return 2
	}
	if strings.TrimSpace(*reason) == "" {
		fmt.Fprintln(stderr, "reactivate: --reason is required: say why it is safe to reactivate this account")
		return 2
	}
	c, err := newAdminClient(*base, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "reactivate:", err)
		return 1
	}
	status, body, err := c.do(http.MethodPost, "/api/v1/accounts/"+url.PathEscape(sid)+"/reactivate", map[string]string{"reason": *reason})
	if err != nil {
		fmt.Fprintln(stderr, "reactivate:", err)
		return 1
	}
	if status != http.StatusOK {
		fmt.Fprintf(stderr, "reactivate: refused: %s\n", apiError(status, body))
		return 1
	}
	var res daemon.ReactivateJSON
	if err := json.Unmarshal(body, &res); err != nil {
		fmt.Fprintln(stderr, "reactivate: unexpected answer:", err)
		return 1
	}
	fmt.Fprintf(stdout, "reactivated %s (%s): status %s (incident %d)\n", res.AccountName, res.AccountSID, res.Status, res.IncidentID)
	if res.WasActive {
		fmt.Fprintln(stdout, "  note: it was already active at Twilio (someone reactivated it by hand); the triggers were re-armed anyway")
	}
	for _, r := range res.Rearmed {
		fmt.Fprintf(stdout, "  re-armed %s: trips again at %s (%s more; period %s#%d)\n", r.Rule, r.TriggerValue, r.Allowance, r.Period, r.Generation)
	}
	if len(res.Rearmed) == 0 {
		fmt.Fprintln(stdout, "  no trigger had fired this period: nothing to re-arm")
	}
	for _, p := range res.Problems {
		fmt.Fprintln(stdout, "  warning:", p)
	}
	return 0
}

// cmdRelease is `usagebreaker release guard|deletes`: lets go what the
// breaker holds for a person. guard: the suspensions the guard holds
// (POST /api/v1/guard/release); deletes: the trigger deletions a reconcile
// held past reconcile.max_deletes (POST /api/v1/reconcile/release).
func cmdRelease(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: usagebreaker release guard|deletes [--admin-url URL]")
		fmt.Fprintln(stderr, "  guard    execute the suspensions the guard holds")
		fmt.Fprintln(stderr, "  deletes  let a reconcile delete the owned triggers it held (reconcile.max_deletes)")
		fs.PrintDefaults()
	}
	base := adminURLFlag(fs)
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the admin API")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 || (pos[0] != "guard" && pos[0] != "deletes") {
		fs.Usage()
		return 2
	}
	what := pos[0]
	path := "/api/v1/guard/release"
	if what == "deletes" {
		path = "/api/v1/reconcile/release"
	}
	c, err := newAdminClient(*base, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "release:", err)
		return 1
	}
	status, body, err := c.do(http.MethodPost, path, nil)
	if err != nil {
		fmt.Fprintln(stderr, "release:", err)
		return 1
	}
	if status != http.StatusOK {
		fmt.Fprintf(stderr, "release: refused: %s\n", apiError(status, body))
		return 1
	}
	var res struct {
		Released int `json:"released"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		fmt.Fprintln(stderr, "release: unexpected answer:", err)
		return 1
	}
	if what == "guard" {
		fmt.Fprintf(stdout, "released %d held suspension(s); they run now\n", res.Released)
	} else {
		fmt.Fprintf(stdout, "released %d held trigger deletion(s); a reconcile deletes them now\n", res.Released)
	}
	return 0
}
