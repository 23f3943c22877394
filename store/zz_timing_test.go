package store

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

func TestZZRecordTiming(t *testing.T) {
	s, _ := openTest(t)
	var d []time.Duration
	for i := 0; i < 1000; i++ {
		f := firing(fmt.Sprintf("T%d", i), "r", fmt.Sprintf("AC%d", i), "daily:x", t0)
		t1 := time.Now()
		record(t, s, f)
		d = append(d, time.Since(t1))
		time.Sleep(5 * time.Millisecond)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	n := len(d)
	t.Logf("record p10=%s p50=%s p90=%s p99=%s max=%s", d[n/10], d[n/2], d[n*9/10], d[n*99/100], d[n-1])
}
