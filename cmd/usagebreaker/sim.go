package main

import (
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
	"syscall"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// cmdSim runs the Twilio API simulator on its own until SIGTERM or SIGINT.
func cmdSim(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "address to serve the simulator on, e.g. 127.0.0.1:8089 (required)")
	sid := fs.String("account-sid", "", "the parent account SID (AC + 32 hex digits); random when empty")
	token := fs.String("auth-token", "", "the parent auth token (32 letters or digits); random when empty")
	verbose := fs.Bool("verbose", false, "log every firing and callback delivery to stderr")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: usagebreaker sim --listen ADDR [--account-sid SID --auth-token TOKEN]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usagebreaker sim: unexpected arguments: %v\n", fs.Args())
		return 2
	}
	if *listen == "" {
		fmt.Fprintln(stderr, "usagebreaker sim: --listen is required")
		return 2
	}
	if (*sid == "") != (*token == "") {
		fmt.Fprintln(stderr, "usagebreaker sim: give both --account-sid and --auth-token, or neither")
		return 2
	}
	if *sid != "" && !twiliosim.ValidAccountSID(*sid) {
		fmt.Fprintf(stderr, "usagebreaker sim: --account-sid %q is not AC followed by 32 hex digits\n", *sid)
		return 2
	}
	if *token != "" && !twiliosim.ValidAuthToken(*token) {
		fmt.Fprintln(stderr, "usagebreaker sim: --auth-token must be 32 letters or digits (twilio-go rejects other credentials)")
		return 2
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	sim := twiliosim.New(twiliosim.Options{ParentSID: *sid, ParentAuthToken: *token, Logger: logger})
	defer sim.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "usagebreaker sim: %v\n", err)
		return 1
	}
	base := "http://" + displayAddr(ln.Addr())
	parent := sim.Parent()
	fmt.Fprintf(stdout, "usagebreaker sim: Twilio API simulator listening on %s\n", base)
	fmt.Fprintf(stdout, "TWILIO_ACCOUNT_SID=%s\n", parent.SID)
	fmt.Fprintf(stdout, "TWILIO_AUTH_TOKEN=%s\n", parent.AuthToken)
	fmt.Fprintf(stdout, "api_base_url: %s\n", base)
	fmt.Fprintf(stdout, "control: POST %s/sim/accounts, /sim/usage, /sim/history, /sim/clock, /sim/faults, /sim/calls; GET %s/sim/state\n", base, base)

	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "usagebreaker sim: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sim.Close() // stop callbacks in flight first: they may be what a handler waits for (Wait=true)
	if err := srv.Shutdown(shutdown); err != nil {
		_ = srv.Close()
	}
	fmt.Fprintln(stdout, "usagebreaker sim: stopped")
	return 0
}

// displayAddr turns a listener address into one a client can dial: the
// unspecified address becomes the loopback.
func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := tcp.IP.String()
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, fmt.Sprint(tcp.Port))
}
