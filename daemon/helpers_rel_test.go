package daemon_test

import (
	"strings"

	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

// metric returns a sample's value from /metrics (0 when absent).
func (e *env) metric(sample string) float64 {
	e.t.Helper()
	_, m := e.get("/metrics", false)
	return testenv.Metric(m, sample)
}

// pollNow asks for a poll through the admin API and waits until it ran.
func (e *env) pollNow() {
	e.t.Helper()
	before := e.metric(`usagebreaker_polls_total{result="ok"}`) + e.metric(`usagebreaker_polls_total{result="error"}`)
	code, body := e.post(e.admin, "/api/v1/poll", nil, map[string]string{"Authorization": "Bearer s3cretAdminToken"})
	if code != 202 {
		e.t.Fatalf("poll: %d %s", code, body)
	}
	e.waitFor("the poll", func() bool {
		return e.metric(`usagebreaker_polls_total{result="ok"}`)+e.metric(`usagebreaker_polls_total{result="error"}`) > before
	})
}

func (e *env) requests(op string) int { return e.sim.State().Requests[op] }

func (e *env) logLines(substr string) int { return strings.Count(e.logs.String(), substr) }
