package twilioapi

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The transport chain of one API call, top to bottom:
//
//	twilio-go client.Client (per call)
//	  http.Client (per call, no redirects)
//	    bindContext        binds the caller's ctx (+ callState) to the request
//	      retryablehttp.RoundTripper / Client (per call): CheckRetry, Backoff
//	        http.Client (shared, no redirects, no timeout)
//	          attemptTransport  concurrency slot, per-attempt timeout, metrics,
//	                            records status/body in the callState
//	            rewriteTransport  api.twilio.com -> Options.BaseURL
//	              base transport (Options.Transport)

// maxErrorBody bounds how much of an error response is kept.
const maxErrorBody = 64 << 10

// bindContext gives twilio-go's context-less requests the caller's context.
type bindContext struct {
	ctx  context.Context
	next http.RoundTripper
}

func (b bindContext) RoundTrip(req *http.Request) (*http.Response, error) {
	return b.next.RoundTrip(req.WithContext(b.ctx))
}

// rewriteTransport sends requests for twilio-go's hard-coded
// https://api.twilio.com to the configured base URL (scheme, host and an
// optional path prefix). It runs below twilio-go's edge/region rewriting, and
// next_page_uri pages (which twilio-go prefixes with https://api.twilio.com)
// pass through it too.
type rewriteTransport struct {
	scheme, host string
	prefix       string // decoded path prefix without trailing slash, "" for none
	rawPrefix    string // the same, escaped
	next         http.RoundTripper
}

func newRewriteTransport(base *url.URL, next http.RoundTripper) *rewriteTransport {
	return &rewriteTransport{
		scheme:    base.Scheme,
		host:      base.Host,
		prefix:    strings.TrimRight(base.Path, "/"),
		rawPrefix: strings.TrimRight(base.EscapedPath(), "/"),
		next:      next,
	}
}

func (t *rewriteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := new(http.Request)
	*r = *req // shallow copy: RoundTrip must not modify the caller's request
	u := *req.URL
	u.Scheme, u.Host = t.scheme, t.host
	// A next_page_uri written by a server that already includes the prefix
	// is not prefixed twice (all Twilio API paths start with a version).
	if t.prefix != "" && u.Path != t.prefix && !strings.HasPrefix(u.Path, t.prefix+"/") {
		raw := u.EscapedPath()
		u.Path = t.prefix + u.Path
		u.RawPath = t.rawPrefix + raw
	}
	r.URL = &u
	r.Host = t.host
	return t.next.RoundTrip(r)
}

// attemptTransport wraps every single HTTP attempt: it holds one of the
// MaxConcurrency slots from the moment the attempt starts until its response
// body is read to the end or closed (never during backoff waits), applies the
// per-attempt timeout, counts the attempt in the metrics and records its
// outcome in the call's callState.
type attemptTransport struct {
	sem     chan struct{}
	timeout time.Duration
	metrics *metrics
	next    http.RoundTripper
}

func (t *attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	st := callFrom(ctx)
	op := "unknown"
	if st != nil {
		op = st.op
	}

	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, ctx.Err()
	}
	release := sync.OnceFunc(func() { <-t.sem })
	actx, cancel := context.WithTimeout(ctx, t.timeout)
	// Whatever happens to the body, the slot is freed when the attempt's
	// context ends (timeout, caller cancellation, or cancel below).
	context.AfterFunc(actx, release)
	st.begin()

	start := time.Now()
	resp, err := t.next.RoundTrip(req.WithContext(actx))
	elapsed := time.Since(start)
	if err != nil {
		release()
		cancel()
		t.metrics.observe(op, "error", elapsed)
		st.record(0, nil, nil, err)
		return nil, err
	}
	t.metrics.observe(op, strconv.Itoa(resp.StatusCode), elapsed)

	if resp.StatusCode >= 400 {
		// Keep the error body (twilio-go does not close it, and needs it;
		// non-JSON bodies are parsed from the snippet), and end the attempt now.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		release()
		cancel()
		st.record(resp.StatusCode, resp.Header, b, nil)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return resp, nil
	}
	st.record(resp.StatusCode, resp.Header, nil, nil)
	resp.Body = &attemptBody{rc: resp.Body, release: release, cancel: cancel}
	return resp, nil
}

// attemptBody frees the attempt's slot at EOF or Close, and ends its context
// at Close.
type attemptBody struct {
	rc      io.ReadCloser
	release func()
	cancel  context.CancelFunc
}

func (b *attemptBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.release()
	}
	return n, err
}

func (b *attemptBody) Close() error {
	err := b.rc.Close()
	b.release()
	b.cancel()
	return err
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
