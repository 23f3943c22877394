package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/replay"
)

const testRulesUsage = `usage: usagebreaker test rules FILE...

Runs rule unit tests: each FILE names rule files (relative to itself) and
cases of subaccounts, their usage as Twilio would report it, and the trips
the rules must make (see docs/RULES-TESTING.md). The cases go through the
same decision as live callbacks and polls. Offline: Twilio is never called.

Exit status: 0 when every case passes; 1 with one
FILE:LINE: case NAME: want ..., got ... per failed expectation; 2 when a
test or rule file is invalid (FILE:LINE: message per problem) or on bad usage.
`

// cmdTest is "usagebreaker test rules FILE...".
func cmdTest(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "rules" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(stdout, testRulesUsage)
			return 0
		}
		fmt.Fprint(stderr, testRulesUsage)
		return 2
	}
	fs := flag.NewFlagSet("test rules", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, testRulesUsage) }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "usagebreaker test rules: no test file given\n\n%s", testRulesUsage)
		return 2
	}
	status := 0
	for _, path := range fs.Args() {
		tf, err := replay.LoadTestFile(path)
		if err != nil {
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, p := range errs {
					fmt.Fprintln(stderr, p)
				}
			} else {
				fmt.Fprintln(stderr, err)
			}
			status = 2
			continue
		}
		fails := tf.Run()
		for _, f := range fails {
			fmt.Fprintln(stderr, f)
		}
		if len(fails) > 0 {
			fmt.Fprintf(stdout, "%s: FAILED: %d of %d cases\n", path, failedCases(fails), len(tf.Cases))
			status = max(status, 1)
			continue
		}
		fmt.Fprintf(stdout, "%s: ok: %d cases\n", path, len(tf.Cases))
	}
	return status
}

func failedCases(fails []replay.Failure) int {
	seen := map[string]bool{}
	for _, f := range fails {
		seen[f.Case] = true
	}
	return len(seen)
}
