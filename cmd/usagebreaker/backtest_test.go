package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// TestBacktestCommand seeds history through POST /sim/history and runs the
// command in each format.
func TestBacktestCommand(t *testing.T) {
	now := time.Date(2026, 11, 5, 12, 0, 0, 0, time.UTC)
	sim := twiliosim.New(twiliosim.Options{RetryDelay: -1, Now: func() time.Time { return now }})
	defer sim.Close()
	srv := httptest.NewServer(sim)
	defer srv.Close()
	a, b := sim.CreateSubaccount("tenant-a"), sim.CreateSubaccount("tenant-b")
	for _, f := range []url.Values{
		{"AccountSid": {a.SID}, "Category": {"totalprice"}, "Day": {"2026-10-03"}, "Price": {"50"}},
		{"AccountSid": {b.SID}, "Category": {"totalprice"}, "Day": {"2026-10-03"}, "Price": {"75.5"}},
		{"AccountSid": {b.SID}, "Category": {"totalprice"}, "Day": {"2026-10-04"}, "Price": {"49.999"}},
	} {
		resp, err := http.PostForm(srv.URL+"/sim/history", f)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("/sim/history: %s", resp.Status)
		}
	}
	dir := t.TempDir()
	p := sim.Parent()
	cfg := fmt.Sprintf(`instance: bt
twilio: {account_sid: %s, auth_token: %s, api_base_url: %q, max_concurrency: 2}
server: {public_url: "http://127.0.0.1:8080"}
rule_files: [rules.yaml]
guard: {max_suspensions: 1, window: 1h}
`, p.SID, p.AuthToken, srv.URL)
	os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cfg), 0o600)
	os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(`rules:
  - name: spend-daily
    accounts: {include: ["tenant-*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
`), 0o600)
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := dispatch(append([]string{"backtest", "--config", filepath.Join(dir, "config.yaml")}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run("--from", "2026-10-01", "--to", "2026-10-31", "--format", "json")
	want := fmt.Sprintf(`{"rule":"spend-daily","account_sid":"%s","account_name":"tenant-a","day":"2026-10-03","value":"50","threshold":"50","outcome":"suspended"}
{"rule":"spend-daily","account_sid":"%s","account_name":"tenant-b","day":"2026-10-03","value":"75.5","threshold":"50","outcome":"held"}
`, a.SID, b.SID)
	if code != 0 || out != want || !strings.Contains(errs, "2 trips; 2 of 2 subaccounts matched, 2 usage record listings read") {
		t.Errorf("json: %d\n%s\nwant\n%s\nstderr %s", code, out, want, errs)
	}
	code, out, _ = run("--from", "2026-10-01", "--to", "2026-10-31", "--format", "csv")
	if code != 0 || !strings.HasPrefix(out, "rule,account_sid,account_name,day,value,threshold,outcome\nspend-daily,"+a.SID+",tenant-a,2026-10-03,50,50,suspended\n") {
		t.Errorf("csv: %d\n%s", code, out)
	}
	code, out, _ = run("--from", "2026-10-01", "--to", "2026-10-31")
	if code != 0 || !strings.Contains(out, "HELD (guard)") || !strings.HasPrefix(out, "DAY ") {
		t.Errorf("table: %d\n%s", code, out)
	}
	for _, args := range [][]string{{"--from", "2026-10-31", "--to", "2026-10-01"}, {"--from", "yesterday", "--to", "2026-10-01"},
		{"--from", "2026-10-01", "--to", "2026-10-31", "--format", "xml"}} {
		if code, _, _ := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if st := sim.State(); st.Requests["accounts.update"] != 0 || st.Requests["triggers.create"] != 0 {
		t.Errorf("the backtest wrote: %v", st.Requests)
	}
}
