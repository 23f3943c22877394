package daemon

import "github.com/prometheus/client_golang/prometheus"

// reliability is the daemon's state for the polling fallback and the config
// file watcher (poll.go, watch.go).
type reliability struct {
	poll  *poller
	watch *watcher
}

func (d *Daemon) initReliability(reg prometheus.Registerer) {
	d.rel.poll = newPoller(reg)
	d.rel.watch = &watcher{}
}
