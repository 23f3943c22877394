package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/config"
	"github.com/usagebreaker/usagebreaker/rules"
)

// watcher notices changed config, rule and secret files by checksum, so a
// save (or a Kubernetes ConfigMap update) reloads without a SIGHUP.
//
// Every interval it reads, through every symlink and by path (never by an
// inode or a file handle kept from before), the config file, each file of the
// config in force (rule files and *_file secrets), and the list of files each
// rule_files glob matches now, and hashes all of it. Kubernetes updates a
// mounted ConfigMap by pointing its "..data" symlink at a new directory in one
// rename; reading by path sees the new files at once, where an inotify watch
// on the old files (fsnotify) sees nothing. A new file matching a glob changes
// the glob's list, so it is noticed too.
//
// A changed checksum triggers a reload (once the files have stopped changing
// for a moment, so a save caught half-way is not loaded); an unchanged one
// never does. After a rejected reload the old config keeps running and the
// checksum of the rejected files is remembered: the next save reloads again.
type watcher struct {
	mu    sync.Mutex
	sum   string            // of the files last loaded, or last rejected
	parts map[string]string // what -> its hash, for saying which file changed
}

// snapshot hashes the files cfg was built from and the current matches of
// its rule_files globs. Missing or unreadable files hash as such, so their
// return is a change too.
func (d *Daemon) snapshot(cfg *config.Config) (string, map[string]string) {
	parts := map[string]string{}
	add := func(what string, data []byte) {
		h := sha256.Sum256(data)
		parts[what] = hex.EncodeToString(h[:])
	}
	read := func(path string) {
		data, err := os.ReadFile(path) // follows symlinks, by path
		if err != nil {
			add(path, []byte("unreadable: "+err.Error()))
			return
		}
		add(path, data)
	}
	read(d.opts.ConfigPath)
	for _, f := range cfg.Files {
		read(f)
	}
	dir := filepath.Dir(d.opts.ConfigPath)
	for _, pattern := range cfg.RuleFiles {
		matches, err := rules.Glob(pattern, dir)
		var list string
		if err != nil {
			list = "error: " + err.Error()
		} else {
			for i, m := range matches {
				if a, err := filepath.Abs(m); err == nil {
					matches[i] = a
				}
			}
			sort.Strings(matches)
			list = strings.Join(matches, "\n")
			for _, m := range matches {
				if _, seen := parts[m]; !seen {
					read(m)
				}
			}
		}
		add("rule_files "+pattern, []byte(list))
	}
	keys := make([]string, 0, len(parts))
	for k := range parts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(parts[k]))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), parts
}

// remember sets the checksum the watcher compares against.
func (d *Daemon) remember(sum string, parts map[string]string) {
	w := d.bg.watch
	w.mu.Lock()
	w.sum, w.parts = sum, parts
	w.mu.Unlock()
}

func (d *Daemon) remembered() (string, map[string]string) {
	w := d.bg.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sum, w.parts
}

// watchLoop checks the files every interval until ctx ends.
func (d *Daemon) watchLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	settle := min(interval/2, 500*time.Millisecond)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum, parts := d.snapshot(d.cfg.Load())
		old, oldParts := d.remembered()
		if sum == old {
			continue
		}
		// Let a save finish: wait until two reads a moment apart agree.
		for range 10 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(settle):
			}
			again, againParts := d.snapshot(d.cfg.Load())
			if again == sum {
				break
			}
			sum, parts = again, againParts
		}
		if cur, _ := d.remembered(); cur != old {
			continue // a SIGHUP or POST /-/reload got there first
		}
		if sum == old {
			continue // changed and changed back
		}
		d.log.Info("config files changed; reloading", "changed", changed(oldParts, parts))
		_ = d.Reload() // logs its outcome and remembers the checksum
	}
}

// changed lists what differs between two snapshots.
func changed(a, b map[string]string) []string {
	var out []string
	for k, v := range b {
		if a[k] != v {
			out = append(out, k)
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
