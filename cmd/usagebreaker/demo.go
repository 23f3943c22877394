package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

const demoRules = `rules:
  - name: spend-daily
    description: Suspend a tenant that spends more than $10 in a day
    accounts:
      include: ["*"]
      exclude: ["internal-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "10"
    action: suspend
  - name: sms-burst
    description: Report (dry run) a tenant sending more than 100 SMS in a day
    accounts:
      include: ["tenant-*"]
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 100
    action: suspend
    dry_run: true
`

// cmdDemo is `usagebreaker demo [--once]`: the whole loop against the built-in
// simulator, narrated. Exit 0 when the demo tenant was suspended.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	once := fs.Bool("once", false, "exit after the suspension instead of serving until Ctrl-C")
	quiet := fs.Bool("quiet", false, "only the narration, no daemon logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runDemo(ctx, *once, *quiet, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "demo failed:", err)
		return 1
	}
	return 0
}

type narrator struct {
	w    io.Writer
	step int
}

func (n *narrator) say(format string, a ...any) {
	n.step++
	fmt.Fprintf(n.w, "\n[%d] %s\n", n.step, fmt.Sprintf(format, a...))
}

func (n *narrator) detail(format string, a ...any) {
	fmt.Fprintf(n.w, "    %s\n", fmt.Sprintf(format, a...))
}

// listenLoopback listens on 127.0.0.1:port, or on a free port if that is taken.
func listenLoopback(port int) (net.Listener, error) {
	if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		return ln, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

func runDemo(ctx context.Context, once, quiet bool, stdout, stderr io.Writer) error {
	n := &narrator{w: stdout}
	fmt.Fprintln(stdout, "usagebreaker demo: a Twilio parent account with three subaccounts, a simulated Twilio, and the breaker.")
	fmt.Fprintln(stdout, "Nothing leaves this machine: every address is on 127.0.0.1.")

	// 1. A simulated Twilio.
	sim := twiliosim.New(twiliosim.Options{})
	defer sim.Close()
	simLn, err := listenLoopback(0)
	if err != nil {
		return err
	}
	simSrv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = simSrv.Serve(simLn) }()
	defer simSrv.Close()
	simURL := "http://" + simLn.Addr().String()
	parent := sim.Parent()
	acme := sim.CreateSubaccount("tenant-acme")
	globex := sim.CreateSubaccount("tenant-globex")
	internal := sim.CreateSubaccount("internal-qa")
	n.say("Started a simulated Twilio API at %s", simURL)
	n.detail("parent account  %s", parent.SID)
	n.detail("subaccount      %s  tenant-acme    (a customer)", acme.SID)
	n.detail("subaccount      %s  tenant-globex  (a customer)", globex.SID)
	n.detail("subaccount      %s  internal-qa    (excluded by the rules)", internal.SID)

	// 2. Config and rules, as an operator would write them.
	dir, err := os.MkdirTemp("", "usagebreaker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cbLn, err := listenLoopback(0)
	if err != nil {
		return err
	}
	adminLn, err := listenLoopback(9111)
	if err != nil {
		return err
	}
	publicURL := "http://" + cbLn.Addr().String()
	cfgText := fmt.Sprintf(`instance: demo
twilio:
  account_sid: %s
  auth_token: %s
  api_base_url: %s
server:
  listen: %q
  public_url: %s
  admin_listen: %q
state:
  path: state/usagebreaker.db
reconcile:
  schedule: "@every 1m"
rule_files: ["rules/*.yaml"]
poll:
  schedule: ""
`, parent.SID, parent.AuthToken, simURL, cbLn.Addr().String(), publicURL, adminLn.Addr().String())
	if err := os.MkdirAll(filepath.Join(dir, "rules"), 0o755); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "rules", "demo.yaml"), []byte(demoRules), 0o644); err != nil {
		return err
	}
	n.say("Wrote a config and a rule file in %s", dir)
	for _, line := range strings.Split(strings.TrimSpace(demoRules), "\n") {
		n.detail("%s", line)
	}

	// 3. The daemon.
	var logw io.Writer = stderr
	if quiet {
		logw = io.Discard
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := daemon.New(ctx, daemon.Options{ConfigPath: cfgPath, Logger: log, CallbackListener: cbLn, AdminListener: adminLn,
		ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	runCtx, stopDaemon := context.WithCancel(ctx)
	defer stopDaemon()
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(runCtx) }()
	adminURL := "http://" + adminLn.Addr().String()
	if err := waitFor(ctx, 20*time.Second, d.Ready); err != nil {
		return fmt.Errorf("the daemon did not become ready: %w", err)
	}
	n.say("usagebreaker is running: callbacks on %s, admin on %s", publicURL, adminURL)
	st := sim.State()
	for _, a := range st.Accounts {
		var ts []string
		for _, t := range a.Triggers {
			ts = append(ts, fmt.Sprintf("%s (%s by %s >= %s, %s)", t.FriendlyName, t.UsageCategory, t.TriggerBy, t.TriggerValue, t.Recurring))
		}
		if len(ts) == 0 {
			ts = []string{"no triggers"}
		}
		n.detail("%-14s %s", a.FriendlyName, strings.Join(ts, "; "))
	}

	// 4. A usage ramp on tenant-acme; a little usage on tenant-globex.
	n.say("tenant-acme starts spending (an SMS pumping attack, say): $1.50 every step")
	if _, err := sim.AddUsage(twiliosim.UsageInput{AccountSID: globex.SID, Category: "sms", Count: decimal.FromInt(40), Usage: decimal.FromInt(40), Price: decimal.MustParse("3.20")}); err != nil {
		return err
	}
	spent := decimal.Zero
	var fired []twiliosim.Firing
	for i := 0; i < 20 && len(fired) == 0; i++ {
		step := decimal.MustParse("1.50")
		spent = spent.Add(step)
		f, err := sim.AddUsage(twiliosim.UsageInput{AccountSID: acme.SID, Category: "sms", Count: decimal.FromInt(19), Usage: decimal.FromInt(19), Price: step})
		if err != nil {
			return err
		}
		n.detail("tenant-acme has spent $%s today", spent.StringFixed(2))
		for _, x := range f {
			if strings.HasSuffix(x.CallbackURL, "/spend-daily") {
				fired = append(fired, x)
			} else {
				n.detail("trigger %s fired too (the sms-burst rule, a dry run)", x.TriggerSID)
			}
		}
		if len(fired) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if len(fired) == 0 {
		return errors.New("the spend-daily trigger never fired")
	}
	n.say("Twilio's Usage Trigger fired: $%s >= $%s. The simulator calls back, signed with tenant-acme's auth token", fired[0].CurrentValue, fired[0].TriggerValue)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	deliveries, err := sim.Wait(wctx, fired...)
	cancel()
	if err != nil {
		return fmt.Errorf("waiting for the callback: %w", err)
	}
	for _, dl := range deliveries {
		n.detail("POST %s -> HTTP %d (attempt %d)", dl.URL, dl.Status, dl.Attempt)
	}

	// 5. The suspension.
	// Suspended at Twilio, and the outcome recorded (the write's answer
	// comes back a moment after the simulator applied it).
	if err := waitFor(ctx, 20*time.Second, func() bool {
		a, _ := sim.Account(acme.SID)
		return a.Status == twiliosim.StatusSuspended &&
			metricsHave(adminURL+"/metrics", `usagebreaker_suspensions_total{outcome="suspended",rule="spend-daily"} 1`)
	}); err != nil {
		return errors.New("tenant-acme was not suspended")
	}
	n.say("The signature checked out, the firing was recorded, and usagebreaker suspended tenant-acme through the API")
	for _, a := range sim.State().Accounts {
		n.detail("%-14s %s", a.FriendlyName, a.Status)
	}
	_, err = sim.AddUsage(twiliosim.UsageInput{AccountSID: acme.SID, Category: "sms", Count: decimal.FromInt(1), Usage: decimal.FromInt(1), Price: decimal.MustParse("0.0079")})
	n.say("tenant-acme tries to send another SMS: %v", err)
	if err == nil {
		return errors.New("the suspended tenant could still spend")
	}

	// 6. What an operator sees.
	n.say("What the operator sees on %s/metrics:", adminURL)
	if err := printMetrics(stdout, adminURL+"/metrics", "usagebreaker_suspensions_total", "usagebreaker_callbacks_total{outcome=\"accepted\"}",
		"usagebreaker_managed_triggers", "usagebreaker_incidents_total"); err != nil {
		n.detail("cannot read metrics: %v", err)
	}
	n.detail("the incident log: curl -s %s/api/v1/incidents -H 'Authorization: Bearer ...' (with admin.token set)", adminURL)
	n.detail("the simulator's view: curl -s %s/sim/state", simURL)

	if once {
		n.say("Done (--once): shutting down")
		stopDaemon()
		return <-runErr
	}
	n.say("Still serving: try the URLs above, or add usage yourself:")
	n.detail("curl -s -d AccountSid=%s -d UsageCategory=sms -d Count=500 -d Price=20 %s/sim/usage", globex.SID, simURL)
	n.detail("Press Ctrl-C to stop.")
	select {
	case <-ctx.Done():
		stopDaemon()
		return <-runErr
	case err := <-runErr:
		return err
	}
}

func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// metricLines returns the lines of the metrics page at url.
func metricLines(url string) ([]string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}

// metricsHave reports whether the metrics at url include line.
func metricsHave(url, line string) bool {
	lines, _ := metricLines(url)
	return slices.Contains(lines, line)
}

// printMetrics prints the non-zero metric lines that start with one of the prefixes.
func printMetrics(w io.Writer, url string, prefixes ...string) error {
	lines, err := metricLines(url)
	for _, line := range lines {
		if strings.HasSuffix(line, " 0") {
			continue // series primed at zero: nothing happened there
		}
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				fmt.Fprintf(w, "    %s\n", line)
				break
			}
		}
	}
	return err
}
