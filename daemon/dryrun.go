package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagebreaker/usagebreaker/config"
)

// The global dry run: the config's top-level dry_run: true, or run
// --dry-run (Options.DryRun, which holds across reloads). Every rule then
// acts as a dry run (breaker.Settings.DryRun). It is said loudly: a banner
// on /config, usagebreaker_dry_run 1, and a warning at start and on each
// reload that turns it on or off.

// loadConfig loads the config file, with --dry-run applied.
func (d *Daemon) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		return nil, err
	}
	if d.opts.DryRun {
		cfg.DryRun = true
	}
	return cfg, nil
}

// registerDryRun registers usagebreaker_dry_run, read from the config in force.
func (d *Daemon) registerDryRun() {
	d.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "usagebreaker_dry_run",
		Help: "1 while every rule is a dry run (config dry_run: true or run --dry-run): nothing is suspended at Twilio; 0 otherwise.",
	}, func() float64 {
		if cfg := d.cfg.Load(); cfg != nil && cfg.DryRun {
			return 1
		}
		return 0
	}))
}

// logDryRun says so when the dry run is on at start (old nil), or when a
// reload turns it on or off.
func (d *Daemon) logDryRun(old, cfg *config.Config) {
	switch {
	case cfg.DryRun && (old == nil || !old.DryRun):
		by := "config dry_run: true"
		if d.opts.DryRun {
			by = "run --dry-run"
		}
		d.log.Warn("DRY RUN: every rule is a dry run; incidents and notifications say what would be done, and NOTHING IS SUSPENDED at Twilio",
			"by", by)
	case !cfg.DryRun && old != nil && old.DryRun:
		d.log.Warn("dry run ended by a reload: rules act again (suspensions are written to Twilio)")
	}
}
