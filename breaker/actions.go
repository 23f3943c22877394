package breaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// How a suspension is written exactly once, whatever happens:
//
//   - Actions on the same subaccount never run at once (keyedMutex), so two
//     incidents of one account (two rules crossed together) cannot both read
//     "active" and both write.
//   - Every write is preceded by a fresh read of the account (never a cached
//     or shared one): an account already suspended is not written again.
//   - Just before the write, the action records the intent (detailWriteSent,
//     with its next attempt one WriteLease later). If the process dies before
//     the answer is recorded, the next process knows a write may be in flight:
//     it leaves that account alone until the lease has passed (leases), then
//     reads it again. A write that timed out is treated the same way, in
//     this process too. (The fast path, fast.go, records the intent once the
//     request is written, and its claim holds a restarted process off until
//     then.)
//   - The Twilio client never repeats a status write whose outcome is unknown.
const (
	// detailWriteSent is the action's detail while its status write is in flight.
	detailWriteSent = "suspend write sent to Twilio; waiting for its answer"
	// prefixWriteUnknown starts the detail of an action whose write failed in
	// a way that does not say whether Twilio applied it.
	prefixWriteUnknown = "the suspend write failed and may have been applied: "
)

// keyedMutex is a mutex per key; entries live only while used.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// lock locks key and returns its unlock.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// tryLock locks key if nobody holds it, returning its unlock and true;
// otherwise it returns false at once.
func (k *keyedMutex) tryLock(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	if !e.mu.TryLock() { // held, so e.refs > 0 and e stays
		return nil, false
	}
	e.refs++
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}, true
}

// leases are the accounts a status write from before a restart may still
// reach, and until when.
type leases struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (l *leases) set(acct string, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]time.Time{}
	}
	if until.After(l.m[acct]) {
		l.m[acct] = until
	}
}

// until returns the lease on acct if it has not passed at now.
func (l *leases) until(acct string, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.m[acct]
	if ok && !t.After(now) {
		delete(l.m, acct)
		return time.Time{}, false
	}
	return t, ok
}

// loadLeases finds the writes a previous process sent without learning their
// outcome (the process died, or the write was cut off or timed out; the
// action is not due again yet), and the fast path's claims it left (fast.go),
// so no other action writes to those accounts before the writes may have
// landed. RunExecutor calls it at start.
func (b *Breaker) loadLeases(ctx context.Context) {
	now := b.now()
	acts, err := b.store.PendingActions(ctx, now.AddDate(50, 0, 0), 0)
	if err != nil {
		b.log.Warn("cannot read pending actions for write leases", "err", err)
		return
	}
	for _, a := range acts {
		until := a.NextAttemptAt
		if claimLeft(a) {
			// The claimant may have sent its write at any moment until it
			// stopped (its request may have waited for a connection slot
			// past the claim's own lease), so a whole lease from now.
			until = now.Add(b.lease)
		}
		if a.Kind != store.ActionTrip || !(wroteBefore(a) || claimLeft(a)) || !until.After(now) {
			continue
		}
		inc, err := b.store.Incident(ctx, a.IncidentID)
		if err != nil {
			b.log.Warn("cannot read the incident of an interrupted write", "action", a.ID, "err", err)
			continue
		}
		b.leases.set(inc.AccountSID, until)
		b.log.Info("a suspend write sent before the restart may still land; holding writes to the account until then",
			"incident", inc.ID, "account", inc.AccountSID, "until", until)
	}
}

// errWait defers an action without counting an attempt: look again at until.
type errWait struct {
	until time.Time
	why   string
}

func (e errWait) Error() string { return e.why }

// wroteBefore reports whether an earlier attempt of a sent a status write
// whose outcome was never learnt. A fast path's claim is not one (fast.go).
func wroteBefore(a store.Action) bool {
	return a.Detail == detailWriteSent || strings.HasPrefix(a.Detail, prefixWriteUnknown)
}

// claimedByAnother reports whether another incident of the account already
// says it suspended it since inc was opened: then of two actions whose
// writes' fates were lost in a crash, only the first to find the account
// suspended claims the suspension.
func (b *Breaker) claimedByAnother(ctx context.Context, inc store.Incident) bool {
	incs, err := b.store.ListIncidents(ctx, store.IncidentFilter{AccountSID: inc.AccountSID, Limit: 100})
	if err != nil {
		return false
	}
	for _, o := range incs {
		if o.ID != inc.ID && o.Outcome == OutcomeSuspended && !o.UpdatedAt.Before(inc.CreatedAt) {
			return true
		}
	}
	return false
}

// keepMark keeps an action's mark of a write with an unknown outcome in a
// new detail, so a later attempt that finds the account suspended still
// knows the suspension may be its own; and likewise a claim left by a fast
// path, so that attempt still knows it must not count it as its own.
func keepMark(a store.Action, detail string) string {
	switch {
	case detail == detailWriteSent || strings.HasPrefix(detail, prefixWriteUnknown):
		return detail // a write mark of its own
	case wroteBefore(a):
		return prefixWriteUnknown + "an earlier attempt's write; since then: " + detail
	case claimLeft(a) && !strings.HasPrefix(detail, prefixClaimed):
		return prefixClaimed + detail // a fast path's claim (fast.go)
	}
	return detail
}

// readAccount reads a subaccount from Twilio for an action: always a fresh
// read of its own (never a cached account nor a fetch shared with a callback's
// lookup), so a write is decided on the account's state after every earlier
// write of ours. A SID the parent does not own is errNotOurs.
func (b *Breaker) readAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	if !ValidAccountSID(sid) || sid == b.api.ParentSID() {
		return twilioapi.Account{}, errNotOurs
	}
	acct, err := b.api.FetchAccount(ctx, sid)
	switch {
	case err == nil && (acct.SID != sid || acct.OwnerSID != b.api.ParentSID()):
		return twilioapi.Account{}, errNotOurs
	case err != nil && (twilioapi.IsNotFound(err) || statusOf(err) == http.StatusForbidden):
		return twilioapi.Account{}, fmt.Errorf("%w: %v", errNotOurs, err)
	case err != nil:
		return twilioapi.Account{}, err
	}
	b.accounts.Put(acct)
	return acct, nil
}

var errNotOurs = ErrNotSubaccount

func statusOf(err error) int {
	var e *twilioapi.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return -1
}

// givesUp reports an error that retrying cannot cure: Twilio's answer that
// the request is wrong for good (a 4xx other than 429). A 401 is not one: it
// means the parent's credentials are refused, which an operator fixes, and
// the trip must then still happen. Everything else (5xx, 429, timeouts,
// transport and store errors, answers that could not be decoded) is retried
// with backoff.
func givesUp(err error) bool {
	return twilioapi.IsPermanent(err) && statusOf(err) != http.StatusUnauthorized
}

// unknownOutcome reports a failed write that Twilio may nevertheless have
// applied: a 5xx answer, or no answer at all (timeout, broken connection).
func unknownOutcome(err error) bool {
	s := statusOf(err)
	return s == 0 || s >= 500
}
