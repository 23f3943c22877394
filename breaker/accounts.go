package breaker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// ErrNotSubaccount means the SID is not a subaccount of the parent (or is the
// parent itself): its callbacks are refused.
var ErrNotSubaccount = errors.New("not a subaccount of the parent account")

// ErrLookupLimited means an unknown account could not be looked up now because
// lookups are rate-limited; the caller should answer "try again later".
var ErrLookupLimited = errors.New("account lookup rate-limited")

// ValidAccountSID reports whether s has the shape of an account SID:
// "AC" and 32 hex digits (on every callback's path, so no regexp).
func ValidAccountSID(s string) bool {
	if len(s) != 34 || s[0] != 'A' || s[1] != 'C' {
		return false
	}
	for i := 2; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Accounts caches the parent's subaccounts and their auth tokens, which sign
// each subaccount's callbacks. The reconciler refreshes it with the full list;
// in between, an unknown SID is fetched once and a token that no longer
// validates is re-fetched, both rate-limited (globally and per account) so a
// flood of forged callbacks cannot become a flood of Twilio API calls.
// Safe for concurrent use.
type Accounts struct {
	api    twilioapi.API
	parent string
	now    func() time.Time

	lookupLimit  *rate.Limiter // fetches of unknown SIDs
	refreshLimit *rate.Limiter // re-fetches of known SIDs whose token failed
	negativeTTL  time.Duration // how long "not ours" is remembered
	refreshEvery time.Duration // at most one token re-fetch per account per this

	mu          sync.RWMutex
	known       map[string]twilioapi.Account
	notOurs     map[string]time.Time // SID -> when we learned it is not ours
	refreshedAt map[string]time.Time
	inflight    map[string]*fetchCall
}

type fetchCall struct {
	done chan struct{}
	acct twilioapi.Account
	err  error
}

// NewAccounts returns an empty cache.
func NewAccounts(api twilioapi.API, now func() time.Time) *Accounts {
	if now == nil {
		now = time.Now
	}
	return &Accounts{
		api:          api,
		parent:       api.ParentSID(),
		now:          now,
		lookupLimit:  rate.NewLimiter(rate.Every(time.Second), 5),
		refreshLimit: rate.NewLimiter(rate.Every(time.Second), 5),
		negativeTTL:  10 * time.Minute,
		refreshEvery: time.Minute,
		known:        map[string]twilioapi.Account{},
		notOurs:      map[string]time.Time{},
		refreshedAt:  map[string]time.Time{},
		inflight:     map[string]*fetchCall{},
	}
}

// Replace sets the cache to exactly these subaccounts (from a full listing).
func (a *Accounts) Replace(subs []twilioapi.Account) {
	m := make(map[string]twilioapi.Account, len(subs))
	for _, s := range subs {
		if s.SID == a.parent {
			continue
		}
		m[s.SID] = s
	}
	a.mu.Lock()
	a.known = m
	for sid := range a.notOurs {
		if _, ok := m[sid]; ok {
			delete(a.notOurs, sid)
		}
	}
	a.mu.Unlock()
}

// Len is the number of cached subaccounts.
func (a *Accounts) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.known)
}

// Snapshot returns the cached subaccounts, in no order.
func (a *Accounts) Snapshot() []twilioapi.Account {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]twilioapi.Account, 0, len(a.known))
	for _, acct := range a.known {
		out = append(out, acct)
	}
	return out
}

// Cached returns the cached account, without any API call.
func (a *Accounts) Cached(sid string) (twilioapi.Account, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	acct, ok := a.known[sid]
	return acct, ok
}

// Put updates one cached account (after a fetch or a status change).
func (a *Accounts) Put(acct twilioapi.Account) {
	if acct.SID == "" || acct.SID == a.parent {
		return
	}
	a.mu.Lock()
	a.known[acct.SID] = acct
	delete(a.notOurs, acct.SID)
	a.mu.Unlock()
}

// Lookup returns the subaccount sid: from the cache, else fetched once from
// Twilio (rate-limited). It returns ErrNotSubaccount for the parent, for SIDs
// of the wrong shape and for accounts Twilio does not show as the parent's,
// and ErrLookupLimited when it may not ask Twilio now.
func (a *Accounts) Lookup(ctx context.Context, sid string) (twilioapi.Account, error) {
	if !ValidAccountSID(sid) || sid == a.parent {
		return twilioapi.Account{}, ErrNotSubaccount
	}
	a.mu.RLock()
	acct, ok := a.known[sid]
	negAt, neg := a.notOurs[sid]
	a.mu.RUnlock()
	if ok {
		return acct, nil
	}
	if neg && a.now().Sub(negAt) < a.negativeTTL {
		return twilioapi.Account{}, ErrNotSubaccount
	}
	return a.fetch(ctx, sid, a.lookupLimit)
}

// maxNotOurs bounds the memory of SIDs found not to be ours: a flood of
// forged callbacks with made-up SIDs adds at most one a second (the lookup
// limit), and expired entries are dropped once the map is this big.
const maxNotOurs = 4096

// rememberNotOurs records sid as not ours; a.mu is held.
func (a *Accounts) rememberNotOurs(sid string) {
	now := a.now()
	if len(a.notOurs) >= maxNotOurs {
		for k, at := range a.notOurs {
			if now.Sub(at) >= a.negativeTTL {
				delete(a.notOurs, k)
			}
		}
		if len(a.notOurs) >= maxNotOurs {
			clear(a.notOurs) // all recent: forget them (each costs one rate-limited lookup again)
		}
	}
	a.notOurs[sid] = now
}

// Refresh re-fetches a known account whose token failed to validate, at most
// once per account per minute and within a global rate. It returns the
// (possibly new) account and whether its token changed.
func (a *Accounts) Refresh(ctx context.Context, sid string) (twilioapi.Account, bool) {
	a.mu.Lock()
	old, ok := a.known[sid]
	last := a.refreshedAt[sid]
	if !ok || a.now().Sub(last) < a.refreshEvery {
		a.mu.Unlock()
		return old, false
	}
	a.refreshedAt[sid] = a.now()
	a.mu.Unlock()
	acct, err := a.fetch(ctx, sid, a.refreshLimit)
	if err != nil {
		return old, false
	}
	return acct, acct.AuthToken != old.AuthToken
}

// fetch asks Twilio once for sid; concurrent callers for the same SID share the call.
func (a *Accounts) fetch(ctx context.Context, sid string, lim *rate.Limiter) (twilioapi.Account, error) {
	a.mu.Lock()
	if c, ok := a.inflight[sid]; ok {
		a.mu.Unlock()
		select {
		case <-c.done:
			return c.acct, c.err
		case <-ctx.Done():
			return twilioapi.Account{}, ctx.Err()
		}
	}
	if !lim.Allow() {
		a.mu.Unlock()
		return twilioapi.Account{}, ErrLookupLimited
	}
	c := &fetchCall{done: make(chan struct{})}
	a.inflight[sid] = c
	a.mu.Unlock()

	acct, err := a.api.FetchAccount(ctx, sid)
	switch {
	case err == nil && (acct.OwnerSID != a.parent || acct.SID != sid):
		err = ErrNotSubaccount
	case err != nil && (twilioapi.IsNotFound(err) || twilioapi.IsPermanent(err)):
		// Twilio answers 404 (or 401/403) for accounts the parent cannot see.
		err = fmt.Errorf("%w: %v", ErrNotSubaccount, err)
	}

	a.mu.Lock()
	delete(a.inflight, sid)
	switch {
	case err == nil:
		a.known[sid] = acct
		delete(a.notOurs, sid)
	case errors.Is(err, ErrNotSubaccount):
		a.rememberNotOurs(sid)
		delete(a.known, sid)
	}
	a.mu.Unlock()
	c.acct, c.err = acct, err
	close(c.done)
	return acct, err
}
