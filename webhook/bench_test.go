package webhook

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func BenchmarkSignatureCheck(b *testing.B) {
	form := firing(acctA)
	body := []byte(form.Encode())
	u := public + path
	sig := sign("tokenA", u, form)
	b.ReportAllocs()
	for b.Loop() {
		if !validSignature("tokenA", u, body, sig) {
			b.Fatal("invalid")
		}
	}
}

func BenchmarkCallbackParse(b *testing.B) {
	body := firing(acctA).Encode()
	b.ReportAllocs()
	for b.Loop() {
		form, err := url.ParseQuery(body)
		if err != nil || form.Get("AccountSid") == "" {
			b.Fatal(err)
		}
	}
}

// nullWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the handler, not httptest's recorder.
type nullWriter struct{ h http.Header }

func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nullWriter) WriteHeader(int)             {}

type bodyReader struct{ *strings.Reader }

func (bodyReader) Close() error { return nil }

func benchRequest(body, sig string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "http://10.0.0.1:8080"+path, nil)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("X-Twilio-Signature", sig)
	r.Body = bodyReader{strings.NewReader(body)}
	r.ContentLength = int64(len(body))
	return r
}

// BenchmarkHandlerForged: a forged signature for a known account, the cost of
// rejecting a flood.
func BenchmarkHandlerForged(b *testing.B) {
	h := New(newFake(), nil, nil)
	body := firing(acctA).Encode()
	w := &nullWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		r := benchRequest(body, "bm90IGEgdmFsaWQgc2lnbmF0dXJlIQ==")
		h.ServeHTTP(w, r)
	}
}

// BenchmarkHandlerAccepted: the whole handler with the real breaker and a
// real SQLite store: parse, signature, and a durable write per callback
// (each a new incident).
func BenchmarkHandlerAccepted(b *testing.B) {
	st, err := store.Open(context.Background(), filepath.Join(b.TempDir(), "s.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	r := &rules.Rule{Name: "spend", UsageCategory: "totalprice", TriggerBy: "price", Recurring: "daily", Threshold: decimal.MustParse("50"), Action: "suspend"}
	api := &staticAPI{acct: acctA}
	br := breaker.New(breaker.Options{API: api, Store: st, Settings: breaker.Settings{Instance: "b", PublicURL: public, Rules: rules.NewSet([]*rules.Rule{r})}})
	br.Accounts().Replace([]twilioapi.Account{acctA})
	h := New(br, nil, nil)
	w := &nullWriter{h: http.Header{}}
	var n atomic.Int64
	b.ReportAllocs()
	for b.Loop() {
		i := n.Add(1)
		form := firing(acctA)
		form.Set("IdempotencyToken", fmt.Sprintf("tok-%d", i))
		form.Set("DateFired", fmt.Sprintf("Tue, 24 Nov %d 10:00:00 +0000", 3000+i)) // a new period each time
		h.ServeHTTP(w, benchRequest(form.Encode(), sign("tokenA", public+path, form)))
	}
}

// staticAPI answers the parent SID; the benchmark never reaches Twilio.
type staticAPI struct {
	twilioapi.API
	acct twilioapi.Account
}

func (s *staticAPI) ParentSID() string { return "AC" + strings.Repeat("0", 32) }
