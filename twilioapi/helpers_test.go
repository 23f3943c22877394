package twilioapi

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

const (
	testParent = "AC0123456789abcdef0123456789abcdef"
	testToken  = "s3cretT0kenABCDEFabcdef0123456789"
	testSub    = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	testSub2   = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// fakeTwilio is a loopback httptest server that checks Basic auth like Twilio
// and counts requests by "METHOD path".
type fakeTwilio struct {
	*httptest.Server
	mu       sync.Mutex
	requests map[string]int
}

func newFake(t *testing.T, h http.HandlerFunc) *fakeTwilio {
	t.Helper()
	f := &fakeTwilio{requests: map[string]int{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests[r.Method+" "+r.URL.Path]++
		f.mu.Unlock()
		if u, p, ok := r.BasicAuth(); !ok || u != testParent || p != testToken {
			twilioError(w, http.StatusUnauthorized, 20003, "Authenticate")
			return
		}
		h(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeTwilio) count(methodPath string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[methodPath]
}

func (f *fakeTwilio) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.requests {
		n += v
	}
	return n
}

// testOptions are fast: tiny backoffs, its own registry.
func testOptions(baseURL string) Options {
	return Options{
		AccountSID:  testParent,
		AuthToken:   testToken,
		BaseURL:     baseURL,
		MaxAttempts: 5,
		MinBackoff:  50 * time.Microsecond,
		MaxBackoff:  time.Millisecond,
		Registerer:  prometheus.NewRegistry(),
	}
}

func newTestClient(t *testing.T, opts Options) *Client {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func twilioError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, map[string]any{
		"code":      code,
		"message":   msg,
		"more_info": fmt.Sprintf("https://www.twilio.com/docs/errors/%d", code),
		"status":    status,
	})
}

// dropConnection makes the client see a transport error after the request
// was sent.
func dropConnection(t *testing.T, w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		t.Error("response writer cannot hijack")
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	conn.Close()
}

func accountJSON(sid, name, status string) map[string]any {
	return map[string]any{
		"sid": sid, "friendly_name": name, "status": status,
		"owner_account_sid": testParent, "auth_token": "subtoken" + sid[2:10], "type": "Full",
	}
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	e, ok := err.(*Error)
	if !ok {
		t.Fatalf("error %T %v is not a *Error", err, err)
	}
	return e
}

// metricValue returns a counter's value (or a histogram's sample count) for
// the given labels from reg.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metric
				}
			}
			if len(got) != len(labels) {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func registry(opts Options) *prometheus.Registry { return opts.Registerer.(*prometheus.Registry) }

func debugLogger(b *testenv.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func lines(s, substr string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}
