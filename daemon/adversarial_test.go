package daemon_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// writeOps are the Twilio operations that change something.
var writeOps = []string{"accounts.update", "accounts.create", "triggers.create", "triggers.update", "triggers.delete", "messages.create", "calls.update"}

// badCallback is one hostile request and the outcome label it must be counted under.
type badCallback struct {
	kind    string
	method  string
	url     string
	ctype   string
	body    []byte
	sig     string
	outcome []string // acceptable usagebreaker_callbacks_total outcomes
}

// TestAdversarialCallbacks sends more than 10,000 bad callbacks of every kind
// to the real daemon: none is accepted, Twilio sees no write, and the
// metrics count every rejection.
func TestAdversarialCallbacks(t *testing.T) {
	const perKind = 1200
	e := startEnvOpts(t, tenantNames(4), e2eRules, envOpts{quiet: true})
	victim, other := e.accounts["tenant-00"], e.accounts["tenant-01"]
	var trigger string
	for _, tr := range e.account("tenant-00").Triggers {
		if strings.HasSuffix(tr.FriendlyName, ":spend-daily") {
			trigger = tr.SID
		}
	}
	ruleURL := e.public + "/twilio/usage-triggers/spend-daily"
	params := func(i int) url.Values {
		return url.Values{
			"AccountSid": {victim.SID}, "UsageTriggerSid": {trigger}, "DateFired": {time.Now().UTC().Format(time.RFC1123Z)},
			"Recurring": {"daily"}, "UsageCategory": {"totalprice"}, "TriggerBy": {"price"}, "TriggerValue": {"50"},
			"CurrentValue": {"60"}, "UsageRecordUri": {"/2010-04-01/Accounts/" + victim.SID + "/Usage/Records/Today.json?Category=totalprice"},
			"IdempotencyToken": {fmt.Sprintf("%s-FIRES-%s-attack-%d", victim.SID, trigger, i)},
		}
	}
	sign := func(token, u string, p url.Values) string { return twiliosim.SignatureFor(token, u, p) }
	form := "application/x-www-form-urlencoded"
	randSID := func() string {
		b := make([]byte, 16)
		rand.Read(b)
		return "AC" + hex.EncodeToString(b)
	}
	fields := []string{"AccountSid", "UsageTriggerSid", "DateFired", "Recurring", "UsageCategory", "TriggerBy", "TriggerValue", "CurrentValue", "UsageRecordUri", "IdempotencyToken"}
	required := []string{"UsageTriggerSid", "IdempotencyToken", "UsageCategory", "TriggerBy", "CurrentValue"}

	var reqs []badCallback
	for i := 0; i < perKind; i++ {
		p := params(i)
		good := sign(victim.AuthToken, ruleURL, p)
		// A forged signature.
		fake := make([]byte, 20)
		rand.Read(fake)
		reqs = append(reqs, badCallback{"forged signature", "POST", ruleURL, form, []byte(p.Encode()), base64.StdEncoding.EncodeToString(fake), []string{"bad_signature"}})
		// One parameter altered after signing (or one added).
		alt, altOutcome := params(i), "bad_signature"
		if f := fields[i%(len(fields)+1)%len(fields)]; i%(len(fields)+1) == len(fields) {
			alt.Set("Extra", "1")
		} else {
			alt.Set(f, alt.Get(f)+"0")
			if f == "AccountSid" {
				altOutcome = "unknown_account" // no longer an account SID at all
			}
		}
		reqs = append(reqs, badCallback{"one parameter altered", "POST", ruleURL, form, []byte(alt.Encode()), good, []string{altOutcome}})
		// Signed with another subaccount's token.
		reqs = append(reqs, badCallback{"another subaccount's token", "POST", ruleURL, form, []byte(p.Encode()), sign(other.AuthToken, ruleURL, p), []string{"bad_signature"}})
		// The right signature, sent to another rule's path (or a rule that does not exist).
		path := []string{"calls-notify", "sms-monthly", "no-such-rule"}[i%3]
		reqs = append(reqs, badCallback{"another path or rule", "POST", e.public + "/twilio/usage-triggers/" + path, form, []byte(p.Encode()), good, []string{"bad_signature"}})
		// GET, with the parameters in the query.
		getURL := ruleURL + "?" + p.Encode()
		reqs = append(reqs, badCallback{"GET", "GET", getURL, "", nil, sign(victim.AuthToken, getURL, nil), []string{"bad_request"}})
		// A wrong content type (the body and signature otherwise right).
		ct := []string{"application/json", "text/plain", "multipart/form-data; boundary=x", ""}[i%4]
		reqs = append(reqs, badCallback{"wrong content type", "POST", ruleURL, ct, []byte(p.Encode()), good, []string{"bad_request"}})
		// Broken encoding.
		broken := []string{p.Encode() + "&CurrentValue=%zz", "AccountSid=" + victim.SID + "&%", p.Encode() + ";x=1", p.Encode() + "&AccountSid=" + other.SID}[i%4]
		reqs = append(reqs, badCallback{"broken encoding", "POST", ruleURL, form, []byte(broken), good, []string{"bad_request"}})
		// A required field missing, correctly signed without it.
		miss := params(i)
		if i%6 == 5 {
			miss.Del("AccountSid")
		} else {
			miss.Del(required[i%6%len(required)])
		}
		reqs = append(reqs, badCallback{"missing fields", "POST", ruleURL, form, []byte(miss.Encode()), sign(victim.AuthToken, ruleURL, miss), []string{"bad_request"}})
		// An account that is not a subaccount of the parent, signed with a made-up token.
		unk := params(i)
		unk.Set("AccountSid", randSID())
		reqs = append(reqs, badCallback{"unknown account", "POST", ruleURL, form, []byte(unk.Encode()), sign("made-up", ruleURL, unk), []string{"unknown_account"}})
	}
	huge := bytes.Repeat([]byte("a"), 10<<20)
	copy(huge, params(0).Encode()+"&Pad=")
	for i := 0; i < 8; i++ {
		reqs = append(reqs, badCallback{"10 MB body", "POST", ruleURL, form, huge, sign(victim.AuthToken, ruleURL, params(0)), []string{"bad_request"}})
	}
	if len(reqs) < 10000 {
		t.Fatalf("only %d bad callbacks", len(reqs))
	}

	before := e.state()
	outcomes := []string{"accepted", "duplicate", "bad_signature", "bad_request", "unknown_rule", "unknown_account", "error"}
	metricsBefore := map[string]float64{}
	for _, o := range outcomes {
		metricsBefore[o] = e.metric(`usagebreaker_callbacks_total{outcome="` + o + `"}`)
	}
	start := time.Now()

	var (
		mu       sync.Mutex
		statuses = map[string]map[int]int{} // kind -> status -> n
		wg       sync.WaitGroup
		next     = make(chan badCallback)
	)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range next {
				req, _ := http.NewRequest(r.method, r.url, bytes.NewReader(r.body))
				if r.body == nil {
					req.Body = nil
				}
				if r.ctype != "" {
					req.Header.Set("Content-Type", r.ctype)
				}
				req.Header.Set("X-Twilio-Signature", r.sig)
				status := -1 // no answer (the server may close on a 10 MB body)
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				mu.Lock()
				if statuses[r.kind] == nil {
					statuses[r.kind] = map[int]int{}
				}
				statuses[r.kind][status]++
				mu.Unlock()
			}
		}()
	}
	for _, r := range reqs {
		next <- r
	}
	close(next)
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d bad callbacks in %s: %v", len(reqs), took, statuses)

	for kind, byStatus := range statuses {
		for status, n := range byStatus {
			switch {
			case status == 200:
				t.Errorf("%s: %d answered 200", kind, n)
			case status == -1 && kind != "10 MB body":
				t.Errorf("%s: %d got no answer", kind, n)
			}
		}
	}
	want := map[string]float64{}
	for _, r := range reqs {
		want[strings.Join(r.outcome, "|")]++
	}
	got := map[string]float64{}
	for _, o := range outcomes {
		got[o] = e.metric(`usagebreaker_callbacks_total{outcome="`+o+`"}`) - metricsBefore[o]
	}
	if got["accepted"] != 0 || got["duplicate"] != 0 {
		t.Fatalf("accepted %v, duplicate %v", got["accepted"], got["duplicate"])
	}
	if got["bad_signature"] != want["bad_signature"] || got["bad_request"] != want["bad_request"] ||
		got["unknown_account"] != want["unknown_account"] || got["error"] != 0 { // never an error, which pages
		t.Errorf("metrics counted %v, want %v", got, want)
	}
	if incs := e.incidents(""); len(incs) != 0 {
		t.Fatalf("incidents: %+v", incs)
	}
	after := e.state()
	for _, op := range writeOps {
		if after.Requests[op] != before.Requests[op] {
			t.Errorf("Twilio %s: %d requests during the attack", op, after.Requests[op]-before.Requests[op])
		}
	}
	// Lookups of unknown accounts and token re-fetches are rate-limited reads.
	if reads := after.Requests["accounts.fetch"] - before.Requests["accounts.fetch"]; reads > 10+2*int(took.Seconds()+1) {
		t.Errorf("%d account fetches in %s: not rate-limited", reads, took)
	}
	for _, a := range after.Accounts {
		if a.Status != "active" {
			t.Errorf("%s is %s", a.FriendlyName, a.Status)
		}
	}

	// The control: the same daemon accepts a real callback, signed the same way.
	p := params(-1)
	p.Set("UsageCategory", "sms")
	p.Set("TriggerBy", "count")
	p.Set("CurrentValue", "10001")
	u := e.public + "/twilio/usage-triggers/sms-monthly" // a dry-run rule: nothing is written
	code, body := e.post(u, "", p, map[string]string{"X-Twilio-Signature": sign(victim.AuthToken, u, p)})
	if code != 200 {
		t.Fatalf("a genuine callback after the attack: %d %s", code, body)
	}
}
