package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/replay"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

const backtestUsage = `usage: usagebreaker backtest --config FILE --from DAY --to DAY [--format table|csv|json]

Reads each matched subaccount's daily Usage Records from Twilio for the days
--from to --to (YYYY-MM-DD, GMT, both included) and lists every trip the
rules in force would have made: rule, subaccount, day, value, threshold and
outcome (suspended, already_suspended, notified, dry_run, or held by the
guard). Read-only: nothing is written to Twilio or to the state; requests stay
within twilio.max_concurrency. See docs/RULES-TESTING.md for how monthly,
yearly and alltime rules and the guard map onto daily history.

Exit status: 0 done (with or without trips); 1 when the config is invalid or
Twilio cannot be read; 2 on bad usage.
`

// cmdBacktest is "usagebreaker backtest".
func cmdBacktest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the config `FILE`")
	fromS := fs.String("from", "", "first `DAY` (YYYY-MM-DD, GMT)")
	toS := fs.String("to", "", "last `DAY` (YYYY-MM-DD, GMT), included")
	format := fs.String("format", "table", "output: table, csv or json (one object per line)")
	fs.Usage = func() {
		fmt.Fprint(stderr, backtestUsage+"\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	from, errFrom := time.Parse(time.DateOnly, *fromS)
	to, errTo := time.Parse(time.DateOnly, *toS)
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "usagebreaker backtest: unexpected argument %q\n\n%s", fs.Arg(0), backtestUsage)
		return 2
	case *cfgPath == "":
		fmt.Fprintf(stderr, "usagebreaker backtest: --config is required\n\n%s", backtestUsage)
		return 2
	case errFrom != nil || errTo != nil:
		fmt.Fprintf(stderr, "usagebreaker backtest: --from and --to are required, as YYYY-MM-DD\n\n%s", backtestUsage)
		return 2
	case to.Before(from):
		fmt.Fprintln(stderr, "usagebreaker backtest: --to is before --from")
		return 2
	case *format != "table" && *format != "csv" && *format != "json":
		fmt.Fprintf(stderr, "usagebreaker backtest: --format %q: want table, csv or json\n", *format)
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		printStartError(stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	api, err := twilioapi.New(twilioapi.Options{
		AccountSID:     cfg.Twilio.AccountSID,
		AuthToken:      cfg.Twilio.AuthToken.Reveal(),
		BaseURL:        cfg.Twilio.APIBaseURL,
		MaxConcurrency: cfg.Twilio.MaxConcurrency,
		Timeout:        cfg.Twilio.Timeout,
		Logger:         slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(stderr, "usagebreaker backtest: twilio client:", err)
		return 1
	}
	o := replay.BacktestOptions{
		Rules: cfg.Rules, From: from, To: to, DryRun: cfg.DryRun,
		Guard:       breaker.GuardSettings{MaxSuspensions: cfg.Guard.MaxSuspensions, Window: cfg.Guard.Window},
		Concurrency: cfg.Twilio.MaxConcurrency,
	}
	if isTerminal(stderr) {
		o.Progress = func(done, total, calls int) {
			fmt.Fprintf(stderr, "\rbacktest: %d/%d subaccounts read (%d calls)", done, total, calls)
			if done == total {
				fmt.Fprintln(stderr)
			}
		}
	}
	res, err := replay.Backtest(ctx, api, o)
	if err != nil {
		if o.Progress != nil {
			fmt.Fprintln(stderr)
		}
		fmt.Fprintln(stderr, "usagebreaker backtest:", err)
		return 1
	}
	if err := writeTrips(stdout, *format, res.Trips); err != nil {
		fmt.Fprintln(stderr, "usagebreaker backtest:", err)
		return 1
	}
	fmt.Fprintf(stderr, "backtest %s to %s: %d trips; %d of %d subaccounts matched, %d usage record listings read\n",
		*fromS, *toS, len(res.Trips), res.Matched, res.Subaccounts, res.Calls)
	return 0
}

// writeTrips writes the trips as a table, CSV or JSON lines.
func writeTrips(w io.Writer, format string, trips []replay.BacktestTrip) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		for _, t := range trips {
			if err := enc.Encode(struct {
				Rule        string `json:"rule"`
				AccountSID  string `json:"account_sid"`
				AccountName string `json:"account_name"`
				Day         string `json:"day"`
				Value       string `json:"value"`
				Threshold   string `json:"threshold"`
				Outcome     string `json:"outcome"`
			}{t.Rule, t.AccountSID, t.AccountName, t.Day, t.Value.String(), t.Threshold.String(), t.Outcome}); err != nil {
				return err
			}
		}
		return nil
	case "csv":
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"rule", "account_sid", "account_name", "day", "value", "threshold", "outcome"})
		for _, t := range trips {
			_ = cw.Write([]string{t.Rule, t.AccountSID, t.AccountName, t.Day, t.Value.String(), t.Threshold.String(), t.Outcome})
		}
		cw.Flush()
		return cw.Error()
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DAY\tRULE\tSUBACCOUNT\tSID\tVALUE\tTHRESHOLD\tOUTCOME")
	for _, t := range trips {
		outcome := t.Outcome
		if outcome == replay.OutcomeHeld {
			outcome = "HELD (guard)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Day, t.Rule, t.AccountName, t.AccountSID, t.Value, t.Threshold, outcome)
	}
	return tw.Flush()
}

// isTerminal reports whether w is a terminal (progress is shown only there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
