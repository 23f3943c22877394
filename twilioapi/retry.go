package twilioapi

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Retries are done by github.com/hashicorp/go-retryablehttp: every API call
// builds a cheap per-call retryablehttp.Client (so its Backoff can log with the
// call's operation) whose CheckRetry and Backoff are the policy below, and
// wraps it in a retryablehttp.RoundTripper under twilio-go's http.Client. The
// policy finds the call's operation and idempotency in the request's context
// (callState, attached by bindContext), so the same transport chain serves
// idempotent reads/updates and non-idempotent creates.

// idempotency says whether repeating a request that may already have been
// processed is harmless.
type idempotency uint8

const (
	// idempotent requests (GET, DELETE, and the update POSTs: trigger
	// update, call update) are retried on 429, 5xx and transport
	// errors/timeouts.
	idempotent idempotency = iota + 1
	// notIdempotent requests (trigger create, message create, and account
	// status writes, whose every repeat Twilio records) are retried only
	// when Twilio certainly did not process them: on 429 ("Requests that
	// receive 429 responses aren't processed") and when the connection could
	// not even be established (a dial error: nothing was sent). A 5xx or a
	// transport error after the request was sent is ambiguous and is returned
	// to the caller (CreateTrigger then looks for the trigger; SendMessage
	// gives up).
	notIdempotent
)

// callState is the per-call holder shared by the transport chain and the
// method that started the call. It rides in the request context.
type callState struct {
	op   string
	idem idempotency

	mu       sync.Mutex
	attempts int         // HTTP attempts actually started (a concurrency slot was obtained)
	status   int         // the last attempt's HTTP status; 0 after a transport error
	header   http.Header // the last attempt's response headers
	body     []byte      // the last attempt's body snippet when status >= 400
	err      error       // the last attempt's transport error
}

type callKey struct{}

func withCall(ctx context.Context, st *callState) context.Context {
	return context.WithValue(ctx, callKey{}, st)
}

func callFrom(ctx context.Context) *callState {
	st, _ := ctx.Value(callKey{}).(*callState)
	return st
}

// begin counts a new attempt and forgets the previous attempt's outcome.
func (s *callState) begin() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.attempts++
	s.status, s.header, s.body, s.err = 0, nil, nil, nil
	s.mu.Unlock()
}

func (s *callState) record(status int, header http.Header, body []byte, err error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.status, s.header, s.body, s.err = status, header, body, err
	s.mu.Unlock()
}

type lastAttempt struct {
	attempts int
	status   int
	header   http.Header
	body     []byte
	err      error
}

func (s *callState) last() lastAttempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return lastAttempt{attempts: s.attempts, status: s.status, header: s.header, body: s.body, err: s.err}
}

// retryPolicy decides whether to retry an attempt and how long to wait.
type retryPolicy struct {
	now    func() time.Time
	jitter func(n int64) int64 // uniform in [0, n)
}

func newRetryPolicy() *retryPolicy {
	return &retryPolicy{now: time.Now, jitter: rand.Int64N}
}

// checkRetry is the retryablehttp.CheckRetry. It reads the call's
// idempotency from ctx (the request's context).
func (p *retryPolicy) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		// The caller gave up: no more attempts, no more waiting.
		return false, ctx.Err()
	}
	idem := idempotent
	if st := callFrom(ctx); st != nil {
		idem = st.idem
	}
	if err != nil {
		// Let retryablehttp rule out errors that never heal (bad scheme,
		// invalid header, untrusted certificate, redirect loops).
		if ok, _ := retryablehttp.DefaultRetryPolicy(ctx, nil, err); !ok {
			return false, nil
		}
		if idem == idempotent {
			return true, nil
		}
		return neverSent(err), nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, nil // not processed by Twilio: safe even for creates
	case resp.StatusCode >= 500:
		return idem == idempotent, nil
	}
	return false, nil
}

// neverSent reports a transport error that certainly happened before the
// request reached Twilio: the connection could not be established.
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// backoff is the retryablehttp.Backoff: Retry-After when the response has one
// (seconds or an HTTP date, capped by max), else exponential from min with
// equal jitter (half fixed, half random), capped by max. attempt is 0 for the
// wait after the first attempt.
func (p *retryPolicy) backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), p.now()); ok {
			return min(d, maxWait)
		}
	}
	base := minWait
	for i := 0; i < attempt && base < maxWait; i++ {
		base *= 2
	}
	if base > maxWait || base <= 0 {
		base = maxWait
	}
	half := base / 2
	return half + time.Duration(p.jitter(int64(base-half)+1))
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110 §10.2.3). A date in the past means no wait.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second) // avoid overflow; max caps it anyway
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// giveUp is the retryablehttp.ErrorHandler. When the attempts are used up on
// an HTTP error status it hands the last response to twilio-go, which turns it
// into its error; when there is an error it returns only the error (and closes
// the response), as an http.RoundTripper must.
func giveUp(resp *http.Response, err error, _ int) (*http.Response, error) {
	if err != nil {
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		return nil, err
	}
	return resp, nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
