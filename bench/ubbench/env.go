package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // -postgres: fresh schemas for sidebyside
)

// env is a simulator process and a daemon process on loopback.
type env struct {
	bin, dir        string
	keep            bool
	sim, daemon     *exec.Cmd
	simURL          string
	parentSID       string
	parentToken     string
	publicURL       string
	adminURL        string
	accounts        []account
	daemonStartedAt time.Time
	client          *http.Client
	infoLogs        bool     // run the daemon at --log-level info (the default) instead of warn
	wrap            []string // run the daemon under this command (e.g. strace ...); its pid is then wrap's child
	stateDSN        string   // with -postgres: the daemon's state (default: -postgres itself)
}

type account struct {
	SID       string `json:"sid"`
	Name      string `json:"friendly_name"`
	AuthToken string `json:"auth_token"`
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newEnv(bin string, keep bool) (*env, error) {
	dir, err := os.MkdirTemp("", "ubbench-")
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}
	return &env{bin: bin, dir: dir, keep: keep, client: &http.Client{Transport: tr, Timeout: 60 * time.Second},
		parentSID: "AC" + randHex(16), parentToken: randHex(16)}, nil
}

func (e *env) close() {
	for _, c := range []*exec.Cmd{e.daemon, e.sim} {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				c.Process.Kill()
			}
		}
	}
	if !e.keep {
		os.RemoveAll(e.dir)
		os.Remove(e.logPath())
	} else {
		fmt.Fprintln(os.Stderr, "kept", e.dir, e.logPath())
	}
}

func (e *env) startSim() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	log, _ := os.Create(filepath.Join(e.dir, "sim.log"))
	e.sim = exec.Command(e.bin, "sim", "--listen", addr, "--account-sid", e.parentSID, "--auth-token", e.parentToken)
	e.sim.Stdout, e.sim.Stderr = log, log
	if err := e.sim.Start(); err != nil {
		return err
	}
	e.simURL = "http://" + addr
	return waitHTTP(e.client, e.simURL+"/sim/state", 20*time.Second)
}

func waitHTTP(c *http.Client, u string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.Get(u)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (last error %v)", u, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createAccounts makes n subaccounts through /sim/accounts, concurrently.
func (e *env) createAccounts(n int) error {
	e.accounts = make([]account, n)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	next := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				resp, err := e.client.PostForm(e.simURL+"/sim/accounts", url.Values{"FriendlyName": {fmt.Sprintf("tenant-%05d", i)}})
				if err != nil {
					errs <- err
					return
				}
				err = json.NewDecoder(resp.Body).Decode(&e.accounts[i])
				resp.Body.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			return err
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

const benchRules = `rules:
  - name: spend-daily
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-monthly
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 20000
    action: suspend
  - name: calls-yearly
    accounts: {include: ["*"]}
    usage_category: calls
    trigger_by: usage
    recurring: yearly
    threshold: "100000"
    action: notify
`

// startDaemon writes a config and starts `usagebreaker run`; it returns once
// /-/ready answers 200.
func (e *env) startDaemon(maxConcurrency int, readyLimit time.Duration) error {
	cbPort, err := freePort()
	if err != nil {
		return err
	}
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	e.publicURL = fmt.Sprintf("http://127.0.0.1:%d", cbPort)
	e.adminURL = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	os.MkdirAll(filepath.Join(e.dir, "rules"), 0o755)
	os.WriteFile(filepath.Join(e.dir, "rules", "bench.yaml"), []byte(benchRules), 0o644)
	cfg := fmt.Sprintf(`instance: bench
twilio:
  account_sid: %s
  auth_token: %s
  api_base_url: %s
  max_concurrency: %d
  timeout: 30s
server:
  listen: "127.0.0.1:%d"
  public_url: %s
  admin_listen: "127.0.0.1:%d"
%s
reconcile:
  schedule: "@every 24h"
rule_files: ["rules/*.yaml"]
poll:
  schedule: ""
`, e.parentSID, e.parentToken, e.simURL, maxConcurrency, cbPort, e.publicURL, adminPort, e.stateSection())
	cfgPath := filepath.Join(e.dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	log, _ := os.OpenFile(e.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	e.daemon = e.daemonCommand(cfgPath)
	e.daemon.Stdout, e.daemon.Stderr = log, log
	e.daemonStartedAt = time.Now()
	if err := e.daemon.Start(); err != nil {
		return err
	}
	return waitHTTP(e.client, e.adminURL+"/-/ready", readyLimit)
}

// daemonCommand is `usagebreaker run`, under e.wrap when it is set.
func (e *env) daemonCommand(cfgPath string) *exec.Cmd {
	args := []string{e.bin, "run", "--config", cfgPath, "--log-level", e.logLevel()}
	if len(e.wrap) > 0 {
		args = append(append([]string{}, e.wrap...), args...)
	}
	return exec.Command(args[0], args[1:]...)
}

// stateSection is the config's state: SQLite in the temporary directory,
// or -postgres (e.stateDSN when set).
func (e *env) stateSection() string {
	if postgresDSN != "" {
		dsn := e.stateDSN
		if dsn == "" {
			dsn = postgresDSN
		}
		return fmt.Sprintf("state:\n  postgres:\n    dsn: %q", dsn)
	}
	return "state:\n  path: state/usagebreaker.db"
}

// freshPostgresSchema creates an empty schema in -postgres's database and
// points the daemon's state at it (search_path); drop removes it. Each
// daemon of a side-by-side run starts on an empty state, as with SQLite.
func (e *env) freshPostgresSchema() (drop func(), err error) {
	u, err := url.Parse(postgresDSN)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("-postgres: sidebyside needs a URL DSN (postgres://...), got %q", postgresDSN)
	}
	db, err := sql.Open("pgx", postgresDSN)
	if err != nil {
		return nil, err
	}
	schema := "ubbench_" + randHex(6)
	if _, err := db.Exec(`CREATE SCHEMA ` + schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("-postgres: create schema: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	e.stateDSN = u.String()
	return func() {
		if _, err := db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			fmt.Fprintf(os.Stderr, "ubbench: drop schema %s: %v\n", schema, err)
		}
		db.Close()
	}, nil
}

// logPath is where the daemon's stdout and stderr go: in e.dir, or, with
// -log-dir, elsewhere (a tmpfs keeps the log's writes out of the state
// disk's fsyncs, as a container runtime's log does).
func (e *env) logPath() string {
	dir := e.dir
	if logDir != "" {
		dir = logDir
	}
	return filepath.Join(dir, "daemon-"+filepath.Base(e.dir)+".log")
}

// logLevel is the daemon's --log-level: warn unless e.infoLogs (which the
// latency mode needs for each suspension's receipt_to_write).
func (e *env) logLevel() string {
	if e.infoLogs {
		return "info"
	}
	return "warn"
}

func (e *env) restartDaemon(readyLimit time.Duration) error {
	e.daemon.Process.Signal(syscall.SIGTERM)
	e.daemon.Wait()
	cfgPath := filepath.Join(e.dir, "config.yaml")
	log, _ := os.OpenFile(e.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	e.daemon = exec.Command(e.bin, "run", "--config", cfgPath, "--log-level", e.logLevel())
	e.daemon.Stdout, e.daemon.Stderr = log, log
	e.daemonStartedAt = time.Now()
	if err := e.daemon.Start(); err != nil {
		return err
	}
	return waitHTTP(e.client, e.adminURL+"/-/ready", readyLimit)
}

// rssKiB reads a process's resident set size (VmRSS) and peak (VmHWM).
func rssKiB(pid int) (rss, hwm int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}

// simState is the part of /sim/state the benchmarks read.
type simState struct {
	Accounts []struct {
		SID           string `json:"sid"`
		Status        string `json:"status"`
		StatusHistory []struct {
			Status string    `json:"status"`
			At     time.Time `json:"at"`
		} `json:"status_history"`
	} `json:"accounts"`
	Requests map[string]int `json:"requests"`
}

func (e *env) state(ctx context.Context) (simState, error) {
	var st simState
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.simURL+"/sim/state", nil)
	resp, err := e.client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// metric returns the value of the first /metrics line starting with prefix.
func (e *env) metric(prefix string) (float64, error) {
	resp, err := e.client.Get(e.adminURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", prefix)
}

func (e *env) fault(form url.Values) error {
	resp, err := e.client.PostForm(e.simURL+"/sim/faults", form)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("fault: %s %s", resp.Status, b)
	}
	return nil
}

func diff(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
