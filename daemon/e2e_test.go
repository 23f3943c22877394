package daemon_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/daemon"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

const e2eRules = `rules:
  - name: spend-daily
    accounts:
      include: ["*"]
      exclude: ["internal-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-monthly
    accounts:
      include: ["tenant-0*"]
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 10000
    action: suspend
    dry_run: true
  - name: calls-notify
    accounts:
      include: ["tenant-1*", "internal-*"]
    usage_category: calls
    trigger_by: usage
    recurring: daily
    threshold: "600"
    action: notify
`

// env is a simulator on loopback and a daemon configured against it.
type env struct {
	t        *testing.T
	sim      *twiliosim.Sim
	simURL   string
	dir      string
	cfgPath  string
	d        *daemon.Daemon
	admin    string
	public   string
	cancel   context.CancelFunc
	runErr   chan error
	logs     *syncBuffer
	accounts map[string]twiliosim.Account // by friendly name
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func startEnv(t *testing.T, names []string, ruleText string) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), logs: &syncBuffer{}, accounts: map[string]twiliosim.Account{}}
	e.sim = twiliosim.New(twiliosim.Options{RetryDelay: -1})
	simLn := listen(t)
	simSrv := &http.Server{Handler: e.sim}
	go simSrv.Serve(simLn)
	t.Cleanup(func() { simSrv.Close(); e.sim.Close() })
	e.simURL = "http://" + simLn.Addr().String()
	for _, n := range names {
		e.accounts[n] = e.sim.CreateSubaccount(n)
	}

	cbLn, adminLn := listen(t), listen(t)
	e.public = "http://" + cbLn.Addr().String()
	e.admin = "http://" + adminLn.Addr().String()
	p := e.sim.Parent()
	os.MkdirAll(filepath.Join(e.dir, "rules"), 0o755)
	os.WriteFile(filepath.Join(e.dir, "admin-token"), []byte("s3cretAdminToken\n"), 0o600)
	cfg := fmt.Sprintf(`instance: e2e
twilio:
  account_sid: %s
  auth_token: %s
  api_base_url: %s
  max_concurrency: 8
server:
  listen: %q
  public_url: %s
  admin_listen: %q
state:
  path: state.db
reconcile:
  schedule: "@every 1h"
rule_files: ["rules/*.yaml"]
poll:
  schedule: ""
admin:
  token_file: admin-token
`, p.SID, p.AuthToken, e.simURL, cbLn.Addr().String(), e.public, adminLn.Addr().String())
	e.cfgPath = filepath.Join(e.dir, "config.yaml")
	os.WriteFile(e.cfgPath, []byte(cfg), 0o600)
	e.writeRules(ruleText)

	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := daemon.New(context.Background(), daemon.Options{ConfigPath: e.cfgPath, Logger: log,
		CallbackListener: cbLn, AdminListener: adminLn, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- d.Run(ctx) }()
	t.Cleanup(e.stop)
	e.waitFor("ready", func() bool { return d.Ready() })
	return e
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.runErr:
		if err != nil {
			e.t.Errorf("daemon: %v", err)
		}
	case <-time.After(30 * time.Second):
		e.t.Error("daemon did not stop")
	}
	if e.t.Failed() {
		e.t.Logf("daemon logs:\n%s", e.logs.String())
	}
}

func (e *env) writeRules(text string) {
	if err := os.WriteFile(filepath.Join(e.dir, "rules", "main.yaml"), []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond; the limit is generous because CI is a loaded 2-core machine.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) state() twiliosim.State { return e.sim.State() }

func (e *env) account(name string) twiliosim.AccountState {
	for _, a := range e.sim.State().Accounts {
		if a.FriendlyName == name {
			return a
		}
	}
	e.t.Fatalf("no account %s", name)
	return twiliosim.AccountState{}
}

func (e *env) addUsage(name, category string, count, price string) []twiliosim.Firing {
	e.t.Helper()
	in := twiliosim.UsageInput{AccountSID: e.accounts[name].SID, Category: category}
	if count != "" {
		in.Count = decimal.MustParse(count)
		in.Usage = in.Count
	}
	if price != "" {
		in.Price = decimal.MustParse(price)
	}
	f, err := e.sim.AddUsage(in)
	if err != nil {
		e.t.Fatalf("usage on %s: %v", name, err)
	}
	return f
}

func (e *env) wait(f []twiliosim.Firing) []twiliosim.Delivery {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ds, err := e.sim.Wait(ctx, f...)
	if err != nil {
		e.t.Fatal(err)
	}
	return ds
}

func (e *env) get(path string, auth bool) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.admin+path, nil)
	if auth {
		req.Header.Set("Authorization", "Bearer s3cretAdminToken")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *env) post(base, path string, form url.Values, hdr map[string]string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func accountNames() []string {
	var names []string
	for i := 0; i < 46; i++ {
		names = append(names, fmt.Sprintf("tenant-%02d", i))
	}
	return append(names, "internal-qa", "internal-billing", "internal-ops", "tenant-suspended")
}

func triggerNames(a twiliosim.AccountState) map[string]twiliosim.Trigger {
	m := map[string]twiliosim.Trigger{}
	for _, t := range a.Triggers {
		m[t.FriendlyName] = t
	}
	return m
}

func TestEndToEnd(t *testing.T) {
	names := accountNames() // 50 subaccounts
	e := startEnv(t, names[:49], e2eRules)
	_ = e.accounts
	st := e.state()
	if len(st.Accounts) != 49 {
		t.Fatalf("%d accounts", len(st.Accounts))
	}

	t.Run("exactly the expected triggers", func(t *testing.T) {
		total := 0
		for _, a := range e.state().Accounts {
			got := triggerNames(a)
			want := map[string]bool{}
			if !strings.HasPrefix(a.FriendlyName, "internal-") {
				want["usagebreaker:e2e:spend-daily"] = true
			}
			if strings.HasPrefix(a.FriendlyName, "tenant-0") {
				want["usagebreaker:e2e:sms-monthly"] = true
			}
			if strings.HasPrefix(a.FriendlyName, "tenant-1") || strings.HasPrefix(a.FriendlyName, "internal-") {
				want["usagebreaker:e2e:calls-notify"] = true
			}
			if len(got) != len(want) {
				t.Errorf("%s: triggers %v, want %v", a.FriendlyName, got, want)
			}
			for name, tr := range got {
				total++
				rule := strings.TrimPrefix(name, "usagebreaker:e2e:")
				if !want[name] || tr.CallbackURL != e.public+"/twilio/usage-triggers/"+rule || tr.CallbackMethod != "POST" {
					t.Errorf("%s: unexpected trigger %+v", a.FriendlyName, tr)
				}
			}
		}
		if total != 46+10+10+3 {
			t.Errorf("%d triggers in all", total)
		}
	})
	_ = st
}
