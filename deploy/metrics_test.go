package deploy_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// contractMetrics is the Metrics table of the product's contract (names and
// types). The dashboard and the alerts may use these even before this build
// exports them (some arrive with other issues); the test says which ones are
// contract-only.
var contractMetrics = map[string]string{
	"usagebreaker_callbacks_total":                              "counter",
	"usagebreaker_suspensions_total":                            "counter",
	"usagebreaker_managed_triggers":                             "gauge",
	"usagebreaker_reconcile_duration_seconds":                   "histogram",
	"usagebreaker_reconcile_last_success_timestamp_seconds":     "gauge",
	"usagebreaker_twilio_requests_total":                        "counter",
	"usagebreaker_twilio_request_duration_seconds":              "histogram",
	"usagebreaker_config_last_reload_successful":                "gauge",
	"usagebreaker_config_last_reload_success_timestamp_seconds": "gauge",
	"usagebreaker_build_info":                                   "gauge",
	"usagebreaker_incidents_total":                              "counter",
	"usagebreaker_actions_pending":                              "gauge",
	"usagebreaker_notifications_total":                          "counter",
	"usagebreaker_reactivations_total":                          "counter",
	"usagebreaker_guard_held":                                   "gauge",
}

// scrapeMetrics are made by Prometheus itself for every target.
var scrapeMetrics = []string{"up"}

// exported is what the daemon's registry exports: every registered name (from
// the collectors' descriptions, so label vectors without series count too)
// and the type of those that have series after a trip.
type exported struct {
	names map[string]bool
	types map[string]dto.MetricType
}

var (
	exportedOnce sync.Once
	exportedVal  exported
	exportedErr  error
)

// daemonMetrics runs a daemon against the simulator through one reconcile
// and one trip, then reads its registry.
func daemonMetrics(t *testing.T) exported {
	t.Helper()
	exportedOnce.Do(func() {
		exportedVal, exportedErr = collectExported(t)
	})
	if exportedErr != nil {
		t.Fatal(exportedErr)
	}
	return exportedVal
}

const tripRules = `rules:
  - name: spend-daily
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`

const tripConfig = `instance: deploytest
twilio:
  account_sid: ${TWILIO_ACCOUNT_SID}
  auth_token: ${TWILIO_AUTH_TOKEN}
server:
  listen: ":8080"
  public_url: https://breaker.example.com
  admin_listen: ":9111"
state:
  path: /var/lib/usagebreaker/usagebreaker.db
reconcile:
  schedule: "@every 1h"
rule_files: ["rules/*.yaml"]
poll:
  schedule: ""
`

// simParent are fixed parent credentials for the simulator in tests.
const (
	simParentSID   = "AC00000000000000000000000000000001"
	simParentToken = "0123456789abcdef0123456789abcdef"
)

func collectExported(t *testing.T) (exported, error) {
	t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
	t.Setenv("TWILIO_AUTH_TOKEN", simParentToken)
	s := startStack(t, stackOptions{Config: []byte(tripConfig), Files: map[string]string{"rules/main.yaml": tripRules},
		ParentSID: simParentSID, ParentToken: simParentToken})
	tenant := s.sim.CreateSubaccount("tenant-a")
	s.d.RequestReconcile()
	waitFor(t, 60*time.Second, "the trigger on tenant-a", func() bool { return len(s.sim.Triggers(tenant.SID)) == 1 })
	f, err := s.sim.AddUsage(twiliosim.UsageInput{AccountSID: tenant.SID, Category: "sms", Count: decimal.MustParse("100"),
		Usage: decimal.MustParse("100"), Price: decimal.MustParse("60")})
	if err != nil {
		return exported{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.sim.Wait(ctx, f...); err != nil {
		return exported{}, err
	}
	waitFor(t, 60*time.Second, "tenant-a suspended", func() bool { return s.accountStatus(t, tenant.SID) == "suspended" })

	e := exported{names: map[string]bool{}, types: map[string]dto.MetricType{}}
	ch := make(chan *prometheus.Desc)
	go func() { s.d.Registry().Describe(ch); close(ch) }()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			return exported{}, fmt.Errorf("cannot read the name of %s", d)
		}
		e.names[m[1]] = true
	}
	mfs, err := s.d.Registry().Gather()
	if err != nil {
		return exported{}, err
	}
	for _, mf := range mfs {
		e.types[mf.GetName()] = mf.GetType()
	}
	return e, nil
}

// metricNames returns the metric names a PromQL expression selects (not
// functions, keywords, label names, grouping labels, strings, durations or
// Grafana variables).
func metricNames(expr string) ([]string, error) {
	var names []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"inf": true, "nan": true, "atan2": true,
		// aggregations, which may be followed by "by (...)" before their "(":
		"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
		"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
		"limitk": true, "limit_ratio": true}
	grouping := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true}
	skipString := func(i int) (int, error) {
		q := expr[i]
		for j := i + 1; j < len(expr); j++ {
			if expr[j] == '\\' && q != '`' {
				j++
				continue
			}
			if expr[j] == q {
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string in %q", expr)
	}
	// skipTo skips a bracketed part, strings inside included.
	skipTo := func(i int, close byte) (int, error) {
		for j := i + 1; j < len(expr); {
			switch c := expr[j]; {
			case c == '"' || c == '\'' || c == '`':
				k, err := skipString(j)
				if err != nil {
					return 0, err
				}
				j = k
			case c == close:
				return j + 1, nil
			default:
				j++
			}
		}
		return 0, fmt.Errorf("unclosed %q in %q", close, expr)
	}
	nextNonSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '{':
			j, err := skipTo(i, '}')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '[':
			j, err := skipTo(i, ']')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '$': // a Grafana variable: $name or ${name}
			i++
			if i < len(expr) && expr[i] == '{' {
				j, err := skipTo(i, '}')
				if err != nil {
					return nil, err
				}
				i = j
				continue
			}
			for i < len(expr) && isPart(expr[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := nextNonSpace(j)
			switch {
			case grouping[word]:
				if k < len(expr) && expr[k] == '(' {
					end, err := skipTo(k, ')')
					if err != nil {
						return nil, err
					}
					j = end
				}
			case k < len(expr) && expr[k] == '(': // a function or aggregation
			case keywords[strings.ToLower(word)]:
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

func TestMetricNamesParser(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (rule) (increase(usagebreaker_incidents_total{job=~"$job", rule!="a}b"}[$__rate_interval]))`: {"usagebreaker_incidents_total"},
		`time() - ((a > 0) or on (job, instance) (b and on (job, instance) c)) > 3600`:                       {"a", "b", "c"},
		`histogram_quantile(0.95, sum without(code) (rate(x_bucket[5m]))) / y offset 1h`:                     {"x_bucket", "y"},
		"absent(up{job=\"usagebreaker\"})\n# a comment with words\n":                                         {"up"},
		`sum(rate(m[5m])) by (operation) > bool 1e3`:                                                         {"m"},
	} {
		got, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %v", expr, err)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %v, want %v", expr, got, want)
		}
	}
	if _, err := metricNames(`x{a="b}`); err == nil {
		t.Error("an unterminated string was accepted")
	}
}

// exprRef is one PromQL expression and where it is.
type exprRef struct{ where, expr string }

// checkExported fails for every metric an expression uses that the daemon
// does not export and the contract does not name, and logs the contract-only
// ones.
func checkExported(t *testing.T, refs []exprRef) {
	t.Helper()
	problems, contractOnly := unexported(daemonMetrics(t), refs)
	for _, p := range problems {
		t.Error(p)
	}
	var only []string
	for n := range contractOnly {
		only = append(only, n)
	}
	sort.Strings(only)
	for _, n := range only {
		t.Logf("contract-only (not exported by this build yet): %s, used by %s", n, strings.Join(slices.Compact(contractOnly[n]), "; "))
	}
}

// unexported returns a problem for every metric name in refs that e does not
// export and the contract does not name (histogram series count as their
// histogram's), and where each contract-only name is used.
func unexported(e exported, refs []exprRef) (problems []string, contractOnly map[string][]string) {
	contractOnly = map[string][]string{}
	used := 0
	for _, r := range refs {
		names, err := metricNames(r.expr)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", r.where, err))
			continue
		}
		if len(names) == 0 {
			problems = append(problems, fmt.Sprintf("%s: no metric in %q", r.where, r.expr))
		}
		for _, n := range names {
			used++
			base := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suf); ok && (e.types[b] == dto.MetricType_HISTOGRAM || contractMetrics[b] == "histogram") {
					base = b
				}
			}
			switch {
			case e.names[base]:
			case slices.Contains(scrapeMetrics, n):
			case contractMetrics[base] != "":
				contractOnly[base] = append(contractOnly[base], r.where)
			default:
				problems = append(problems, fmt.Sprintf("%s: metric %s is neither exported by the daemon nor named in the contract (expr %q)", r.where, n, r.expr))
			}
		}
	}
	if used == 0 {
		problems = append(problems, "no metric names found at all")
	}
	return problems, contractOnly
}

func TestUnexportedCatchesUnknownNames(t *testing.T) {
	e := exported{
		names: map[string]bool{"usagebreaker_callbacks_total": true, "usagebreaker_reconcile_duration_seconds": true},
		types: map[string]dto.MetricType{"usagebreaker_callbacks_total": dto.MetricType_COUNTER,
			"usagebreaker_reconcile_duration_seconds": dto.MetricType_HISTOGRAM},
	}
	problems, only := unexported(e, []exprRef{
		{"ok", `rate(usagebreaker_callbacks_total[5m]) + rate(usagebreaker_reconcile_duration_seconds_bucket[5m]) + up`},
		{"typo", `rate(usagebreaker_callback_total[5m])`},
		{"not a histogram", `usagebreaker_callbacks_total_bucket`},
		{"contract", `usagebreaker_guard_held > 0`},
	})
	if len(problems) != 2 || !strings.Contains(problems[0], "usagebreaker_callback_total") ||
		!strings.Contains(problems[1], "usagebreaker_callbacks_total_bucket") {
		t.Errorf("problems = %q", problems)
	}
	if len(only) != 1 || only["usagebreaker_guard_held"] == nil {
		t.Errorf("contract-only = %v", only)
	}
}

// TestContractMetricsExported lists the contract's metrics this build does
// not export yet, and fails if a contract name is exported with another type.
func TestContractMetricsExported(t *testing.T) {
	e := daemonMetrics(t)
	var missing []string
	for n, typ := range contractMetrics {
		if !e.names[n] {
			missing = append(missing, n)
			continue
		}
		got, ok := e.types[n]
		if ok && !strings.EqualFold(got.String(), typ) {
			t.Errorf("%s is exported as a %s; the contract says %s", n, got, typ)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Logf("contract metrics this build does not export yet: %s", strings.Join(missing, ", "))
	}
	for _, want := range []string{"usagebreaker_incidents_total", "usagebreaker_suspensions_total", "usagebreaker_build_info"} {
		if _, ok := e.types[want]; !ok {
			t.Errorf("%s has no series after a trip", want)
		}
	}
}
