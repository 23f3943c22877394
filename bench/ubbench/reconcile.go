package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// reconcileCmd: N subaccounts x 3 rules; the simulator adds a fixed delay to
// every Twilio API request. Reports the cold reconcile (request counts, wall
// time against calls x delay / max_concurrency), the steady-state reconcile
// after a restart (write calls, read calls), start-to-ready, and the daemon's RSS.
func reconcileCmd(bin string, keep bool, args []string) error {
	fs := flag.NewFlagSet("reconcile", flag.ExitOnError)
	n := fs.Int("accounts", 10000, "subaccounts")
	delay := fs.Duration("delay", 20*time.Millisecond, "delay the simulator adds to every Twilio API request")
	conc := fs.Int("concurrency", 10, "twilio.max_concurrency")
	fs.Parse(args)

	e, err := newEnv(bin, keep)
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.startSim(); err != nil {
		return err
	}
	t0 := time.Now()
	if err := e.createAccounts(*n); err != nil {
		return err
	}
	fmt.Printf("created %d subaccounts in the simulator in %s\n", *n, time.Since(t0).Round(time.Millisecond))
	if *delay > 0 {
		if err := e.fault(url.Values{"Path": {"^/2010-04-01/"}, "Times": {"-1"}, "DelayMs": {strconv.Itoa(int(delay.Milliseconds()))}}); err != nil {
			return err
		}
	}
	ctx := context.Background()
	st0, err := e.state(ctx)
	if err != nil {
		return err
	}

	// Cold: an empty state, no triggers at Twilio.
	if err := e.startDaemon(*conc, 2*time.Hour); err != nil {
		return err
	}
	ready := time.Since(e.daemonStartedAt)
	coldDur, _ := e.metric("usagebreaker_reconcile_duration_seconds_sum")
	rss, hwm := rssKiB(e.daemon.Process.Pid)
	st1, err := e.state(ctx)
	if err != nil {
		return err
	}
	cold := diff(st1.Requests, st0.Requests)
	calls := 0
	for _, c := range cold {
		calls += c
	}
	ideal := time.Duration(calls) * *delay / time.Duration(*conc)
	fmt.Printf("\ncold reconcile: %d subaccounts x 3 rules, delay %s per request, max_concurrency %d\n", *n, *delay, *conc)
	fmt.Printf("  requests by operation: %v (total %d)\n", cold, calls)
	fmt.Printf("  reconcile wall time:   %.2fs; ideal calls x delay / concurrency = %.2fs; ratio %.3f\n",
		coldDur, ideal.Seconds(), coldDur/ideal.Seconds())
	fmt.Printf("  start to ready:        %s (of which reconcile %.2fs, so %.3fs besides it)\n", ready.Round(time.Millisecond), coldDur, ready.Seconds()-coldDur)
	fmt.Printf("  daemon RSS:            %.1f MiB (peak %.1f MiB)\n", float64(rss)/1024, float64(hwm)/1024)

	// Steady: restart on the same state; everything is already in place.
	if err := e.restartDaemon(2 * time.Hour); err != nil {
		return err
	}
	ready = time.Since(e.daemonStartedAt)
	steadyDur, _ := e.metric("usagebreaker_reconcile_duration_seconds_sum")
	rss, hwm = rssKiB(e.daemon.Process.Pid)
	st2, err := e.state(ctx)
	if err != nil {
		return err
	}
	steady := diff(st2.Requests, st1.Requests)
	writes := steady["triggers.create"] + steady["triggers.update"] + steady["triggers.delete"] + steady["accounts.update"]
	reads := steady["accounts.list"] + steady["triggers.list"] + steady["accounts.fetch"]
	pages := (*n + 1 + 999) / 1000
	fmt.Printf("\nsteady-state reconcile after a restart:\n")
	fmt.Printf("  requests by operation: %v\n", steady)
	fmt.Printf("  write calls:           %d (goal 0)\n", writes)
	fmt.Printf("  read calls:            %d (goal <= %d subaccounts + %d account pages = %d)\n", reads, *n, pages, *n+pages)
	fmt.Printf("  reconcile wall time:   %.2fs\n", steadyDur)
	fmt.Printf("  start to ready:        %s (of which reconcile %.2fs, so %.3fs besides it)\n", ready.Round(time.Millisecond), steadyDur, ready.Seconds()-steadyDur)
	fmt.Printf("  daemon RSS:            %.1f MiB (peak %.1f MiB)\n", float64(rss)/1024, float64(hwm)/1024)
	return nil
}
