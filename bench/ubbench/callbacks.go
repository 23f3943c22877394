package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// callbacksCmd drives the daemon's callback listener.
//
//	-mode latency: one signed firing per account, spaced by -gap, and for each
//	   the time from sending it to the suspend request reaching Twilio.
//	-mode valid:   -n signed firings as fast as -concurrency allows.
//	-mode forged:  forged signatures for real accounts for -duration.
//	-mode forged-wrk: the same flood sent by wrk (Debian's package), which
//	   costs far less CPU per request than a Go client on the same cores.
func callbacksCmd(bin string, keep bool, args []string) error {
	fs := flag.NewFlagSet("callbacks", flag.ExitOnError)
	n := fs.Int("accounts", 1000, "subaccounts")
	mode := fs.String("mode", "latency", "latency | valid | forged")
	count := fs.Int("n", 20000, "callbacks to send (valid)")
	conc := fs.Int("concurrency", 32, "concurrent senders (valid, forged)")
	dur := fs.Duration("duration", 10*time.Second, "how long to send (forged)")
	gap := fs.Duration("gap", 5*time.Millisecond, "pause between firings (latency)")
	fs.Parse(args)

	e, err := newEnv(bin, keep)
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.startSim(); err != nil {
		return err
	}
	if err := e.createAccounts(*n); err != nil {
		return err
	}
	e.infoLogs = *mode == "latency" // each suspension logs its receipt_to_write
	if err := e.startDaemon(10, time.Hour); err != nil {
		return err
	}
	switch *mode {
	case "latency":
		return latency(e, *gap)
	case "valid":
		return valid(e, *count, *conc)
	case "forged":
		return forged(e, *dur, *conc)
	case "forged-wrk":
		return forgedWrk(e, *dur, *conc)
	}
	return fmt.Errorf("unknown -mode %q", *mode)
}

const rulePath = "/twilio/usage-triggers/spend-daily"

// firing builds a signed callback for account a; day shifts DateFired so that
// distinct days are distinct incidents.
func (e *env) firing(a account, token string, day int) (url.Values, string) {
	fired := time.Now().UTC().AddDate(0, 0, -day)
	f := url.Values{
		"AccountSid":       {a.SID},
		"UsageTriggerSid":  {"UT" + strings.Repeat("0", 32)},
		"DateFired":        {fired.Format("Mon, 02 Jan 2006 15:04:05 -0700")},
		"Recurring":        {"daily"},
		"UsageCategory":    {"totalprice"},
		"TriggerBy":        {"price"},
		"TriggerValue":     {"50"},
		"CurrentValue":     {"61.25"},
		"UsageRecordUri":   {"/2010-04-01/Accounts/" + a.SID + "/Usage/Records/Today.json?Category=totalprice"},
		"IdempotencyToken": {token},
	}
	return f, twiliosim.SignatureFor(a.AuthToken, e.publicURL+rulePath, f)
}

func (e *env) send(f url.Values, sig string) (int, error) {
	req, _ := http.NewRequest(http.MethodPost, e.publicURL+rulePath, strings.NewReader(f.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Twilio-Signature", sig)
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func percentiles(name string, ds []time.Duration) {
	if len(ds) == 0 {
		fmt.Printf("  %-34s no samples\n", name)
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	p := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	fmt.Printf("  %-34s n=%d p50=%s p90=%s p99=%s max=%s\n", name, len(ds),
		p(0.50).Round(time.Microsecond), p(0.90).Round(time.Microsecond), p(0.99).Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
}

func latency(e *env, gap time.Duration) error {
	sent := make(map[string]time.Time, len(e.accounts))
	var answered []time.Duration
	for i, a := range e.accounts {
		f, sig := e.firing(a, fmt.Sprintf("%s-FIRES-lat-%d", a.SID, i), 0)
		t0 := time.Now()
		code, err := e.send(f, sig)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("callback answered %d", code)
		}
		answered = append(answered, time.Since(t0))
		sent[a.SID] = t0
		time.Sleep(gap)
	}
	// Wait until every account is suspended, then read when each suspend write arrived.
	deadline := time.Now().Add(5 * time.Minute)
	var st simState
	for {
		var err error
		st, err = e.state(context.Background())
		if err != nil {
			return err
		}
		done := 0
		for _, a := range st.Accounts {
			if a.Status == "suspended" {
				done++
			}
		}
		if done == len(e.accounts) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d accounts suspended", done, len(e.accounts))
		}
		time.Sleep(200 * time.Millisecond)
	}
	var overhead []time.Duration
	for _, a := range st.Accounts {
		for _, h := range a.StatusHistory {
			if h.Status == "suspended" {
				overhead = append(overhead, h.At.Sub(sent[a.SID]))
			}
		}
	}
	total, own, err := e.receiptToWrite()
	if err != nil {
		return err
	}
	fmt.Printf("\nlatency: %d firings, one every %s, each for a distinct subaccount\n", len(e.accounts), gap)
	percentiles("daemon overhead: receipt -> write", own)
	percentiles("receipt -> write, all included", total)
	percentiles("sent -> 200 (durable)", answered)
	percentiles("sent -> suspend write at Twilio", overhead)
	fmt.Println("  receipt -> write: from the callback handler's start to the suspend request written to")
	fmt.Println("  the connection (each suspension's receipt_to_write log field). The daemon's overhead is")
	fmt.Println("  that minus twilio_wait, the time it waited for Twilio's answer to the read before the")
	fmt.Println("  write once the firing was durable. The last two are seen from outside and add both")
	fmt.Println("  loopback hops and the simulator's parsing.")
	return nil
}

// receiptToWrite reads the receipt_to_write and twilio_wait of every
// "incident handled" line in the daemon's log: the totals, and the daemon's
// own share (total minus twilio_wait).
func (e *env) receiptToWrite() (total, own []time.Duration, err error) {
	f, err := os.Open(e.logPath())
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg            string `json:"msg"`
			ReceiptToWrite int64  `json:"receipt_to_write"`
			TwilioWait     int64  `json:"twilio_wait"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "incident handled" && l.ReceiptToWrite > 0 {
			total = append(total, time.Duration(l.ReceiptToWrite))
			own = append(own, time.Duration(l.ReceiptToWrite-l.TwilioWait))
		}
	}
	return total, own, sc.Err()
}

func valid(e *env, count, conc int) error {
	var next, ok, other atomic.Int64
	lat := make([][]time.Duration, conc)
	st0, err := e.state(context.Background())
	if err != nil {
		return err
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				a := e.accounts[i%len(e.accounts)]
				day := i / len(e.accounts) // each (account, day) is a distinct incident
				f, sig := e.firing(a, fmt.Sprintf("%s-FIRES-v-%d", a.SID, i), day)
				t0 := time.Now()
				code, err := e.send(f, sig)
				lat[w] = append(lat[w], time.Since(t0))
				if err == nil && code == 200 {
					ok.Add(1)
				} else {
					other.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	rss, hwm := rssKiB(e.daemon.Process.Pid)
	fmt.Printf("\nvalid: %d signed firings, %d concurrent senders, %d subaccounts\n", count, conc, len(e.accounts))
	fmt.Printf("  accepted (200, durable): %d, other: %d, in %s = %.0f/s\n", ok.Load(), other.Load(), el.Round(time.Millisecond), float64(ok.Load())/el.Seconds())
	percentiles("callback latency", all)
	fmt.Printf("  daemon RSS %.1f MiB (peak %.1f MiB)\n", float64(rss)/1024, float64(hwm)/1024)
	// The burst drains: every subaccount that got a firing is suspended
	// (one status write each).
	want := min(count, len(e.accounts))
	for {
		st, err := e.state(context.Background())
		if err != nil {
			return err
		}
		if n := st.Requests["accounts.update"] - st0.Requests["accounts.update"]; n >= want {
			d := time.Since(start)
			fmt.Printf("  burst drained: %d suspensions %s after the first firing = %.0f suspensions/s\n", n, d.Round(time.Millisecond), float64(n)/d.Seconds())
			return nil
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("the burst did not drain: %d of %d suspensions", st.Requests["accounts.update"]-st0.Requests["accounts.update"], want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func forged(e *env, dur time.Duration, conc int) error {
	rssBefore, _ := rssKiB(e.daemon.Process.Pid)
	var total atomic.Int64
	var codes sync.Map
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	var samples []int
	var smu sync.Mutex
	go func() { // sample the daemon's RSS during the flood
		for time.Now().Before(stop) {
			r, _ := rssKiB(e.daemon.Process.Pid)
			smu.Lock()
			samples = append(samples, r)
			smu.Unlock()
			time.Sleep(500 * time.Millisecond)
		}
	}()
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			sig := make([]byte, 20)
			for i := 0; time.Now().Before(stop); i++ {
				a := e.accounts[rng.IntN(len(e.accounts))]
				f, _ := e.firing(a, fmt.Sprintf("forged-%d-%d", w, i), 0)
				for j := range sig {
					sig[j] = byte(rng.Uint32())
				}
				code, err := e.send(f, base64.StdEncoding.EncodeToString(sig))
				if err != nil {
					code = -1
				}
				c, _ := codes.LoadOrStore(code, new(atomic.Int64))
				c.(*atomic.Int64).Add(1)
				total.Add(1)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	rssAfter, hwm := rssKiB(e.daemon.Process.Pid)
	fmt.Printf("\nforged: %d concurrent senders for %s against %d subaccounts\n", conc, dur, len(e.accounts))
	fmt.Printf("  requests: %d = %.0f/s; answers:", total.Load(), float64(total.Load())/el.Seconds())
	codes.Range(func(k, v any) bool { fmt.Printf(" %v×%d", k, v.(*atomic.Int64).Load()); return true })
	fmt.Println()
	fmt.Printf("  daemon RSS before %.1f MiB, during %v MiB samples, after %.1f MiB, peak %.1f MiB\n",
		float64(rssBefore)/1024, mib(samples), float64(rssAfter)/1024, float64(hwm)/1024)
	writes, _ := e.state(context.Background())
	fmt.Printf("  Twilio write calls after the flood: accounts.update=%d\n", writes.Requests["accounts.update"])
	return nil
}

func mib(kib []int) []string {
	var out []string
	for i, k := range kib {
		if i%4 == 0 {
			out = append(out, fmt.Sprintf("%.1f", float64(k)/1024))
		}
	}
	return out
}

func forgedWrk(e *env, dur time.Duration, conc int) error {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		return fmt.Errorf("wrk not found (apt-get install wrk): %w", err)
	}
	a := e.accounts[0]
	f, _ := e.firing(a, "forged-wrk", 0)
	script := filepath.Join(e.dir, "forged.lua")
	lua := fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\nwrk.headers[\"X-Twilio-Signature\"] = \"bm90IGEgcmVhbCBzaWduYXR1cmUhIQ==\"\n", f.Encode())
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		return err
	}
	rssBefore, _ := rssKiB(e.daemon.Process.Pid)
	var samples []int
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
				r, _ := rssKiB(e.daemon.Process.Pid)
				samples = append(samples, r)
			}
		}
	}()
	out, err := exec.Command(wrk, "-t", "1", "-c", fmt.Sprint(conc), "-d", dur.String(), "--latency", "-s", script, e.publicURL+rulePath).CombinedOutput()
	close(done)
	if err != nil {
		return fmt.Errorf("wrk: %v\n%s", err, out)
	}
	rssAfter, hwm := rssKiB(e.daemon.Process.Pid)
	fmt.Printf("\nforged (wrk, 1 thread, %d connections, %s): one known account, a well-formed but wrong signature\n%s", conc, dur, out)
	fmt.Printf("  daemon RSS before %.1f MiB, during %v MiB samples, after %.1f MiB, peak %.1f MiB\n",
		float64(rssBefore)/1024, mib(samples), float64(rssAfter)/1024, float64(hwm)/1024)
	rejected, _ := e.metric(`usagebreaker_callbacks_total{outcome="bad_signature"}`)
	accepted, _ := e.metric(`usagebreaker_callbacks_total{outcome="accepted"}`)
	fmt.Printf("  daemon counted bad_signature=%.0f accepted=%.0f\n", rejected, accepted)
	st, _ := e.state(context.Background())
	fmt.Printf("  Twilio write calls after the flood: accounts.update=%d\n", st.Requests["accounts.update"])
	return nil
}
