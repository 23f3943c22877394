// Command usagebreaker protects a Twilio parent account from runaway spend in
// its subaccounts. See README.md. This file only dispatches to the commands;
// each lives in its own file.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/usagebreaker/usagebreaker/internal/version"
)

const usage = `usage: usagebreaker COMMAND [flags]

commands:
  run --config FILE          run the daemon
  check --config FILE        validate the config and its rule files offline
  test rules FILE...         run rule unit tests offline
  backtest --config FILE --from DAY --to DAY [--format table|csv|json]
                             replay Twilio's daily usage history against the rules (read-only)
  migrate --config FILE --from-sqlite PATH
                             move a SQLite state into the config's Postgres (docs/HA.md)
  demo [--once]              the whole loop against the built-in Twilio simulator
  sim --listen ADDR          the Twilio API simulator on its own
  version                    print version, commit and Go version
  healthcheck [--url URL]    exit 0 if the admin listener says healthy
  incidents [--admin-url URL]
                             list recent incidents (admin API; USAGEBREAKER_ADMIN_TOKEN)
  reactivate SID --reason TEXT [--admin-url URL]
                             reactivate a subaccount the breaker suspended, and re-arm it
  approve ID --reason TEXT [--admin-url URL]
  veto ID --reason TEXT [--admin-url URL]
                             decide an incident that awaits approval (a rule's approval)
  release guard|deletes [--admin-url URL]
                             execute the suspensions the guard holds, or the trigger
                             deletions a reconcile held (reconcile.max_deletes)

The admin URL defaults to $USAGEBREAKER_ADMIN_URL, else http://127.0.0.1:9111.

Run "usagebreaker COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest, stdout, stderr)
	case "check":
		return cmdCheck(rest, stdout, stderr)
	case "test":
		return cmdTest(rest, stdout, stderr)
	case "backtest":
		return cmdBacktest(rest, stdout, stderr)
	case "migrate":
		return cmdMigrate(rest, stdout, stderr)
	case "demo":
		return cmdDemo(rest, stdout, stderr)
	case "sim":
		return cmdSim(rest, stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(rest, stdout, stderr)
	case "incidents":
		return cmdIncidents(rest, stdout, stderr)
	case "reactivate":
		return cmdReactivate(rest, stdout, stderr)
	case "approve", "veto":
		return cmdDecide(cmd, rest, stdout, stderr)
	case "release":
		return cmdRelease(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, version.String())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "usagebreaker: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}
