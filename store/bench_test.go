package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkRecordFiring measures durable RecordFiring calls: each commits
// (and fsyncs the WAL) before returning.
//
//   - new: every firing opens an incident with two actions (the worst case);
//   - claimed: as new, for a distinct account each, with the trip claimed by
//     the recording process (a callback's firing: ClaimBy, so the account's
//     leases and last status write are read too);
//   - attach: every firing is a new token for one existing incident;
//   - duplicate: every firing repeats a recorded token (read-only transaction).
//
// Each runs sequentially, and with b.RunParallel at 1 and 16 goroutines per
// GOMAXPROCS (16 is closer to an HTTP server taking a burst of callbacks, and
// shows the group commit). firings/s is reported.
func BenchmarkRecordFiring(b *testing.B) {
	for _, mode := range []string{"new", "claimed", "attach", "duplicate"} {
		for _, par := range []int{0, 1, 16} {
			name := mode + "/sequential"
			if par > 0 {
				name = fmt.Sprintf("%s/parallel-x%d", mode, par)
			}
			parallel := par > 0
			b.Run(name, func(b *testing.B) {
				s, _ := openTest(b)
				ctx := context.Background()
				base := firing("", "rule", "AC0123456789abcdef0123456789abcdef", "daily:2026-11-24", t0)
				if mode == "duplicate" {
					base.IdempotencyToken = "dup"
					record(b, s, base)
				}
				var seq atomic.Int64
				one := func() error {
					f := base // copies the struct; Actions is shared and read-only
					n := seq.Add(1)
					switch mode {
					case "new":
						f.IdempotencyToken = fmt.Sprint("tok-", n)
						f.Period = fmt.Sprint("daily:", n)
					case "claimed":
						f.IdempotencyToken = fmt.Sprint("tok-", n)
						f.AccountSID = fmt.Sprintf("AC%032x", n)
						f.ClaimBy = &Claim{Owner: "bench", LeaseUntil: t0.Add(time.Hour)}
					case "attach":
						f.IdempotencyToken = fmt.Sprint("tok-", n)
					}
					f.ReceivedAt = t0.Add(time.Duration(n))
					_, err := s.RecordFiring(ctx, f)
					return err
				}
				b.ReportAllocs()
				b.ResetTimer()
				if parallel {
					b.SetParallelism(par) // goroutines = par × GOMAXPROCS
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := one(); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					for b.Loop() {
						if err := one(); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "firings/s")
			})
		}
	}
}
