package main

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// The harness the crash storms share (TestCrashStorm on SQLite, the
// Postgres tests of ha_test.go and ha_faults_test.go): the real binary
// built once, the simulator with slow status writes, the daemons as child
// processes, the storm of callbacks, and the checks of what it left.

// The storms' rules: two that only notify (each fires on every day's
// first SMS, so every cycle brings a storm of distinct firings), and four
// that suspend, all crossed by one purchase, so four suspend actions of one
// subaccount race each other.
const crashRules = `rules:
  - name: n-sms-count
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    recurring: daily
    threshold: 1
    action: notify
  - name: n-sms-usage
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: usage
    recurring: daily
    threshold: 1
    action: notify
  - name: s-spend-daily
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "20"
    action: suspend
  - name: s-spend-monthly
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: monthly
    threshold: "20"
    action: suspend
  - name: s-spend-alltime
    accounts: {include: ["*"]}
    usage_category: totalprice
    trigger_by: price
    recurring: alltime
    threshold: "20"
    action: suspend
  - name: s-sms-monthly
    accounts: {include: ["*"]}
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 1000
    action: suspend
`

var suspendRule = map[string]bool{"s-spend-daily": true, "s-spend-monthly": true, "s-spend-alltime": true, "s-sms-monthly": true}

const stormAdminToken = "crashTestAdminToken"

// storm is the simulator (in this process, on loopback) with its
// subaccounts, and the real binary, in a directory that holds the daemons'
// configs, state and logs.
type storm struct {
	t     *testing.T
	dir   string
	bin   string
	sim   *testenv.Sim
	names map[string]string // SID -> friendly name
	sids  []string
}

func newStorm(t *testing.T, accounts int) *storm {
	t.Helper()
	s := &storm{t: t, dir: t.TempDir(), names: map[string]string{}}
	s.bin = testenv.BuildBinary(t, s.dir, ".", raceBuild)
	s.sim = testenv.StartSim(t, twiliosim.Options{}) // Twilio-like quick callback retries (50 ms)
	for _, n := range testenv.Tenants(accounts) {
		a := s.sim.CreateSubaccount(n)
		s.names[a.SID] = a.FriendlyName
	}
	for _, a := range s.sim.State().Accounts {
		s.sids = append(s.sids, a.SID)
	}
	// Half the status writes take 400 ms at Twilio, so kills often land while
	// one is in flight, and such a write lands after its process died.
	if _, err := s.sim.AddFault(twiliosim.Fault{Path: `^/2010-04-01/Accounts/AC[0-9a-f]{32}\.json$`, Method: "POST",
		Delay: 400 * time.Millisecond, Probability: 0.5, Times: -1}); err != nil {
		t.Fatal(err)
	}
	testenv.WriteFiles(t, s.dir, map[string]string{"admin-token": stormAdminToken + "\n", "rules.yaml": crashRules})
	return s
}

// config is a daemon's config on the storm: callbacks on listen, reached
// at publicAddr, the admin API on admin; state says where the state is.
func (s *storm) config(listen, publicAddr, admin, state string) testenv.Config {
	p := s.sim.Parent()
	return testenv.Config{Instance: "crash", AccountSID: p.SID, AuthToken: p.AuthToken, APIBaseURL: s.sim.URL,
		MaxConcurrency: 8, Twilio: "timeout: 2s", Listen: listen, PublicURL: "http://" + publicAddr, AdminListen: admin,
		State: state, RuleFiles: "rules.yaml",
		Poll:           "", // the storm tests the callback path alone; the end polls on demand
		AdminTokenFile: "admin-token"}
}

// process is the daemon run on c, written to name.yaml (more run flags in
// args), logging to name-N.log.
func (s *storm) process(name string, c testenv.Config, args ...string) *testenv.Process {
	testenv.WriteFiles(s.t, s.dir, map[string]string{name + ".yaml": c.YAML()})
	args = append([]string{"run", "--config", filepath.Join(s.dir, name+".yaml")}, args...)
	args = append(args, "--log-level", "info", "--shutdown-timeout", "5s", "--watch-interval", "0")
	p := testenv.NewProcess(s.t, &testenv.Process{Name: name, Dir: s.dir, Bin: s.bin, Args: args, Admin: "http://" + c.AdminListen})
	return p
}

// stormCycles is def by default, or the number in the variable env.
func stormCycles(t *testing.T, env string, def int) int {
	n := def
	if v := os.Getenv(env); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", env, v)
		}
	}
	return n
}

// stormSeed is now, or USAGEBREAKER_CRASH_SEED to replay a run.
func stormSeed() uint64 {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("USAGEBREAKER_CRASH_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	return seed
}

const stormWindow = 500 * time.Millisecond

// cycle is one day of the storm, at random moments of stormWindow: every
// subaccount sends an SMS (the two notify rules fire), and those trips
// says overspend, crossing all four suspend rules at once. add takes the
// usage. The returned group is done when all of it is in.
func (s *storm) cycle(rng *rand.Rand, trips func(i int) bool, add func(twiliosim.UsageInput)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, sid := range s.sids {
		wg.Add(1)
		go func(sid string, trips bool, at, tripAt time.Duration) {
			defer wg.Done()
			time.Sleep(at)
			add(twiliosim.UsageInput{AccountSID: sid, Category: "sms", Count: decimal.FromInt(1), Usage: decimal.FromInt(1)})
			if trips {
				time.Sleep(tripAt)
				add(twiliosim.UsageInput{AccountSID: sid, Category: "sms", Count: decimal.FromInt(1000),
					Usage: decimal.FromInt(1000), Price: decimal.MustParse("25")})
			}
		}(sid, trips(i), time.Duration(rng.Int64N(int64(stormWindow))), time.Duration(rng.Int64N(int64(stormWindow/5))))
	}
	return &wg
}

// waitDeliveries waits until the simulator has no callback left to deliver.
func (s *storm) waitDeliveries() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := s.sim.WaitIdle(ctx); err != nil {
		s.t.Fatalf("callback deliveries did not finish: %v", err)
	}
}

// answered is a firing answered 200, and its rule.
type answered struct{ token, account, rule string }

// stormResult is what the simulator saw of a storm.
type stormResult struct {
	writes     map[string]int // suspend writes, by SID
	ok200      []answered     // each firing answered 200, once
	deliveries int            // callback attempts
	failed     int            // attempts not answered 200
}

func (s *storm) result() stormResult {
	st := s.sim.State()
	r := stormResult{writes: map[string]int{}}
	for _, a := range st.Accounts {
		if n := testenv.SuspendWrites(a); n > 0 {
			r.writes[a.SID] = n
		}
	}
	got200 := map[string]bool{}
	for _, d := range st.Deliveries {
		r.deliveries++
		if d.Status != 200 {
			r.failed++
			continue
		}
		if !got200[d.IdempotencyToken] {
			r.ok200 = append(r.ok200, answered{d.IdempotencyToken, d.AccountSID, d.URL[strings.LastIndex(d.URL, "/")+1:]})
		}
		got200[d.IdempotencyToken] = true
	}
	return r
}

// checkAnswered checks what every storm promises, in db (the state the
// daemons left):
//
//   - every firing answered 200 is recorded (its IdempotencyToken);
//   - every firing of a suspend rule answered 200 led to exactly one
//     suspend write on its subaccount;
//   - no subaccount got two suspend writes.
//
// It returns the firings lost, the suspend firings answered 200 and the
// subaccounts written twice.
func (s *storm) checkAnswered(db *sql.DB, r stormResult) (lost, suspendOK, doubles int) {
	t := s.t
	t.Helper()
	recorded := map[string]bool{}
	rows, err := db.Query(`SELECT idempotency_token FROM firings`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var tok string
		rows.Scan(&tok)
		recorded[tok] = true
	}
	rows.Close()
	for _, a := range r.ok200 {
		if !recorded[a.token] {
			lost++
			t.Errorf("firing %s was answered 200 but is not in the store", a.token)
		}
		if !suspendRule[a.rule] {
			continue
		}
		suspendOK++
		if r.writes[a.account] != 1 {
			t.Errorf("%s: firing %s of %s was answered 200 but the account has %d suspend writes", s.names[a.account], a.token, a.rule, r.writes[a.account])
		}
	}
	for sid, n := range r.writes {
		if n > 1 {
			doubles++
			t.Errorf("%s: %d suspend writes", s.names[sid], n)
		}
	}
	return lost, suspendOK, doubles
}
