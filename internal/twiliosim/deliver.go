package twiliosim

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// maxAttempts is the first try plus Twilio's "three quick retries after a 5xx".
const maxAttempts = 4

// job is the delivery of one firing.
type job struct {
	firing    Firing
	rawURL    string // as registered, possibly with userinfo
	method    string
	authToken string // the account's auth token at firing time
	params    url.Values
	done      chan struct{}
	attempts  []Delivery // guarded by Sim.mu
}

// start launches the jobs (created under the lock, counted in inflight) and
// returns their firings.
func (s *Sim) start(jobs []*job) []Firing {
	out := make([]Firing, 0, len(jobs))
	for _, j := range jobs {
		j.firing.job = j
		out = append(out, j.firing)
		s.log.Info("usage trigger fired", "trigger", j.firing.TriggerSID, "account", j.firing.AccountSID,
			"current_value", j.firing.CurrentValue.String(), "url", j.firing.CallbackURL)
		s.wg.Add(1)
		go s.deliver(j)
	}
	return out
}

func (s *Sim) deliver(j *job) {
	defer func() {
		s.mu.Lock()
		s.inflight--
		if s.inflight == 0 && s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
		s.mu.Unlock()
		close(j.done)
		s.wg.Done()
	}()
	target, user, err := callbackTarget(j.rawURL, j.method, j.params)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if attempt > 1 && s.retryDelay > 0 {
			t := time.NewTimer(s.retryDelay)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
		if s.ctx.Err() != nil {
			return
		}
		d := Delivery{
			TriggerSID:       j.firing.TriggerSID,
			AccountSID:       j.firing.AccountSID,
			IdempotencyToken: j.firing.IdempotencyToken,
			Attempt:          attempt,
			Method:           j.method,
			Params:           flatten(j.params),
		}
		if err != nil {
			d.URL = redactURL(j.rawURL)
			d.Error = err.Error()
		} else {
			d.URL = target.signedURL
			d.Signature = sign(j.authToken, target.signedURL, target.signedParams)
			if user != nil {
				d.BasicAuthUser = user.Username()
			}
			s.attempt(j, target, user, &d)
		}
		if s.ctx.Err() != nil && d.Status == 0 {
			return // closed while sending: not an attempt worth recording
		}
		s.mu.Lock()
		d.At = s.nowLocked()
		j.attempts = append(j.attempts, d)
		s.deliveries = append(s.deliveries, d)
		s.mu.Unlock()
		s.log.Info("usage trigger callback", "trigger", d.TriggerSID, "attempt", d.Attempt,
			"status", d.Status, "error", d.Error, "fault", d.Fault)
		if err != nil || !d.Retryable() {
			return
		}
	}
}

type callback struct {
	signedURL    string     // URL without userinfo/fragment (with the params for GET)
	signedParams url.Values // the POST params that are signed (nil for GET)
	body         string
}

// callbackTarget builds the request Twilio would send: userinfo becomes Basic
// auth and is left out of the signed URL; the fragment (connection overrides) is
// never sent nor signed; GET carries the params in the query.
func callbackTarget(raw, method string, params url.Values) (callback, *url.Userinfo, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return callback{}, nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return callback{}, nil, errors.New("callback URL is not an absolute http(s) URL")
	}
	user := u.User
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	if method == http.MethodGet {
		q := params.Encode()
		if u.RawQuery != "" {
			u.RawQuery += "&" + q
		} else {
			u.RawQuery = q
		}
		return callback{signedURL: u.String()}, user, nil
	}
	return callback{signedURL: u.String(), signedParams: params, body: params.Encode()}, user, nil
}

// sign computes X-Twilio-Signature: base64(HMAC-SHA1(token, url + each POST
// param name and value, sorted by name)).
func sign(token, u string, params url.Values) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(u)
	for _, k := range keys {
		for _, v := range params[k] {
			b.WriteString(k)
			b.WriteString(v)
		}
	}
	mac := hmac.New(sha1.New, []byte(token))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// attempt sends one callback request (or lets a callbacks fault decide it).
func (s *Sim) attempt(j *job, cb callback, user *url.Userinfo, d *Delivery) {
	path := ""
	if u, err := url.Parse(cb.signedURL); err == nil {
		path = u.Path
	}
	if f := s.takeFault(TargetCallbacks, j.method, path); f != nil {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				d.Error = "simulator closed"
				d.Fault = true
				return
			}
		}
		switch {
		case f.Status != 0:
			d.Status = f.Status
			d.Fault = true
			return
		case f.Delay == 0 || f.Drop:
			d.Error = "dropped by fault"
			d.Fault = true
			return
		}
		// Status 0 with a delay: deliver normally, late.
	}
	var body io.Reader
	if j.method != http.MethodGet {
		body = strings.NewReader(cb.body)
	}
	req, err := http.NewRequestWithContext(s.ctx, j.method, cb.signedURL, body)
	if err != nil {
		d.Error = err.Error()
		return
	}
	if j.method != http.MethodGet {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("X-Twilio-Signature", d.Signature)
	req.Header.Set("User-Agent", "TwilioProxy/1.1")
	req.Header.Set("Accept", "*/*")
	// Twilio adds a unique I-Twilio-Idempotency-Token per attempt (CO-DOC).
	req.Header.Set("I-Twilio-Idempotency-Token", newSID("")[:32])
	if user != nil {
		pw, _ := user.Password()
		req.SetBasicAuth(user.Username(), pw)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		d.Error = err.Error()
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	d.Status = resp.StatusCode
	d.ResponseBody = string(b)
}

func flatten(v url.Values) map[string]string {
	m := make(map[string]string, len(v))
	for k := range v {
		m[k] = v.Get(k)
	}
	return m
}

// redactURL drops userinfo (credentials) and the fragment from a URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// SignatureFor computes the X-Twilio-Signature Twilio sends for a form POST to
// url with params, signed with authToken (for tests of receivers).
func SignatureFor(authToken, url string, params url.Values) string {
	return sign(authToken, url, params)
}
