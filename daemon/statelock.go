package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/usagebreaker/usagebreaker/store"
)

// lockState takes an exclusive lock on the state database's companion file
// (state.path + ".lock"), so two usagebreaker processes never share one
// database: both would run the same pending actions (twice the notifications)
// and their reconcilers would fight. The kernel drops the lock when the
// process dies, so a crash never leaves it behind.
func lockState(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state: lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state %s is in use by another usagebreaker process (it holds %s); run one process per state file", path, name)
		}
		return nil, fmt.Errorf("state: lock %s: %w", name, err)
	}
	return f, nil
}

// lockedStore releases the state lock when the store is closed.
type lockedStore struct {
	store.Store
	lock *os.File
}

func (l *lockedStore) Close() error {
	err := l.Store.Close()
	l.lock.Close()
	return err
}
