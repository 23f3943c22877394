package daemon_test

import (
	"context"
	"strings"
	"testing"

	"github.com/usagebreaker/usagebreaker/daemon"
)

// Two processes on one state file would both run the same pending actions;
// the second start is refused, and the lock goes with the first's shutdown.
func TestStateIsLockedAgainstASecondDaemon(t *testing.T) {
	e := startEnv(t, []string{"tenant-a"}, e2eRules, nil)
	_, err := daemon.New(context.Background(), daemon.Options{ConfigPath: e.cfgPath})
	if err == nil || !strings.Contains(err.Error(), "is in use by another usagebreaker process") {
		t.Fatalf("second daemon on the same state: %v", err)
	}
	e.stop()
	d, err := daemon.New(context.Background(), daemon.Options{ConfigPath: e.cfgPath})
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	// Run closes the state (and the lock) when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
}
