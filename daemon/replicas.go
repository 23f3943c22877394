package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/store"
)

// Several replicas on one Postgres (docs/HA.md).
//
// Every replica serves callbacks and runs actions (the store's claims keep
// them apart). Reconcile and poll run on one replica at a time: the one
// holding the loop's lease (store.DB.Lead). A replica renews its leases
// every leaseTTL/3; it runs a loop only while its last renewal is younger
// than leaseTTL minus a margin (by its own monotonic clock, which a renewal
// started before), and every store write the loop makes carries the lease's
// fence, so a replica that lost its lease unknowingly has its writes refused.
// On SQLite the process is alone and always the leader.

// The loops that run on one replica at a time.
const (
	loopReconcile = "reconcile"
	loopPoll      = "poll"
)

const (
	leaseTTL         = 15 * time.Second
	leaseMargin      = 2 * time.Second
	backendPingEvery = time.Second
	backendPingLimit = 2 * time.Second
)

// replicas is the daemon's part in a set of replicas.
type replicas struct {
	name      string // --replica
	holder    string // this process in leader leases: name and a random part
	shared    bool   // Postgres: other replicas share the state
	db        *store.DB
	backendUp atomic.Bool
	upGauge   prometheus.Gauge
	leader    *prometheus.GaugeVec
	leases    map[string]*leadership
}

// leadership is this replica's lease of one loop.
type leadership struct {
	mu      sync.Mutex
	fence   store.Fence
	renewed time.Time // when the renewal that succeeded last was started (monotonic)
	held    bool
	lost    chan struct{} // closed when a held lease is lost; replaced on each acquisition
	gained  func()        // called when the lease is taken (not renewed)
}

func newReplicas(reg prometheus.Registerer, name string, db *store.DB) *replicas {
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" {
		name = "usagebreaker"
	}
	r := &replicas{
		name:   name,
		holder: fmt.Sprintf("%s/%08x", name, rand.Uint32()),
		shared: db.Postgres(),
		db:     db,
		upGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_state_backend_up",
			Help: "1 while the state database answers, 0 while it cannot be reached (callbacks then get 503).",
		}),
		leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "usagebreaker_leader",
			Help: "1 on the replica that runs the loop (reconcile, poll), 0 on the others.",
		}, []string{"loop"}),
		leases: map[string]*leadership{},
	}
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "usagebreaker_replica_info",
		Help: "1, labelled with this replica's name (--replica).",
	}, []string{"replica"})
	info.WithLabelValues(name).Set(1)
	reg.MustRegister(r.upGauge, r.leader, info)
	r.backendUp.Store(true)
	r.upGauge.Set(1)
	for _, loop := range []string{loopReconcile, loopPoll} {
		l := &leadership{lost: make(chan struct{})}
		if !r.shared {
			l.held, l.fence = true, store.Fence{Loop: loop, Holder: r.holder, Epoch: 1}
			r.leader.WithLabelValues(loop).Set(1)
		} else {
			r.leader.WithLabelValues(loop).Set(0)
		}
		r.leases[loop] = l
	}
	return r
}

// lead returns a context for one run of loop, carrying the lease's fence
// and cancelled when the lease is lost or about to expire unrenewed, or
// false when this replica does not hold it.
func (r *replicas) lead(ctx context.Context, loop string) (context.Context, context.CancelFunc, bool) {
	l := r.leases[loop]
	if !r.shared {
		return store.WithFence(ctx, l.fence), func() {}, true
	}
	l.mu.Lock()
	held := l.held && time.Since(l.renewed) < leaseTTL-leaseMargin
	f, lost := l.fence, l.lost
	l.mu.Unlock()
	if !held {
		return ctx, func() {}, false
	}
	ctx, cancel := context.WithCancel(store.WithFence(ctx, f))
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-lost:
				cancel()
				return
			case <-ctx.Done():
				return
			case <-t.C:
				l.mu.Lock()
				stale := time.Since(l.renewed) >= leaseTTL-leaseMargin || l.fence.Epoch != f.Epoch
				l.mu.Unlock()
				if stale {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel, true
}

// runLeases takes and renews this replica's leases until ctx ends, then
// resigns them so another replica takes over at once.
func (r *replicas) runLeases(ctx context.Context, log func(msg string, args ...any)) {
	if !r.shared {
		return
	}
	t := time.NewTicker(leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			for loop, l := range r.leases {
				l.mu.Lock()
				if l.held {
					_ = r.db.Resign(rctx, l.fence)
					l.held = false
					close(l.lost)
					r.leader.WithLabelValues(loop).Set(0)
				}
				l.mu.Unlock()
			}
			return
		case <-t.C:
			r.renewAll(ctx, log)
		}
	}
}

// renewAll takes or renews every lease once (Run calls it before the loops start).
func (r *replicas) renewAll(ctx context.Context, log func(msg string, args ...any)) {
	if !r.shared {
		return
	}
	for loop, l := range r.leases {
		r.renew(ctx, loop, l, log)
	}
}

func (r *replicas) renew(ctx context.Context, loop string, l *leadership, log func(msg string, args ...any)) {
	started := time.Now()
	lctx, cancel := context.WithTimeout(ctx, leaseTTL/3)
	f, ok, err := r.db.Lead(lctx, loop, r.holder, leaseTTL)
	cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	wasHeld := l.held && time.Since(l.renewed) < leaseTTL-leaseMargin
	switch {
	case err == nil && ok:
		gained := !l.held || l.fence.Epoch != f.Epoch
		if gained && l.held {
			close(l.lost) // an older epoch of ours: its runs end
		}
		if gained {
			l.lost = make(chan struct{})
			log("leading", "loop", loop, "epoch", f.Epoch)
		}
		l.fence, l.renewed, l.held = f, started, true
		r.leader.WithLabelValues(loop).Set(1)
		if gained && l.gained != nil {
			go l.gained()
		}
	case err != nil && wasHeld:
		// Not lost yet: the lease lasts until it expires; lead() stops
		// handing it out leaseMargin before that.
		if ctx.Err() == nil {
			log("cannot renew the lease", "loop", loop, "err", err)
		}
	default:
		if l.held {
			l.held = false
			close(l.lost)
			r.leader.WithLabelValues(loop).Set(0)
			if ctx.Err() == nil {
				log("no longer leading", "loop", loop)
			}
		}
	}
}

// monitorBackend pings the state database every second until ctx ends and
// keeps backendUp and usagebreaker_state_backend_up current.
// On SQLite (a local file, one process) there is nothing to monitor.
func (r *replicas) monitorBackend(ctx context.Context, log func(msg string, args ...any)) {
	if !r.shared {
		return
	}
	t := time.NewTicker(backendPingEvery)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, backendPingLimit)
		err := r.db.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		up := err == nil
		if r.backendUp.Swap(up) != up {
			if up {
				log("the state database answers again")
			} else {
				log("the state database cannot be reached; callbacks get 503 until it answers", "err", err)
			}
		}
		if up {
			r.upGauge.Set(1)
		} else {
			r.upGauge.Set(0)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// gateCallbacks answers 503 while the state database cannot be reached:
// a firing cannot be recorded, and Twilio retries a 503.
func (r *replicas) gateCallbacks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !r.backendUp.Load() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "the state database cannot be reached; retry", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, req)
	})
}
