// Package version holds the build's version and commit, stamped in with
// -ldflags "-X github.com/usagebreaker/usagebreaker/internal/version.Version=... -X ...Revision=...".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at build time; the defaults say it was not.
var (
	Version  = "dev"
	Revision = "unknown"
)

// GoVersion is the Go release that built the binary.
func GoVersion() string { return runtime.Version() }

// Rev returns Revision, or the VCS revision Go recorded, if any.
func Rev() string {
	if Revision != "unknown" {
		return Revision
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return Revision
}

// String is the one-line version: "usagebreaker dev (commit unknown, go1.26.8)".
func String() string {
	return fmt.Sprintf("usagebreaker %s (commit %s, %s)", Version, Rev(), GoVersion())
}
