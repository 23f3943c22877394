package config

import "github.com/usagebreaker/usagebreaker/config/strict"

// DryRunBanner heads the effective config (/config) while every rule is a
// dry run, so nobody reads it as a breaker that acts.
const DryRunBanner = "# DRY RUN: every rule is a dry run (dry_run: true, or run --dry-run); nothing is suspended at Twilio"

// dryRun reads the top-level dry_run: true makes every rule a dry run.
func (l *loader) dryRun(v strict.Value) {
	if !v.Present() {
		return
	}
	if b, ok := l.d.Bool(v); ok {
		l.cfg.DryRun = b
	}
}
