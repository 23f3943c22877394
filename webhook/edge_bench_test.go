package webhook

import (
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
)

// The cost of a rejected request at each stage, for docs and the report:
//
//	go test ./webhook -run '^$' -bench Edge -benchmem
func benchEdge(b *testing.B, pol AuthPolicy, lim RejectLimit, r req, user, pass string) {
	fb := newFake()
	m := breaker.NewMetrics(nil)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	e := NewEdge(New(fb, m, log), EdgeOptions{Auth: func() AuthPolicy { return pol },
		Limiter: NewRejectLimiter(lim, nil), Metrics: m, Logger: log})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		hr := httptest.NewRequest(r.method, "http://10.0.0.1:8080"+r.path, strings.NewReader(r.body))
		hr.RemoteAddr = "198.51.100.9:4000"
		hr.Header.Set("Content-Type", r.ctype)
		hr.Header.Set("X-Twilio-Signature", r.sig)
		if user != "" {
			hr.SetBasicAuth(user, pass)
		}
		e.ServeHTTP(httptest.NewRecorder(), hr)
	}
}

var noLimit = RejectLimit{Burst: 1 << 30, Every: time.Nanosecond, MaxClients: 10}

func BenchmarkEdgeForgedSignature(b *testing.B) {
	benchEdge(b, AuthPolicy{}, noLimit, signed("tokenB", path, firing(acctA)), "", "")
}

func BenchmarkEdgeUnauthorized(b *testing.B) {
	benchEdge(b, AuthPolicy{Required: true, Accept: []Credential{creds}}, noLimit, signed("tokenA", path, firing(acctA)), "twilio", "guess")
}

func BenchmarkEdgeThrottled(b *testing.B) {
	benchEdge(b, AuthPolicy{}, RejectLimit{Burst: 1, Every: time.Hour, MaxClients: 10}, signed("tokenB", path, firing(acctA)), "", "")
}

func BenchmarkEdgeAccepted(b *testing.B) {
	benchEdge(b, AuthPolicy{Required: true, Accept: []Credential{creds}}, noLimit, signed("tokenA", path, firing(acctA)), "twilio", creds.Password.Reveal())
}

func BenchmarkRejectLimiterManyClients(b *testing.B) {
	l := NewRejectLimiter(DefaultRejectLimit, nil)
	keys := make([]string, 50000)
	for i := range keys {
		keys[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := keys[i%len(keys)]
		l.throttled(k, bucketAuthenticated)
		l.reject(k, bucketAuthenticated)
	}
	if l.Len() > DefaultRejectLimit.MaxClients {
		b.Fatalf("%d clients", l.Len())
	}
}
