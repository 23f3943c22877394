package testenv

import (
	"fmt"
	"testing"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// Sim is the Twilio simulator served on loopback.
type Sim struct {
	*twiliosim.Sim
	Addr string // host:port
	URL  string // http://host:port, the API base URL
}

// StartSim starts a simulator with o and serves it on loopback until t ends.
func StartSim(t testing.TB, o twiliosim.Options) *Sim {
	t.Helper()
	s := &Sim{Sim: twiliosim.New(o)}
	t.Cleanup(s.Sim.Close) // after the server has closed: cleanups run last first
	s.Addr = Serve(t, s.Sim)
	s.URL = "http://" + s.Addr
	return s
}

// Subaccounts creates a subaccount of each name, and returns them by name.
func (s *Sim) Subaccounts(names ...string) map[string]twiliosim.Account {
	m := map[string]twiliosim.Account{}
	for _, n := range names {
		m[n] = s.CreateSubaccount(n)
	}
	return m
}

// Tenants is n names tenant-00, tenant-01, ...
func Tenants(n int) []string {
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("tenant-%02d", i))
	}
	return names
}

// SuspendWrites counts the suspend writes in an account's status history.
func SuspendWrites(a twiliosim.AccountState) int {
	n := 0
	for _, h := range a.StatusHistory {
		if h.Status == "suspended" {
			n++
		}
	}
	return n
}

// Account is the state of the subaccount with this friendly name; t fails
// when there is none.
func (s *Sim) Account(t testing.TB, name string) twiliosim.AccountState {
	t.Helper()
	for _, a := range s.State().Accounts {
		if a.FriendlyName == name {
			return a
		}
	}
	t.Fatalf("no account %s", name)
	return twiliosim.AccountState{}
}
