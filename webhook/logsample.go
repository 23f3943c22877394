package webhook

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Rejected callbacks are logged by sample, so that a flood of forged or
// malformed requests (through a local proxy, which is never throttled, or
// from many addresses) cannot flood the logs nor spend the listener's CPU on
// them: per outcome, the first RejectLogBurst of every RejectLogWindow are
// logged, and the number left out is logged in one line when the next
// window starts. usagebreaker_callbacks_total counts every request.
const (
	RejectLogBurst  = 10
	RejectLogWindow = 10 * time.Second
)

// rejectLog is that sampler. Safe for concurrent use.
type rejectLog struct {
	now func() time.Time

	mu         sync.Mutex
	windowEnd  time.Time
	logged     map[string]int
	suppressed map[string]int
}

// allow reports whether a rejection with this outcome is logged, and logs
// what the previous window left out when a new one starts.
func (s *rejectLog) allow(ctx context.Context, log *slog.Logger, outcome string) bool {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	t := now()
	s.mu.Lock()
	var left map[string]int
	if !t.Before(s.windowEnd) {
		if len(s.suppressed) > 0 {
			left = s.suppressed
		}
		s.windowEnd = t.Add(RejectLogWindow)
		s.logged, s.suppressed = map[string]int{}, map[string]int{}
	}
	s.logged[outcome]++
	ok := s.logged[outcome] <= RejectLogBurst
	if !ok {
		s.suppressed[outcome]++
	}
	s.mu.Unlock()
	if left != nil {
		outcomes := make([]string, 0, len(left))
		for o := range left {
			outcomes = append(outcomes, o)
		}
		sort.Strings(outcomes)
		attrs := make([]any, 0, 2*len(left)+2)
		total := 0
		for _, o := range outcomes {
			attrs = append(attrs, o, left[o])
			total += left[o]
		}
		attrs = append(attrs, "window", RejectLogWindow)
		log.Log(ctx, slog.LevelWarn, "rejected callbacks not logged one by one (see usagebreaker_callbacks_total)", append([]any{"total", total}, attrs...)...)
	}
	return ok
}
