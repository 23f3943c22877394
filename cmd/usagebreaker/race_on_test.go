//go:build race

package main

// raceBuild: the test binary has the race detector, so the daemon built by
// the crash test gets it too (and reuses the packages this build compiled).
const raceBuild = true
