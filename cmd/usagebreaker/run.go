package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/daemon"
)

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: readableDurations}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// readableDurations writes every duration as Go prints it ("1h0m0s", "250ms"),
// in JSON as in text, instead of JSON's raw nanoseconds.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// cmdRun is `usagebreaker run --config FILE`: the daemon. Exit 0 after a clean
// shutdown on SIGTERM/SIGINT; 1 on bad config or a failed start.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (required)")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	shutdown := fs.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	dryRun := fs.Bool("dry-run", false, "every rule is a dry run: record and report what would be done, suspend nothing (as dry_run: true in the config)")
	watch := fs.Duration("watch-interval", 5*time.Second, "how often to check the config, rule and secret files for changes and reload them; 0 turns it off")
	replica := fs.String("replica", "", "this replica's name in logs, metrics and claims (default: the host name); with state.postgres, replicas must have different names")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: usagebreaker run --config FILE [--log-format json|text] [--log-level info] [--shutdown-timeout 10s] [--watch-interval 5s] [--dry-run]")
		return 2
	}
	if *shutdown <= 0 || *watch < 0 {
		fmt.Fprintln(stderr, "usagebreaker: --shutdown-timeout must be > 0 and --watch-interval >= 0")
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "usagebreaker:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := daemon.New(ctx, daemon.Options{ConfigPath: *cfgPath, Logger: log, ShutdownTimeout: *shutdown, WatchInterval: *watch, DryRun: *dryRun, Replica: *replica})
	if err != nil {
		printStartError(stderr, err)
		return 1
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: reloading config")
			_ = d.Reload() // logs its own outcome
		}
	}()
	if err := d.Run(ctx); err != nil {
		printStartError(stderr, err)
		return 1
	}
	return 0
}

// printStartError writes a config problem list one per line, else the error.
func printStartError(w io.Writer, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, line := range strings.Split(strings.TrimSpace(err.Error()), "\n") {
			fmt.Fprintln(w, line)
		}
		return
	}
	fmt.Fprintln(w, "usagebreaker:", err)
}

// cmdHealthcheck is `usagebreaker healthcheck [--url URL]`, for container
// health checks in an image without a shell.
func cmdHealthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	urlFlag := fs.String("url", "", "the admin listener's base URL (default $"+adminURLEnv+", else "+defaultAdminURL+")")
	adminURL := adminURLFlag(fs) // the same, named as on the other commands
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	flagValue := *urlFlag
	if flagValue == "" {
		flagValue = *adminURL
	}
	base, from := adminTarget(flagValue)
	u := strings.TrimRight(base, "/")
	if !strings.HasSuffix(u, "/-/healthy") {
		u += "/-/healthy"
	}
	c := &http.Client{Timeout: *timeout}
	resp, err := c.Get(u)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", unreachable(u, from, err))
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy:", resp.Status)
		return 1
	}
	fmt.Fprintln(stdout, "healthy")
	return 0
}
