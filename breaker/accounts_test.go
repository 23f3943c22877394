package breaker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/twilioapi"
)

func TestAccountsLookup(t *testing.T) {
	api := newFakeAPI()
	a := api.addAccount("tenant-a", "active")
	c := &clock{t: time.Unix(1e9, 0)}
	accts := NewAccounts(api, c.Now)

	// Unknown but real: fetched once, then cached.
	for i := 0; i < 3; i++ {
		got, err := accts.Lookup(context.Background(), a.SID)
		if err != nil || got.AuthToken != a.AuthToken {
			t.Fatalf("lookup = %+v, %v", got, err)
		}
	}
	if n := api.count("accounts.fetch"); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
	// The parent and malformed SIDs never reach Twilio.
	for _, sid := range []string{parentSID, "AC123", "XX" + a.SID[2:], ""} {
		if _, err := accts.Lookup(context.Background(), sid); !errors.Is(err, ErrNotSubaccount) {
			t.Errorf("Lookup(%q) = %v", sid, err)
		}
	}
	// Not ours: 404 is remembered.
	stranger := fmt.Sprintf("AC%032x", 999999)
	for i := 0; i < 3; i++ {
		if _, err := accts.Lookup(context.Background(), stranger); !errors.Is(err, ErrNotSubaccount) {
			t.Fatalf("stranger = %v", err)
		}
	}
	if n := api.count("accounts.fetch"); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
}

func TestAccountsLookupFloodIsRateLimited(t *testing.T) {
	api := newFakeAPI()
	accts := NewAccounts(api, time.Now)
	var limited int
	for i := 0; i < 1000; i++ {
		_, err := accts.Lookup(context.Background(), fmt.Sprintf("AC%032x", 5000+i))
		if errors.Is(err, ErrLookupLimited) {
			limited++
		}
	}
	if n := api.count("accounts.fetch"); n > 10 {
		t.Fatalf("1000 forged SIDs caused %d fetches", n)
	}
	if limited < 990 {
		t.Fatalf("limited = %d", limited)
	}
}

func TestAccountsLookupSharesConcurrentFetches(t *testing.T) {
	api := newFakeAPI()
	a := api.addAccount("tenant-a", "active")
	accts := NewAccounts(api, time.Now)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := accts.Lookup(context.Background(), a.SID); err != nil && !errors.Is(err, ErrLookupLimited) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := api.count("accounts.fetch"); n > 5 {
		t.Fatalf("fetches = %d", n)
	}
}

func TestAccountsRefresh(t *testing.T) {
	api := newFakeAPI()
	a := api.addAccount("tenant-a", "active")
	c := &clock{t: time.Unix(1e9, 0)}
	accts := NewAccounts(api, c.Now)
	accts.Replace([]twilioapi.Account{a})
	if _, changed := accts.Refresh(context.Background(), a.SID); changed {
		t.Fatal("unchanged token reported as changed")
	}
	api.mu.Lock()
	api.accounts[a.SID].AuthToken = "rotated"
	api.mu.Unlock()
	// Within a minute of the last refresh: no API call, old token.
	if got, changed := accts.Refresh(context.Background(), a.SID); changed || got.AuthToken != a.AuthToken {
		t.Fatalf("refresh within a minute = %+v %v", got, changed)
	}
	c.Advance(61 * time.Second)
	if got, changed := accts.Refresh(context.Background(), a.SID); !changed || got.AuthToken != "rotated" {
		t.Fatalf("refresh = %+v %v", got, changed)
	}
	if n := api.count("accounts.fetch"); n != 2 {
		t.Fatalf("fetches = %d", n)
	}
	// Unknown accounts are not refreshed (Lookup handles them).
	if _, changed := accts.Refresh(context.Background(), fmt.Sprintf("AC%032x", 77)); changed {
		t.Fatal("refreshed an unknown account")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:pass@host/x": "https://user:<secret>@host/x",
		"https://host/x":           "https://host/x",
		"https://host/x@y":         "https://host/x@y",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q", in, got)
		}
	}
}

func TestAccountsNotOursIsBounded(t *testing.T) {
	api := newFakeAPI()
	c := &clock{t: time.Unix(1e9, 0)}
	accts := NewAccounts(api, c.Now)
	accts.lookupLimit.SetLimit(1e9) // let every lookup through for this test
	accts.lookupLimit.SetBurst(1e9)
	for i := 0; i < 3*maxNotOurs; i++ {
		if _, err := accts.Lookup(context.Background(), fmt.Sprintf("AC%032x", 100000+i)); !errors.Is(err, ErrNotSubaccount) {
			t.Fatal(err)
		}
		c.Advance(time.Second)
	}
	accts.mu.RLock()
	n := len(accts.notOurs)
	accts.mu.RUnlock()
	if n > maxNotOurs {
		t.Fatalf("notOurs holds %d entries, want at most %d", n, maxNotOurs)
	}
}

func TestValidAccountSID(t *testing.T) {
	for s, want := range map[string]bool{
		"AC" + strings.Repeat("0", 32):          true,
		"AC0123456789abcdefABCDEF0123456789":    true,
		"AC" + strings.Repeat("0", 31):          false,
		"AC" + strings.Repeat("0", 33):          false,
		"ac" + strings.Repeat("0", 32):          false,
		"UT" + strings.Repeat("0", 32):          false,
		"AC" + strings.Repeat("0", 31) + "g":    false,
		"AC" + strings.Repeat("0", 31) + "\x00": false,
		"":                                      false,
		"AC" + strings.Repeat("é", 16):          false,
	} {
		if got := ValidAccountSID(s); got != want {
			t.Errorf("ValidAccountSID(%q) = %v, want %v", s, got, want)
		}
	}
}
