// Command ubbench measures usagebreaker the way operators will stress it. It
// starts the real binaries as separate processes on loopback, the Twilio
// simulator (`usagebreaker sim`) and the daemon (`usagebreaker run`), so the
// daemon's memory and latency are its own:
//
//	go build -o /tmp/usagebreaker ./cmd/usagebreaker
//	go run ./bench/ubbench -bin /tmp/usagebreaker reconcile -accounts 10000 -delay 20ms
//	go run ./bench/ubbench -bin /tmp/usagebreaker callbacks -accounts 2000 -mode latency
//	go run ./bench/ubbench -bin /tmp/usagebreaker callbacks -mode valid -n 20000 -concurrency 32
//	go run ./bench/ubbench -bin /tmp/usagebreaker callbacks -mode forged -duration 10s -concurrency 64
//	(cd bench/node && npm ci) && go run ./bench/ubbench -bin /tmp/usagebreaker sidebyside -accounts 2000 -rounds 3 -strace
//
// See docs/BENCHMARKS.md for the results and what bounds each number.
package main

import (
	"flag"
	"fmt"
	"os"
)

// logDir is -log-dir.
var logDir string

// postgresDSN is -postgres: the daemon's state in this Postgres database
// (state.postgres) instead of a SQLite file.
var postgresDSN string

func main() {
	fs := flag.NewFlagSet("ubbench", flag.ExitOnError)
	bin := fs.String("bin", "", "path to a built usagebreaker binary (required)")
	keep := fs.Bool("keep", false, "keep the temporary directory (config, state, logs)")
	fs.StringVar(&postgresDSN, "postgres", "", "put the daemon's state in this Postgres `DSN` (an empty database or schema) instead of SQLite")
	fs.StringVar(&logDir, "log-dir", "", "write the daemon's log here instead of the temporary directory (e.g. a tmpfs: /dev/shm)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: ubbench -bin PATH (reconcile|callbacks|sidebyside) [flags]")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if *bin == "" || fs.NArg() < 1 {
		fs.Usage()
		os.Exit(2)
	}
	var err error
	switch fs.Arg(0) {
	case "reconcile":
		err = reconcileCmd(*bin, *keep, fs.Args()[1:])
	case "callbacks":
		err = callbacksCmd(*bin, *keep, fs.Args()[1:])
	case "sidebyside":
		err = sidebysideCmd(*bin, *keep, fs.Args()[1:])
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ubbench:", err)
		os.Exit(1)
	}
}
