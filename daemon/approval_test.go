package daemon_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

const approvalRules = `rules:
  - name: spend-daily
    accounts: {include: ["tenant-*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
    approval: {mode: approve}
`

// postJSON posts a JSON body with the admin token.
func (e *env) postJSON(path, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.admin+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cretAdminToken")
	return testenv.Do(e.t, req)
}

// The admin API's approve and veto: a reason is required, a decision is
// taken once, who and why are shown by /api/v1/incidents, and the daemon
// acts on it at once.
func TestApprovalThroughTheAdminAPI(t *testing.T) {
	e := startEnvOpts(t, []string{"tenant-a", "tenant-b"}, approvalRules, envOpts{})
	e.wait(e.addUsage("tenant-a", "totalprice", "", "60"))
	e.wait(e.addUsage("tenant-b", "totalprice", "", "60"))
	a, b := e.waitOutcome("spend-daily", "tenant-a"), e.waitOutcome("spend-daily", "tenant-b")
	if a.Outcome != "awaiting_approval" || a.State != "pending" || b.Outcome != "awaiting_approval" {
		t.Fatalf("incidents %+v %+v, want awaiting_approval", a, b)
	}
	if code, body := e.postJSON("/api/v1/incidents/"+itoa(a.ID)+"/approve", `{"reason": ""}`); code != 400 {
		t.Fatalf("approve without a reason: %d %s", code, body)
	}
	code, body := e.postJSON("/api/v1/incidents/"+itoa(a.ID)+"/approve", `{"reason": "confirmed pumping"}`)
	var d daemon.DecisionJSON
	if code != 200 || json.Unmarshal([]byte(body), &d) != nil || d.Decision != "approve" || !strings.Contains(d.Actor, "admin API from") {
		t.Fatalf("approve: %d %s", code, body)
	}
	if code, body := e.postJSON("/api/v1/incidents/"+itoa(a.ID)+"/veto", `{"reason": "too late"}`); code != 409 {
		t.Fatalf("a second decision: %d %s", code, body)
	}
	if code, body := e.postJSON("/api/v1/incidents/"+itoa(b.ID)+"/veto", `{"reason": "a planned load test"}`); code != 200 {
		t.Fatalf("veto: %d %s", code, body)
	}
	e.waitFor("tenant-a suspended", func() bool { return e.account("tenant-a").Status == "suspended" })
	e.waitFor("both incidents done", func() bool {
		incs := e.incidents("")
		done := 0
		for _, i := range incs {
			if i.State == "done" {
				done++
			}
		}
		return done == 2
	})
	for _, i := range e.incidents("") {
		switch i.AccountSID {
		case e.accounts["tenant-a"].SID:
			if i.Outcome != "suspended" || i.Decision == nil || i.Decision.Reason != "confirmed pumping" {
				t.Errorf("tenant-a: %+v", i)
			}
		case e.accounts["tenant-b"].SID:
			if i.Outcome != "vetoed" || i.Decision == nil || i.Decision.Decision != "veto" {
				t.Errorf("tenant-b: %+v", i)
			}
		}
	}
	if s := e.account("tenant-b"); s.Status != "active" || testenv.SuspendWrites(s) != 0 {
		t.Errorf("tenant-b was written after its veto: %+v", s.Status)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
