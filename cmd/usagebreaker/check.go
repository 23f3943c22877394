package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/usagebreaker/usagebreaker/config"
)

const checkUsage = `usage: usagebreaker check --config FILE

Loads and validates the config file and every rule file it names, offline
(Twilio is never contacted). Prints "ok: N rules" and exits 0 when they are
valid; otherwise prints one FILE:LINE: message per problem on stderr and
exits 1.
`

// cmdCheck is "usagebreaker check --config FILE".
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "the config `FILE`")
	fs.Usage = func() {
		fmt.Fprint(stderr, checkUsage+"\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usagebreaker check: unexpected argument %q\n\n%s", fs.Arg(0), checkUsage)
		return 2
	}
	if *configPath == "" {
		fmt.Fprintf(stderr, "usagebreaker check: --config is required\n\n%s", checkUsage)
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, p := range errs {
				fmt.Fprintln(stderr, p)
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, w) // FILE:LINE: warning: ...; not a reason to refuse
	}
	fmt.Fprintf(stdout, "ok: %d rules\n", cfg.Rules.Len())
	return 0
}
