package storetest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
)

func openSQLite(t *testing.T) *store.DB {
	s, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return T0 })
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T) *store.DB {
	s, err := store.OpenPostgres(context.Background(), Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return T0 })
	t.Cleanup(func() { s.Close() })
	return s
}

// The one store suite, on each backend.
func TestSuiteSQLite(t *testing.T)   { Run(t, openSQLite) }
func TestSuitePostgres(t *testing.T) { Run(t, openPostgres) }
