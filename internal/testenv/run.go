package testenv

import (
	"context"
	"testing"
	"time"
)

// Runner runs a server's Run(ctx) in a goroutine until Stop.
type Runner struct {
	cancel context.CancelFunc
	errc   chan error
}

// Run calls run in a goroutine with a context Stop cancels.
func Run(run func(context.Context) error) *Runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- run(ctx) }()
	return r
}

// Stop cancels the run and fails t if it returns an error or does not
// return within 30 s. Stopping again does nothing.
func (r *Runner) Stop(t testing.TB) {
	t.Helper()
	if r == nil || r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.errc:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("run did not stop")
	}
}
