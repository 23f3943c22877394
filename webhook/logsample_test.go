package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/usagebreaker/usagebreaker/breaker"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	l.b.Reset()
	return out
}

// A flood of rejections logs RejectLogBurst lines per outcome and window,
// then one line with what was left out; other outcomes have their own count.
func TestRejectLogSamples(t *testing.T) {
	var buf lockedBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	s := rejectLog{now: func() time.Time { return now }}
	ctx := context.Background()
	allowed := map[string]int{}
	for i := 0; i < 25; i++ {
		if s.allow(ctx, log, "bad_signature") {
			allowed["bad_signature"]++
		}
	}
	for i := 0; i < 3; i++ {
		if s.allow(ctx, log, "bad_request") {
			allowed["bad_request"]++
		}
	}
	if allowed["bad_signature"] != RejectLogBurst || allowed["bad_request"] != 3 {
		t.Fatalf("allowed %v", allowed)
	}
	if l := buf.lines(t); len(l) != 0 {
		t.Fatalf("logged within the window: %v", l)
	}

	now = now.Add(RejectLogWindow)
	if !s.allow(ctx, log, "bad_signature") {
		t.Fatal("the first rejection of a new window is not logged")
	}
	l := buf.lines(t)
	if len(l) != 1 || l[0]["level"] != "WARN" || l[0]["total"] != float64(15) || l[0]["bad_signature"] != float64(15) ||
		l[0]["bad_request"] != nil || !strings.Contains(l[0]["msg"].(string), "not logged one by one") {
		t.Fatalf("summary %v", l)
	}
	// Nothing was left out of that window yet: no summary at the next one.
	now = now.Add(RejectLogWindow)
	s.allow(ctx, log, "bad_signature")
	if l := buf.lines(t); len(l) != 0 {
		t.Fatalf("summary of a window that left nothing out: %v", l)
	}
}

// The handler logs accepted callbacks one by one and rejected ones by
// sample; the metric counts them all.
func TestHandlerLogsRejectionsBySample(t *testing.T) {
	var buf lockedBuffer
	fb := newFake()
	m := breaker.NewMetrics(nil)
	h := New(fb, m, slog.New(slog.NewJSONHandler(&buf, nil)))
	form := firing(acctA)
	forged := signed("not-the-token", path, form)
	for i := 0; i < 50; i++ {
		if w := do(h, forged); w.Code != 403 {
			t.Fatalf("forged %d: %d", i, w.Code)
		}
	}
	if w := do(h, signed("tokenA", path, form)); w.Code != 200 {
		t.Fatalf("valid: %d", w.Code)
	}
	counts := map[string]int{}
	for _, l := range buf.lines(t) {
		if l["msg"] == "callback" {
			counts[l["outcome"].(string)]++
		}
	}
	if counts[breaker.OutcomeBadSignature] != RejectLogBurst || counts[breaker.OutcomeAccepted] != 1 {
		t.Fatalf("callback lines by outcome: %v", counts)
	}
	if v := testutil.ToFloat64(m.Callbacks.WithLabelValues(breaker.OutcomeBadSignature)); v != 50 {
		t.Fatalf("bad_signature counted %v", v)
	}
}
