package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/robfig/cron/v3"

	"github.com/usagebreaker/usagebreaker/config/strict"
	"github.com/usagebreaker/usagebreaker/rules"
)

// Problem is one problem in the config or a rule file.
type Problem = strict.Problem

// Errors lists every problem Load found; Error() gives one FILE:LINE: message
// per line. Use errors.As to get it from Load's error.
type Errors = strict.Errors

// Defaults for keys the config file leaves out.
const (
	DefaultAPIBaseURL        = "https://api.twilio.com"
	DefaultMaxConcurrency    = 10
	DefaultTimeout           = 10 * time.Second
	DefaultListen            = ":8080"
	DefaultAdminListen       = "127.0.0.1:9111" // loopback: the admin API must not be public by default
	DefaultStatePath         = "data/usagebreaker.db"
	DefaultReconcileSchedule = "@every 10m"
	DefaultPollSchedule      = "@every 5m"
	// DefaultMaxDeletes is reconcile.max_deletes: beyond this many owned
	// triggers to delete in one reconcile, the deletions are held for a person.
	DefaultMaxDeletes = 50
)

var (
	topKeys       = []string{"instance", "twilio", "server", "state", "reconcile", "rule_files", "poll", "admin", "guard", "notifiers", "default_notifiers", "dry_run", "allow_disarm"}
	futureTopKeys []string
	twilioKeys    = []string{"account_sid", "auth_token", "auth_token_file", "api_base_url", "max_concurrency", "timeout"}
	serverKeys    = append([]string{"listen", "public_url", "admin_listen"}, securityServerKeys...)
	futureServer  = []string(nil)
	scheduleKeys  = []string{"schedule"}
	reconcileKeys = []string{"schedule", "max_deletes"}

	instanceRE   = regexp.MustCompile(`^[a-z0-9-]{1,16}$`)
	accountSIDRE = regexp.MustCompile(`^AC[0-9a-fA-F]{32}$`)
)

// Load reads the config file at path and every rule file it names, applies
// defaults and validates everything, offline. On any problem it returns a nil
// Config and an Errors with all of them. File names in messages are path as
// given and the rule files as resolved from their globs.
func Load(path string) (*Config, error) {
	data, err := rules.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: "cannot read: " + err.Error()}}
	}
	return load(path, data, os.LookupEnv)
}

type loader struct {
	d      *strict.Decoder
	cfg    *Config
	dir    string // the config file's directory as given (relative stays relative)
	absDir string

	badNotifiers []string // names of notifiers with problems (notifiers.go)
}

func load(path string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	l := &loader{
		d:      &strict.Decoder{File: path, Expand: true, LookupEnv: lookup},
		cfg:    &Config{Path: abs, Files: []string{abs}},
		dir:    filepath.Dir(path),
		absDir: filepath.Dir(abs),
	}
	d, cfg := l.d, l.cfg
	root, ok := d.Parse(data)
	if !ok {
		return nil, d.Errs
	}
	top := d.Map(root, topKeys, futureTopKeys...)

	instanceOK := l.instance(top.Get("instance"))
	l.twilio(d.Map(top.Get("twilio"), twilioKeys))
	l.server(d.Map(top.Get("server"), serverKeys, futureServer...))
	l.state(d.Map(top.Get("state"), []string{"path", "postgres"}))
	l.reconcile(d.Map(top.Get("reconcile"), reconcileKeys))
	disarmV := top.Get("allow_disarm")
	if b, ok := d.Bool(disarmV); ok {
		cfg.AllowDisarm = b
	}
	l.poll(d.Map(top.Get("poll"), scheduleKeys))
	l.admin(d.Map(top.Get("admin"), []string{"token", "token_file"}))
	l.operator(top)
	l.dryRun(top.Get("dry_run"))
	ruleFiles := l.ruleFiles(top.Get("rule_files"), top.Bad())

	errs := d.Errs
	order := append([]string{path}, ruleFiles...)
	if len(ruleFiles) > 0 {
		set, err := rules.LoadFiles(ruleFiles)
		var rerrs rules.Errors
		switch {
		case errors.As(err, &rerrs):
			errs = append(errs, rerrs...)
		case err != nil:
			errs.Add(path, 0, "%v", err)
		default:
			cfg.Rules = set
			errs = append(errs, l.checkRuleNotifiers(set)...)
			errs = append(errs, checkDisarm(cfg, path, top.Get("rule_files").Line)...)
			if instanceOK {
				errs = append(errs, checkFriendlyNames(cfg.Instance, set)...)
			}
		}
		for _, f := range ruleFiles {
			if a, err := filepath.Abs(f); err == nil {
				cfg.Files = append(cfg.Files, a)
			}
		}
	}
	if len(errs) > 0 {
		errs.Sort(order)
		return nil, errs
	}
	return cfg, nil
}

// checkDisarm refuses a rule set that would disarm every subaccount (no
// rules, or only rules that can match no subaccount whatever it is called)
// unless allow_disarm is set, and records a warning for each rule that can
// match nothing. Rules that match none of the subaccounts there are now are
// found by the reload and the reconcile, which know them.
func checkDisarm(cfg *Config, path string, line int) Errors {
	var errs Errors
	set := cfg.Rules
	nothing := 0
	for _, r := range set.Rules {
		if ok, why := r.MatchesNothing(); ok {
			nothing++
			cfg.Warnings = append(cfg.Warnings, Problem{File: r.File, Line: r.Line,
				Msg: fmt.Sprintf("warning: rule %q matches no subaccount: %s", r.Name, why)})
		}
	}
	if cfg.AllowDisarm {
		return nil
	}
	switch {
	case set.Len() == 0:
		errs.Add(path, line, "the rule files have no rules: the reconcile would delete every trigger this instance owns "+
			"and guard nothing; set allow_disarm: true to disarm on purpose")
	case nothing == set.Len():
		errs.Add(path, line, "no rule can match a subaccount (see the warnings): the reconcile would delete every trigger "+
			"this instance owns; set allow_disarm: true to disarm on purpose")
	}
	return errs
}

// checkFriendlyNames checks that every rule's trigger FriendlyName fits
// Twilio's limit. (With the name and instance patterns it always does; this
// keeps it so if either pattern grows.)
func checkFriendlyNames(instance string, set *rules.Set) Errors {
	var errs Errors
	for _, r := range set.Rules {
		if fn := r.TriggerFriendlyName(instance); len(fn) > rules.MaxFriendlyName {
			errs.Add(r.File, r.Line, "rule %q: trigger FriendlyName %q is %d characters; Twilio allows at most %d",
				r.Name, fn, len(fn), rules.MaxFriendlyName)
		}
	}
	return errs
}

func (l *loader) instance(v strict.Value) bool {
	d := l.d
	s, ok := d.String(v)
	switch {
	case !ok:
		if !v.Present() {
			d.Required(v)
		}
		return false
	case !instanceRE.MatchString(s):
		d.Errorf(v, "%q must be 1 to 16 characters of a-z, 0-9 and \"-\"", s)
		return false
	}
	l.cfg.Instance = s
	return true
}

func (l *loader) twilio(m *strict.Map) {
	d, t := l.d, &l.cfg.Twilio
	*t = Twilio{APIBaseURL: DefaultAPIBaseURL, MaxConcurrency: DefaultMaxConcurrency, Timeout: DefaultTimeout}

	v := m.Get("account_sid")
	if s, ok := d.String(v); ok {
		if accountSIDRE.MatchString(s) {
			t.AccountSID = s
		} else {
			d.Errorf(v, "%q is not AC followed by 32 hex digits", s)
		}
	} else if !v.Present() {
		d.Required(v)
	}

	tok, used, st := l.secret(m, "auth_token", "auth_token_file")
	switch {
	case st == secretAbsent:
		d.RequiredOr(m.Get("auth_token"), " (or twilio.auth_token_file)")
	case st == secretOK && tok == "":
		d.Errorf(used, "must not be empty")
	case st == secretOK && !isAlnum(string(tok)):
		d.Errorf(used, "must contain only letters and digits")
	case st == secretOK:
		t.AuthToken = tok
	}

	v = m.Get("api_base_url")
	if s, ok := d.String(v); ok {
		if u, problem := checkURL(s); problem != "" {
			d.Errorf(v, "%s", problem)
		} else if problem := checkAPIBaseURLScheme(u); problem != "" {
			d.Errorf(v, "%s", problem)
		} else {
			t.APIBaseURL = u
		}
	}

	v = m.Get("max_concurrency")
	if n, ok := d.Int(v); ok {
		if n < 1 || n > 1000 {
			d.Errorf(v, "%d is out of range (1 to 1000)", n)
		} else {
			t.MaxConcurrency = n
		}
	}

	v = m.Get("timeout")
	if dur, ok := d.Duration(v); ok {
		if dur <= 0 {
			d.Errorf(v, "must be greater than 0")
		} else {
			t.Timeout = dur
		}
	}
}

func (l *loader) server(m *strict.Map) {
	d, s := l.d, &l.cfg.Server
	*s = Server{Listen: DefaultListen, AdminListen: DefaultAdminListen}

	v := m.Get("public_url")
	if str, ok := d.String(v); ok {
		if u, problem := checkURL(str); problem != "" {
			d.Errorf(v, "%s", problem)
		} else if p := urlPath(u); p != "" {
			// Callbacks are served at /twilio/usage-triggers/{rule} and their
			// signatures are checked against public_url + that path: with a
			// path in public_url neither can match.
			d.Errorf(v, "%q has a path (%q); give the bare base URL Twilio calls, like https://breaker.example.com: "+
				"callbacks are served at /twilio/usage-triggers/{rule} and signed over public_url plus that path", u, p)
		} else {
			s.PublicURL = u
		}
	} else if !v.Present() {
		d.Required(v)
	}

	listenV, adminV := m.Get("listen"), m.Get("admin_listen")
	listenOK, adminOK := true, true
	if str, ok := d.String(listenV); ok {
		if problem := checkListen(str); problem != "" {
			d.Errorf(listenV, "%s", problem)
			listenOK = false
		} else {
			s.Listen = str
		}
	} else {
		listenOK = !listenV.Written()
	}
	if str, ok := d.String(adminV); ok {
		if problem := checkListen(str); problem != "" {
			d.Errorf(adminV, "%s", problem)
			adminOK = false
		} else {
			s.AdminListen = str
		}
	} else {
		adminOK = !adminV.Written()
	}
	if listenOK && adminOK && overlap(s.Listen, s.AdminListen) {
		at := adminV
		if !adminV.Present() {
			at = listenV
		}
		d.ErrorfAt(at.Line, strict.Value{}, "server.admin_listen %q overlaps server.listen %q; the admin API needs its own address",
			s.AdminListen, s.Listen)
	}
	l.serverSecurity(m)
}

func (l *loader) state(m *strict.Map) {
	d := l.d
	p := DefaultStatePath
	v := m.Get("path")
	if pv := m.Get("postgres"); pv.Present() {
		if v.Present() {
			d.Errorf(pv, "state.path and state.postgres are both set; use one (path: SQLite, one replica; postgres: several replicas)")
			return
		}
		pm := d.Map(pv, []string{"dsn", "dsn_file", "claim_lease"})
		dsn, used, st := l.secret(pm, "dsn", "dsn_file")
		switch {
		case st == secretAbsent:
			d.Errorf(pv, "state.postgres needs dsn or dsn_file")
		case st == secretOK && strings.TrimSpace(dsn.Reveal()) == "":
			d.Errorf(used, "must not be empty")
		}
		pg := &Postgres{DSN: dsn, ClaimLease: DefaultClaimLease}
		if cv := pm.Get("claim_lease"); cv.Present() {
			if dur, ok := d.Duration(cv); ok {
				if dur < time.Second {
					d.Errorf(cv, "must be at least 1s")
				} else {
					pg.ClaimLease = dur
				}
			}
		}
		l.cfg.State.Postgres = pg
		return
	}
	if s, ok := d.String(v); ok {
		if s == "" {
			d.Errorf(v, "must not be empty")
		}
		p = s
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(l.absDir, p)
	}
	l.cfg.State.Path = filepath.Clean(p)
}

func (l *loader) reconcile(m *strict.Map) {
	d := l.d
	l.cfg.Reconcile.Schedule = DefaultReconcileSchedule
	l.cfg.Reconcile.MaxDeletes = DefaultMaxDeletes
	if v := m.Get("max_deletes"); v.Present() {
		if n, ok := d.Int(v); ok {
			if n < 1 {
				d.Errorf(v, "must be at least 1")
			} else {
				l.cfg.Reconcile.MaxDeletes = n
			}
		}
	}
	v := m.Get("schedule")
	if s, ok := d.String(v); ok {
		if s == "" {
			d.Errorf(v, "must not be empty")
		} else if problem := checkCron(s); problem != "" {
			d.Errorf(v, "%s", problem)
		} else {
			l.cfg.Reconcile.Schedule = s
		}
	}
}

func (l *loader) poll(m *strict.Map) {
	d := l.d
	l.cfg.Poll.Schedule = DefaultPollSchedule
	v := m.Get("schedule")
	if s, ok := d.String(v); ok {
		if s == "" {
			l.cfg.Poll.Schedule = "" // polling off
		} else if problem := checkCron(s); problem != "" {
			d.Errorf(v, "%s", problem)
		} else {
			l.cfg.Poll.Schedule = s
		}
	}
}

func (l *loader) admin(m *strict.Map) {
	tok, used, st := l.secret(m, "token", "token_file")
	if st != secretOK {
		return
	}
	if strings.ContainsFunc(string(tok), func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		l.d.Errorf(used, "must not contain spaces or control characters")
		return
	}
	l.cfg.Admin.Token = tok
}

// ruleFiles resolves the rule_files globs and returns the files, each once.
func (l *loader) ruleFiles(v strict.Value, topBad bool) []string {
	d := l.d
	if !v.Present() {
		if !topBad {
			d.Required(v)
		}
		return nil
	}
	items, ok := d.List(v)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.Errorf(v, "at least one pattern is required")
		return nil
	}
	var files []string
	seen := map[string]bool{}
	for _, it := range items {
		if !it.Present() {
			d.Errorf(it, "must be a string, not null")
			continue
		}
		p, ok := d.String(it)
		if !ok {
			continue
		}
		l.cfg.RuleFiles = append(l.cfg.RuleFiles, p)
		matched, err := rules.Glob(p, l.dir)
		if err != nil {
			d.Errorf(it, "%v", err)
			continue
		}
		for _, f := range matched {
			key, err := filepath.Abs(f)
			if err != nil {
				key = f
			}
			if !seen[key] {
				seen[key] = true
				files = append(files, f)
			}
		}
	}
	return files
}

type secretState int

const (
	secretAbsent secretState = iota
	secretOK
	secretBad // reported
)

// secret reads a secret given either inline (key) or in a file (fileKey,
// relative to the config file's directory; trailing newlines trimmed).
func (l *loader) secret(m *strict.Map, key, fileKey string) (Secret, strict.Value, secretState) {
	d := l.d
	v, fv := m.Get(key), m.Get(fileKey)
	if v.Present() && fv.Present() {
		d.ErrorfAt(fv.Line, fv, "%s and %s are both set; use one", v.Path, fv.Path)
		return "", fv, secretBad
	}
	if v.Present() {
		s, ok := d.String(v)
		if !ok {
			return "", v, secretBad
		}
		return Secret(s), v, secretOK
	}
	if !fv.Present() {
		return "", v, secretAbsent
	}
	p, ok := d.String(fv)
	if !ok {
		return "", fv, secretBad
	}
	if p == "" {
		d.Errorf(fv, "must not be empty")
		return "", fv, secretBad
	}
	full := p
	if !filepath.IsAbs(full) {
		full = filepath.Join(l.dir, full)
	}
	data, err := rules.ReadFile(full)
	if err != nil {
		d.Errorf(fv, "cannot read %q: %v", p, err)
		return "", fv, secretBad
	}
	if a, err := filepath.Abs(full); err == nil {
		l.cfg.Files = append(l.cfg.Files, a)
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		d.Errorf(fv, "%q is empty", p)
		return "", fv, secretBad
	}
	return Secret(s), fv, secretOK
}

func isAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// checkURL checks an absolute http(s) URL with a host and no query, fragment
// or user info, and returns it without trailing slashes. A URL with an "@" is
// never repeated in a message: it may hold a password.
// urlPath is the path of an absolute URL that checkURL accepted, "" for none.
func urlPath(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return strings.TrimRight(u.EscapedPath(), "/")
}

func checkURL(s string) (string, string) {
	show := strconv.Quote(s)
	if strings.Contains(s, "@") {
		show = "the URL"
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", show + " is not a valid URL"
	case u.User != nil:
		return "", "must not contain a user name or password"
	case u.Scheme != "http" && u.Scheme != "https":
		return "", show + " is not an absolute http or https URL"
	case u.Host == "":
		return "", show + " has no host"
	case u.RawQuery != "" || u.ForceQuery:
		return "", show + " must not have a query"
	case strings.Contains(s, "#"):
		return "", show + " must not have a fragment"
	}
	return strings.TrimRight(s, "/"), ""
}

// checkListen checks a host:port listen address with a numeric port.
func checkListen(s string) string {
	if s == "" {
		return "must not be empty"
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		return fmt.Sprintf("%q is not a host:port address (%s)", s, reason)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("%q has an invalid port (want 0 to 65535)", s)
	}
	return ""
}

// overlap reports whether two valid listen addresses would claim the same
// socket: the same fixed port on the same host or on a wildcard host.
func overlap(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if na == 0 || na != nb {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return strings.EqualFold(ha, hb) || wild(ha) || wild(hb)
}

// checkCron checks a robfig/cron spec: five fields, or a descriptor such as
// "@daily" or "@every 10m", optionally after "TZ=Zone ".
func checkCron(s string) (problem string) {
	defer func() {
		if recover() != nil { // cron v3 panics on some malformed TZ= prefixes
			problem = fmt.Sprintf("%q is not a valid cron spec", s)
		}
	}()
	if _, err := cron.ParseStandard(s); err != nil {
		return fmt.Sprintf("%q is not a valid cron spec: %v", s, err)
	}
	spec := s
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		if i := strings.IndexByte(spec, ' '); i >= 0 {
			spec = strings.TrimSpace(spec[i:])
		}
	}
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		if dur, err := time.ParseDuration(rest); err == nil && dur < time.Second {
			return fmt.Sprintf("%q: the interval must be at least 1s", s)
		}
	}
	return ""
}
