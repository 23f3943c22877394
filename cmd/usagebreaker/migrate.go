package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/store"
)

const migrateUsage = `usage: usagebreaker migrate --config FILE --from-sqlite PATH

Moves the state of a single replica on SQLite (PATH, the state.path it ran
with) into the Postgres database of FILE's state.postgres: the schema is
created, then every incident, firing, action, re-arm and reactivation is
copied with its id, in one transaction (all or nothing). The Postgres state
must be empty. Stop the SQLite daemon first; start the replicas on FILE
after. The SQLite file is only read.
`

// cmdMigrate is "usagebreaker migrate --config FILE --from-sqlite PATH".
func cmdMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "the config `FILE` whose state.postgres receives the state")
	from := fs.String("from-sqlite", "", "the SQLite state `PATH` to move (the old state.path)")
	fs.Usage = func() {
		fmt.Fprint(stderr, migrateUsage+"\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *configPath == "" || *from == "" {
		fmt.Fprintf(stderr, "usagebreaker migrate: --config and --from-sqlite are required\n\n%s", migrateUsage)
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	if cfg.State.Postgres == nil {
		fmt.Fprintf(stderr, "usagebreaker migrate: %s has no state.postgres to move the state into\n", *configPath)
		return 1
	}
	if _, err := os.Stat(*from); err != nil {
		fmt.Fprintf(stderr, "usagebreaker migrate: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	src, err := store.Open(ctx, filepath.Clean(*from))
	if err != nil {
		fmt.Fprintf(stderr, "usagebreaker migrate: %v\n", err)
		return 1
	}
	defer src.Close()
	dst, err := store.OpenPostgres(ctx, cfg.State.Postgres.DSN.Reveal())
	if err != nil {
		fmt.Fprintf(stderr, "usagebreaker migrate: %v\n", err)
		return 1
	}
	defer dst.Close()
	counts, err := src.CopyTo(ctx, dst)
	if err != nil {
		fmt.Fprintf(stderr, "usagebreaker migrate: %v\n", err)
		return 1
	}
	tables := make([]string, 0, len(counts))
	for t := range counts {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, t := range tables {
		fmt.Fprintf(stdout, "%s: %d\n", t, counts[t])
	}
	fmt.Fprintln(stdout, "ok: the state is in Postgres; start the replicas on", *configPath)
	return 0
}
