package daemon

import "github.com/prometheus/client_golang/prometheus"

// background is the daemon's state for the polling fallback and the config
// file watcher (poll.go, watch.go).
type background struct {
	poll  *poller
	watch *watcher
}

func (d *Daemon) initBackground(reg prometheus.Registerer) {
	d.bg.poll = newPoller(reg)
	d.bg.watch = &watcher{}
}
