// Package storetest has what the store's tests share: one suite that runs
// against both backends (Run), and a Postgres schema of its own per test.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// EnvPostgres names the DSN of the Postgres database the tests may use;
// EnvRequirePostgres=1 makes its absence a failure instead of a skip.
const (
	EnvPostgres        = "USAGEBREAKER_TEST_POSTGRES"
	EnvRequirePostgres = "USAGEBREAKER_REQUIRE_POSTGRES"
)

// PostgresDSN returns the test database's DSN, or skips t (fails it when
// USAGEBREAKER_REQUIRE_POSTGRES=1) when none is configured.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvPostgres)
	if dsn == "" {
		if os.Getenv(EnvRequirePostgres) == "1" {
			t.Fatalf("%s is not set and %s=1: the Postgres tests must run", EnvPostgres, EnvRequirePostgres)
		}
		t.Skipf("Postgres tests skipped: set %s to a Postgres DSN (e.g. postgres://postgres@127.0.0.1:5432/usagebreaker_ci?sslmode=disable) to run them", EnvPostgres)
	}
	return dsn
}

// Schema creates a schema of its own for t in the test database, dropped
// when t ends, and returns a DSN whose search_path is that schema: tests
// (and test processes) using different schemas never meet.
func Schema(t testing.TB) string {
	t.Helper()
	dsn := PostgresDSN(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("open %s: %v", EnvPostgres, err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", name, err)
		}
	})
	return WithSearchPath(dsn, name)
}

// WithSearchPath is dsn with its search_path set to schema.
func WithSearchPath(dsn, schema string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return strings.TrimSpace(dsn) + " search_path=" + schema
}
