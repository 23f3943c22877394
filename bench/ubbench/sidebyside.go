package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// sidebysideCmd runs usagebreaker, a Node script on Twilio's official library
// (bench/node) and a minimal Go breaker (bench/ceiling) against the same
// simulator, interleaved, to compare them:
//
//   - burst: N new firings for N distinct subaccounts, sent at once by
//     -concurrency senders; measured from the first callback sent to the last
//     suspend write recorded by the simulator (its status history);
//   - CPU of the contender's process (user+sys from /proc/PID/stat) over the
//     burst, per firing; with -strace, usagebreaker's fsync and fdatasync calls
//     in the burst, per firing, counted in one more burst per round (after the
//     others, with usagebreaker under strace) whose times are not used;
//   - latency: -latency more firings, one at a time (each sent once the
//     previous one was answered, plus -gap), each for a fresh subaccount; from
//     the send to the suspend write recorded by the simulator.
//
// Each round starts one simulator with warm-up + N + latency subaccounts; before each
// contender every subaccount is set active again, and each contender starts
// with nothing of the previous one (usagebreaker with an empty state file). The
// order of the contenders rotates from round to round. The summary gives the
// median over rounds of each number and of each per-round ratio to the script.
func sidebysideCmd(bin string, keep bool, args []string) error {
	fs := flag.NewFlagSet("sidebyside", flag.ExitOnError)
	n := fs.Int("accounts", 2000, "subaccounts in the burst, one new firing each")
	rounds := fs.Int("rounds", 3, "rounds; each runs every contender once, in rotating order")
	conc := fs.Int("concurrency", 64, "concurrent senders in the burst (the callbacks Twilio has in flight)")
	nlat := fs.Int("latency", 500, "latency samples per contender and round (0: no latency phase)")
	warm := fs.Int("warmup", 200, "firings sent (as a burst) before the measured burst, unmeasured: Node's JIT and every process's pools warm up")
	gap := fs.Duration("gap", 5*time.Millisecond, "pause after each latency sample's answer")
	nodeDir := fs.String("node-dir", "bench/node", "directory of breaker.js with its node_modules (npm ci)")
	nodeBin := fs.String("node", "node", "the node executable")
	ceilingBin := fs.String("ceiling", "", "a built bench/ceiling binary; default: go build ./bench/ceiling")
	only := fs.String("contenders", "usagebreaker,node,ceiling", "which contenders, comma-separated (the first order of the rotation)")
	useStrace := fs.Bool("strace", false, "count usagebreaker's fsyncs: each round ends with one more usagebreaker burst under strace (seccomp-bpf filtered), whose times are left out")
	maxConc := fs.Int("max-concurrency", 10, "usagebreaker's twilio.max_concurrency")
	fs.Parse(args)

	names := strings.Split(*only, ",")
	for _, c := range names {
		switch c {
		case "usagebreaker", "node", "ceiling":
		default:
			return fmt.Errorf("unknown contender %q", c)
		}
	}
	sb := &sideBySide{bin: bin, keep: keep, n: *n, nlat: *nlat, warm: *warm, conc: *conc, gap: *gap, maxConc: *maxConc, node: *nodeBin}
	if contains(names, "node") {
		dir, err := filepath.Abs(*nodeDir)
		if err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "twilio")); err != nil {
			return fmt.Errorf("%s has no node_modules/twilio: run (cd %s && npm ci) first", dir, *nodeDir)
		}
		sb.nodeDir = dir
	}
	if contains(names, "ceiling") {
		sb.ceiling = *ceilingBin
		if sb.ceiling == "" {
			tmp, err := os.MkdirTemp("", "ubbench-ceiling-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			sb.ceiling = filepath.Join(tmp, "ceiling")
			if out, err := exec.Command("go", "build", "-o", sb.ceiling, "./bench/ceiling").CombinedOutput(); err != nil {
				return fmt.Errorf("go build ./bench/ceiling (run ubbench from the repository's root, or give -ceiling): %v\n%s", err, out)
			}
		}
	}
	if *useStrace && postgresDSN != "" {
		return fmt.Errorf("-strace counts the daemon's fsyncs; with -postgres the commits' fsyncs are the database's")
	}
	if *useStrace {
		path, err := exec.LookPath("strace")
		if err != nil {
			return fmt.Errorf("strace not found (apt-get install strace): %w", err)
		}
		sb.strace = path
	}

	state := "SQLite"
	if postgresDSN != "" {
		state = "Postgres (-postgres; a fresh schema for each run)"
	}
	fmt.Printf("sidebyside: %d rounds; burst of %d new firings for distinct subaccounts, %d concurrent senders; %d latency samples (gap %s); contenders %s; usagebreaker's state on %s; %d CPUs; load average %s\n",
		*rounds, *n, *conc, *nlat, *gap, strings.Join(names, ", "), state, runtime.NumCPU(), loadavg())
	results := map[string][]result{}
	for r := 0; r < *rounds; r++ {
		order := append(append([]string{}, names[r%len(names):]...), names[:r%len(names)]...)
		if sb.strace != "" && contains(names, "usagebreaker") {
			order = append(order, traced)
		}
		fmt.Printf("\nround %d (order %s, load average %s)\n", r+1, strings.Join(order, ", "), loadavg())
		res, err := sb.round(order)
		if err != nil {
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		for _, c := range order {
			results[c] = append(results[c], res[c])
		}
	}
	sb.summary(names, results)
	fmt.Printf("\nload average at the end: %s\n", loadavg())
	return nil
}

// traced is the pseudo-contender that counts usagebreaker's fsyncs.
const traced = "usagebreaker/strace"

type sideBySide struct {
	bin, node, nodeDir, ceiling, strace string
	keep                                bool
	n, nlat, warm, conc, maxConc        int
	gap                                 time.Duration
}

// result is one contender's numbers in one round.
type result struct {
	elapsed  time.Duration // first callback sent -> last suspend write recorded by the simulator
	answered time.Duration // first callback sent -> last callback answered 200
	cpu      time.Duration // the contender's user+sys CPU during the burst
	simCPU   time.Duration // the simulator's, the same way
	fsyncs   int           // fsync+fdatasync in the burst; -1 when not counted
	writes   int           // suspend writes recorded for the burst's subaccounts
	reads    int           // accounts.fetch requests during the burst
	retries  int           // callbacks sent again after an answer other than 200
	latency  []time.Duration
	answer   []time.Duration // latency phase: send -> 200
}

func (r result) rate(n int) float64 { return float64(n) / r.elapsed.Seconds() }

// contenderProc is a running contender.
type contenderProc struct {
	pid  int // the process whose CPU is counted (under strace, the daemon itself)
	stop func()
	// fsyncsBetween counts fsync/fdatasync calls in [from, to]; nil when not traced.
	fsyncsBetween func(from, to time.Time) (int, error)
}

func (sb *sideBySide) round(order []string) (map[string]result, error) {
	e, err := newEnv(sb.bin, sb.keep)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.startSim(); err != nil {
		return nil, err
	}
	if err := e.createAccounts(sb.warm + sb.n + sb.nlat); err != nil {
		return nil, err
	}
	tokens := make(map[string]string, len(e.accounts))
	for _, a := range e.accounts {
		tokens[a.SID] = a.AuthToken
	}
	b, _ := json.Marshal(tokens)
	tokensFile := filepath.Join(e.dir, "tokens.json")
	if err := os.WriteFile(tokensFile, b, 0o600); err != nil {
		return nil, err
	}
	out := map[string]result{}
	for _, c := range order {
		if err := sb.reactivate(e); err != nil {
			return nil, err
		}
		var p *contenderProc
		switch c {
		case "usagebreaker", traced:
			p, err = sb.startUsagebreaker(e, c == traced)
		case "node":
			p, err = sb.startScript(e, c, tokensFile, sb.node, "breaker.js")
		case "ceiling":
			p, err = sb.startScript(e, c, tokensFile, sb.ceiling)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
		res, err := sb.run(e, p, c == traced)
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
		out[c] = res
		sb.printRound(c, res)
	}
	return out, nil
}

// startUsagebreaker starts the daemon on an empty state, under strace when
// traced.
func (sb *sideBySide) startUsagebreaker(e *env, traced bool) (*contenderProc, error) {
	if err := os.RemoveAll(filepath.Join(e.dir, "state")); err != nil {
		return nil, err
	}
	dropSchema := func() {}
	if postgresDSN != "" {
		drop, err := e.freshPostgresSchema()
		if err != nil {
			return nil, err
		}
		dropSchema = drop
	}
	var trace string
	e.wrap = nil
	if traced {
		trace = filepath.Join(e.dir, fmt.Sprintf("strace-%d.txt", time.Now().UnixNano()))
		e.wrap = []string{sb.strace, "-f", "--seccomp-bpf", "-ttt", "-e", "trace=fsync,fdatasync", "-o", trace}
	}
	if err := e.startDaemon(sb.maxConc, 10*time.Minute); err != nil {
		dropSchema()
		return nil, err
	}
	p := &contenderProc{pid: e.daemon.Process.Pid}
	if trace != "" {
		pid, err := onlyChild(e.daemon.Process.Pid)
		if err != nil {
			return nil, err
		}
		p.pid = pid
		p.fsyncsBetween = func(from, to time.Time) (int, error) { return countSyscalls(trace, from, to) }
	}
	p.stop = func() {
		syscall.Kill(p.pid, syscall.SIGTERM) // the daemon itself: strace would only detach
		e.daemon.Wait()
		e.daemon = nil
		dropSchema()
	}
	return p, nil
}

// startScript starts the Node script or the ceiling with the environment
// both read, and waits until it accepts connections.
func (sb *sideBySide) startScript(e *env, name, tokensFile string, argv ...string) (*contenderProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	e.publicURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	cmd := exec.Command(argv[0], argv[1:]...)
	if name == "node" {
		cmd.Dir = sb.nodeDir
	}
	cmd.Env = append(os.Environ(),
		"TWILIO_ACCOUNT_SID="+e.parentSID, "TWILIO_AUTH_TOKEN="+e.parentToken, "TWILIO_API_BASE="+e.simURL,
		"PUBLIC_URL="+e.publicURL, "PORT="+strconv.Itoa(port), "TOKENS_FILE="+tokensFile)
	log, _ := os.Create(filepath.Join(e.dir, name+".log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		log.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not listening after 30s (see %s): %v", log.Name(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &contenderProc{pid: cmd.Process.Pid, stop: stop}, nil
}

// reactivate sets every suspended subaccount active again, with the parent's
// credentials, so the next contender starts from the same accounts.
func (sb *sideBySide) reactivate(e *env) error {
	st, err := e.state(context.Background())
	if err != nil {
		return err
	}
	var sids []string
	for _, a := range st.Accounts {
		if a.Status == "suspended" {
			sids = append(sids, a.SID)
		}
	}
	return parallel(16, len(sids), func(i int) error {
		code, err := e.setStatus(sids[i], "active")
		if err == nil && code != 200 {
			err = fmt.Errorf("reactivating %s: answered %d", sids[i], code)
		}
		return err
	})
}

func (e *env) setStatus(sid, status string) (int, error) {
	req, _ := http.NewRequest(http.MethodPost, e.simURL+"/2010-04-01/Accounts/"+sid+".json", strings.NewReader(url.Values{"Status": {status}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(e.parentSID, e.parentToken)
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// suspendedAtLeast asks the simulator whether at least k subaccounts are
// suspended: page k-1 of one account each, filtered on Status. A cheap
// question (a scan under the simulator's lock, one account rendered), so
// polling it often does not take CPU from the contender the way /sim/state would.
func (e *env) suspendedAtLeast(k int) (bool, error) {
	u := fmt.Sprintf("%s/2010-04-01/Accounts.json?Status=suspended&PageSize=1&Page=%d", e.simURL, k-1)
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.SetBasicAuth(e.parentSID, e.parentToken)
	resp, err := e.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var page struct {
		Accounts []json.RawMessage `json:"accounts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return false, err
	}
	return len(page.Accounts) > 0, nil
}

// waitSuspended polls until at least k subaccounts are suspended.
func (e *env) waitSuspended(k int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := e.suspendedAtLeast(k)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fewer than %d subaccounts suspended after %s", k, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type signed struct {
	body, sig string
}

func (e *env) sign(a account, token string) signed {
	f, sig := e.firing(a, token, 0)
	return signed{f.Encode(), sig}
}

func (e *env) post(s signed) (int, error) {
	req, _ := http.NewRequest(http.MethodPost, e.publicURL+rulePath, strings.NewReader(s.body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Twilio-Signature", s.sig)
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// postUntil200 sends a callback, and again after a pause while the answer is
// not 200 (as Twilio retries a 5xx), at most 5 times.
func (e *env) postUntil200(s signed, retries *atomic.Int64) error {
	for try := 0; ; try++ {
		code, err := e.post(s)
		if err == nil && code == 200 {
			return nil
		}
		if try == 4 {
			return fmt.Errorf("callback not accepted after 5 tries (last: %d %v)", code, err)
		}
		retries.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

// run drives one contender: a warm-up, the burst, then (unless burstOnly) the
// latency phase.
func (sb *sideBySide) run(e *env, p *contenderProc, burstOnly bool) (result, error) {
	res := result{fsyncs: -1}
	run := randHex(4) // IdempotencyTokens unique to this run
	var retries atomic.Int64

	// Warm-up: a small burst on subaccounts of its own, not measured.
	warm := e.accounts[:sb.warm]
	if err := parallel(sb.conc, len(warm), func(i int) error {
		return e.postUntil200(e.sign(warm[i], fmt.Sprintf("%s-FIRES-%s-warm-%d", warm[i].SID, run, i)), &retries)
	}); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	if err := e.waitSuspended(len(warm), time.Minute); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	retries.Store(0)

	burst := e.accounts[sb.warm : sb.warm+sb.n]
	firings := make([]signed, len(burst))
	for i, a := range burst {
		firings[i] = e.sign(a, fmt.Sprintf("%s-FIRES-%s-%d", a.SID, run, i))
	}
	st0, err := e.state(context.Background())
	if err != nil {
		return res, err
	}
	settle()

	simPID := e.sim.Process.Pid
	cpu0, sim0 := procCPU(p.pid), procCPU(simPID)
	var lastAnswer atomic.Int64
	t0 := time.Now()
	err = parallel(sb.conc, len(firings), func(i int) error {
		if err := e.postUntil200(firings[i], &retries); err != nil {
			return err
		}
		now := time.Since(t0).Nanoseconds()
		for {
			old := lastAnswer.Load()
			if now <= old || lastAnswer.CompareAndSwap(old, now) {
				return nil
			}
		}
	})
	if err != nil {
		return res, err
	}
	if err := e.waitSuspended(sb.warm+sb.n, 5*time.Minute); err != nil {
		return res, err
	}
	tDone := time.Now()
	res.cpu, res.simCPU = procCPU(p.pid)-cpu0, procCPU(simPID)-sim0
	res.answered = time.Duration(lastAnswer.Load())
	res.retries = int(retries.Load())

	st1, err := e.state(context.Background())
	if err != nil {
		return res, err
	}
	inBurst := make(map[string]bool, len(burst))
	for _, a := range burst {
		inBurst[a.SID] = true
	}
	var last time.Time
	for _, a := range st1.Accounts {
		if !inBurst[a.SID] {
			continue
		}
		for _, h := range a.StatusHistory {
			if h.Status == "suspended" && !h.At.Before(t0) {
				res.writes++
				if h.At.After(last) {
					last = h.At
				}
			}
		}
	}
	res.elapsed = last.Sub(t0)
	res.reads = st1.Requests["accounts.fetch"] - st0.Requests["accounts.fetch"]
	if p.fsyncsBetween != nil {
		time.Sleep(200 * time.Millisecond) // strace's last lines
		if res.fsyncs, err = p.fsyncsBetween(t0, tDone); err != nil {
			return res, err
		}
	}

	// Latency: one firing at a time, each for a subaccount not yet suspended.
	lat := e.accounts[sb.warm+sb.n:]
	if burstOnly {
		return res, nil
	}
	sent := make(map[string]time.Time, len(lat))
	for i, a := range lat {
		s := e.sign(a, fmt.Sprintf("%s-FIRES-%s-lat-%d", a.SID, run, i))
		t := time.Now()
		if err := e.postUntil200(s, &retries); err != nil {
			return res, err
		}
		res.answer = append(res.answer, time.Since(t))
		sent[a.SID] = t
		time.Sleep(sb.gap)
	}
	if len(lat) > 0 {
		if err := e.waitSuspended(sb.warm+sb.n+len(lat), time.Minute); err != nil {
			return res, err
		}
		st2, err := e.state(context.Background())
		if err != nil {
			return res, err
		}
		for _, a := range st2.Accounts {
			t, ok := sent[a.SID]
			if !ok {
				continue
			}
			for _, h := range a.StatusHistory {
				if h.Status == "suspended" && !h.At.Before(t) {
					res.latency = append(res.latency, h.At.Sub(t))
					break
				}
			}
		}
	}
	return res, nil
}

// settle pauses before a measurement starts, so that the previous phase's
// work (the warm-up's last answers, /sim/state's JSON) is done on every side.
func settle() { time.Sleep(300 * time.Millisecond) }

func (sb *sideBySide) printRound(name string, r result) {
	fsync := "-"
	if r.fsyncs >= 0 {
		fsync = fmt.Sprintf("%.2f", float64(r.fsyncs)/float64(sb.n))
	}
	fmt.Printf("  %-12s burst: all suspended in %7.3fs = %6.0f/s (all answered in %7.3fs), CPU %5.0f ms = %.3f ms/firing (simulator %.3f), fsync/firing %s, writes %d, reads %d, retries %d",
		name, r.elapsed.Seconds(), r.rate(sb.n), r.answered.Seconds(), ms(r.cpu), ms(r.cpu)/float64(sb.n), ms(r.simCPU)/float64(sb.n), fsync, r.writes, r.reads, r.retries)
	if len(r.latency) > 0 {
		fmt.Printf("; latency send->write n=%d p50 %s p99 %s max %s (send->200 p50 %s p99 %s)",
			len(r.latency), pct(r.latency, 0.5), pct(r.latency, 0.99), pct(r.latency, 1), pct(r.answer, 0.5), pct(r.answer, 0.99))
	}
	fmt.Println()
}

func (sb *sideBySide) summary(names []string, results map[string][]result) {
	fmt.Printf("\nmedians over %d rounds (ratios: the median of each round's ratio to node)\n", len(results[names[0]]))
	fmt.Printf("  %-12s | %9s | %8s | %8s | %11s | %9s | %8s | %8s | %8s | %8s | %8s\n",
		"contender", "suspend/s", "x node", "answer/s", "CPU ms/fir", "x node", "fsync/fir", "p50 ms", "p99 ms", "x node", "writes")
	base := results["node"]
	for _, c := range names {
		rs := results[c]
		var rate, ans, cpu, fsync, p50, p99, rRate, rCPU, rP99 []float64
		writes := 0
		for i, r := range rs {
			rate = append(rate, r.rate(sb.n))
			ans = append(ans, float64(sb.n)/r.answered.Seconds())
			cpu = append(cpu, ms(r.cpu)/float64(sb.n))
			if c == "usagebreaker" && i < len(results[traced]) {
				r.fsyncs = results[traced][i].fsyncs // counted in the traced burst of the same round
			}
			if r.fsyncs >= 0 {
				fsync = append(fsync, float64(r.fsyncs)/float64(sb.n))
			}
			if len(r.latency) > 0 {
				p50 = append(p50, ms(pctD(r.latency, 0.5)))
				p99 = append(p99, ms(pctD(r.latency, 0.99)))
			}
			writes += r.writes
			if base != nil {
				b := base[i]
				rRate = append(rRate, r.rate(sb.n)/b.rate(sb.n))
				rCPU = append(rCPU, float64(r.cpu)/float64(b.cpu))
				if len(r.latency) > 0 && len(b.latency) > 0 {
					rP99 = append(rP99, float64(pctD(r.latency, 0.99))/float64(pctD(b.latency, 0.99)))
				}
			}
		}
		fmt.Printf("  %-12s | %9s | %8s | %8s | %11s | %9s | %8s | %8s | %8s | %8s | %8d\n", c,
			med(rate, "%.0f"), med(rRate, "%.2fx"), med(ans, "%.0f"), med(cpu, "%.3f"), med(rCPU, "%.2fx"),
			med(fsync, "%.2f"), med(p50, "%.2f"), med(p99, "%.2f"), med(rP99, "%.2fx"), writes)
		if len(rs) > 1 {
			fmt.Printf("  %-12s | %9s | %8s | %8s | %11s | %9s | %8s | %8s | %8s | %8s |\n", "  range",
				span(rate, "%.0f"), span(rRate, "%.2f"), span(ans, "%.0f"), span(cpu, "%.3f"), span(rCPU, "%.2f"),
				span(fsync, "%.2f"), span(p50, "%.2f"), span(p99, "%.2f"), span(rP99, "%.2f"))
		}
	}
	if rs := results[traced]; len(rs) > 0 {
		var rate []float64
		writes := 0
		for _, r := range rs {
			rate = append(rate, r.rate(sb.n))
			writes += r.writes
		}
		fmt.Printf("  fsync/firing of usagebreaker: from one more burst per round under strace (%s suspend/s there, %d writes), not from the timed one\n", med(rate, "%.0f"), writes)
	}
	fmt.Println("  goals for usagebreaker: suspend/s >= 2x node; CPU/firing <= 1.5x node; fsync/firing <= 0.5; p99 <= 1.1x node")
	fmt.Printf("  writes: suspend writes recorded for the burst's subaccounts over all rounds (one per firing: %d)\n", sb.n*len(results[names[0]]))
}

// ---- helpers ----

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// parallel runs f(0..n-1) on w workers and returns the first error.
func parallel(w, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for k := 0; k < w; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// procCPU is a process's user+sys CPU time so far, all threads, from
// /proc/PID/stat (clock ticks of 10 ms: USER_HZ is 100 on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from the 3rd (state) on
	ut, _ := strconv.ParseInt(f[11], 10, 64)                 // utime, the 14th field
	st, _ := strconv.ParseInt(f[12], 10, 64)                 // stime, the 15th
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// onlyChild is the pid of a process's single child (the daemon under strace).
func onlyChild(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("process %d has children %v, want one", pid, f)
	}
	return strconv.Atoi(f[0])
}

// countSyscalls counts the fsync and fdatasync calls in an `strace -f -ttt`
// output file whose timestamps fall within [from, to]. A call that strace
// split ("<unfinished ...>" then "<... resumed>") counts once.
func countSyscalls(path string, from, to time.Time) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	lo, hi := float64(from.UnixMicro())/1e6, float64(to.UnixMicro())/1e6
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i := 0; i+1 < len(fields); i++ {
			ts, err := strconv.ParseFloat(fields[i], 64)
			if err != nil || !strings.Contains(fields[i], ".") {
				continue
			}
			call := fields[i+1]
			if (strings.HasPrefix(call, "fsync(") || strings.HasPrefix(call, "fdatasync(")) && ts >= lo && ts <= hi {
				n++
			}
			break
		}
	}
	return n, sc.Err()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pctD(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration{}, ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func pct(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "-"
	}
	return pctD(ds, q).Round(time.Microsecond).String()
}

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func med(xs []float64, format string) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf(format, median(xs))
}

func span(xs []float64, format string) string {
	if len(xs) == 0 {
		return "-"
	}
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	return fmt.Sprintf(format+"-"+format, s[0], s[len(s)-1])
}
