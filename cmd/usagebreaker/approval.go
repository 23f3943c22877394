package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
)

// cmdDecide is `usagebreaker approve|veto ID --reason TEXT`: a person's
// decision on an incident that awaits approval (a rule's approval).
func cmdDecide(verb string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: usagebreaker %s INCIDENT_ID --reason TEXT [--admin-url URL]\n", verb)
		fs.PrintDefaults()
	}
	base := adminURLFlag(fs)
	reason := fs.String("reason", "", "why (required; kept in the audit)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the admin API")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	id, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || id <= 0 {
		fmt.Fprintf(stderr, "%s: %q is not an incident ID (see usagebreaker incidents)\n", verb, pos[0])
		return 2
	}
	if strings.TrimSpace(*reason) == "" {
		fmt.Fprintf(stderr, "%s: --reason is required: say why\n", verb)
		return 2
	}
	c, err := newAdminClient(*base, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", verb, err)
		return 1
	}
	status, body, err := c.do(http.MethodPost, fmt.Sprintf("/api/v1/incidents/%d/%s", id, verb), map[string]string{"reason": *reason})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", verb, err)
		return 1
	}
	if status != http.StatusOK {
		fmt.Fprintf(stderr, "%s: refused: %s\n", verb, apiError(status, body))
		return 1
	}
	var res daemon.DecisionJSON
	if err := json.Unmarshal(body, &res); err != nil {
		fmt.Fprintf(stderr, "%s: unexpected answer: %v\n", verb, err)
		return 1
	}
	what := map[string]string{"approve": "approved: it acts now (the guard still applies)", "veto": "vetoed: nothing will be suspended"}[verb]
	fmt.Fprintf(stdout, "incident %d %s\n", res.IncidentID, what)
	return 0
}
