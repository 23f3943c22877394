package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/config"
)

// poller runs the usage polling fallback (breaker.Poller): after the first
// reconcile, on poll.schedule, and on POST /api/v1/poll. Requests made while a
// poll runs coalesce into one more poll afterwards.
type poller struct {
	req chan struct{}

	mu     sync.Mutex
	cronID cron.EntryID
	hasID  bool

	runs     *prometheus.CounterVec
	duration prometheus.Histogram
	lastOK   prometheus.Gauge

	last atomic.Pointer[breaker.PollResult] // the last finished poll (the console shows it)
}

func newPoller(reg prometheus.Registerer) *poller {
	p := &poller{
		req: make(chan struct{}, 1),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_polls_total",
			Help: "Usage polls run, by result (ok, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "usagebreaker_poll_duration_seconds",
			Help:    "How long usage polls take.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_poll_last_success_timestamp_seconds",
			Help: "Unix time of the last usage poll that finished without errors.",
		}),
	}
	reg.MustRegister(p.runs, p.duration, p.lastOK)
	for _, r := range []string{"ok", "error"} {
		p.runs.WithLabelValues(r)
	}
	return p
}

// RequestPoll asks for a usage poll soon, even when poll.schedule is off.
func (d *Daemon) RequestPoll() {
	select {
	case d.bg.poll.req <- struct{}{}:
	default:
	}
}

// schedulePoll (re)installs the poll.schedule entry; "" removes it.
func (d *Daemon) schedulePoll(cfg *config.Config) error {
	p := d.bg.poll
	p.mu.Lock()
	defer p.mu.Unlock()
	var id cron.EntryID
	if cfg.Poll.Schedule != "" {
		var err error
		if id, err = d.cron.AddFunc(cfg.Poll.Schedule, d.RequestPoll); err != nil {
			return fmt.Errorf("poll.schedule %q: %w", cfg.Poll.Schedule, err)
		}
	}
	if p.hasID {
		d.cron.Remove(p.cronID)
	}
	p.cronID, p.hasID = id, cfg.Poll.Schedule != ""
	return nil
}

// firstPoll follows the first reconcile: callbacks lost while the daemon was
// down are caught now, not one schedule later.
func (d *Daemon) firstPoll() {
	if d.cfg.Load().Poll.Schedule != "" {
		d.RequestPoll()
	}
}

func (d *Daemon) pollLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.bg.poll.req:
			d.pollOnce(ctx)
		}
	}
}

func (d *Daemon) pollOnce(ctx context.Context) {
	ctx, cancel, leading := d.rep.lead(ctx, loopPoll)
	defer cancel()
	if !leading {
		return // another replica polls
	}
	p := d.bg.poll
	res, err := d.br.Poller().Poll(ctx)
	p.last.Store(&res)
	p.duration.Observe(res.Duration.Seconds())
	attrs := []any{"subaccounts", res.Subaccounts, "polled", res.Polled, "reads", res.Reads, "over_threshold", res.Over,
		"opened", res.Opened, "already_open", res.Known, "new_accounts", res.NewAccounts, "duration", res.Duration}
	if err != nil {
		p.runs.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			d.log.Error("usage poll finished with errors", append(attrs, "err", err)...)
		}
	} else {
		p.runs.WithLabelValues("ok").Inc()
		p.lastOK.SetToCurrentTime()
		d.log.Info("usage poll done", attrs...)
	}
	if res.NewAccounts > 0 && ctx.Err() == nil {
		// Subaccounts created since the last listing have no triggers yet.
		d.log.Info("the poll found new subaccounts; reconciling to arm them", "new_accounts", res.NewAccounts)
		d.RequestReconcile()
	}
}
