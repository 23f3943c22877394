// Package breaker is usagebreaker's core: the reconciler that keeps each
// subaccount's Usage Triggers as the rules want them, and the trip pipeline
// that turns a verified firing into exactly one action:
//
//	dedup (store.RecordFiring) -> verify (rule, account, value) -> act (suspend,
//	notify or dry-run at Twilio) -> record (store.FinishAction) -> metrics/logs
//
// It depends only on twilioapi.API and store.Store, so tests run it against an
// in-memory fake or the simulator.
package breaker

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/store"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// Settings is the part of the config the breaker acts on. It is swapped
// atomically on reload; a running reconcile or action finishes with the
// settings it started with.
type Settings struct {
	Instance  string
	PublicURL string
	Rules     *rules.Set
	// CallbackAuth, when set, is embedded in every owned trigger's CallbackUrl
	// (callbackauth.go); build specs with Settings.Spec.
	CallbackAuth *CallbackAuth
	Operator     OperatorSettings // notifiers, guard (operator.go)
	// MaxDeletes: a reconcile that would delete more owned triggers than
	// this holds them for a person (0: DefaultMaxDeletes); AllowDisarm lets
	// it delete them all when the rules match no subaccount (deletehold.go).
	MaxDeletes  int
	AllowDisarm bool
}

// Options configure a Breaker.
type Options struct {
	API      twilioapi.API
	Store    store.Store
	Settings Settings
	Logger   *slog.Logger
	Metrics  *Metrics         // nil: unregistered metrics
	Now      func() time.Time // nil: time.Now
	// Fanout is how many subaccounts the reconciler works on at once
	// (default 8); the Twilio client bounds requests in flight on its own.
	Fanout int
	// Workers is how many actions run at once (default 4).
	Workers int
	// RetryMin and RetryMax bound the backoff between attempts of a failed
	// action (defaults 1s and 5m).
	RetryMin, RetryMax time.Duration
	// WriteLease is how long a status write sent to Twilio may still land
	// after its answer was lost (a timeout, or a crash before the answer was
	// recorded); no other write to that account is tried before it passes
	// (default 20s; the daemon uses twice the Twilio request timeout).
	WriteLease time.Duration
}

// Breaker owns the reconciler, the account cache and the action executor.
type Breaker struct {
	api      twilioapi.API
	store    store.Store
	log      *slog.Logger
	m        *Metrics
	now      func() time.Time
	fanout   int
	workers  int
	retryMin time.Duration
	retryMax time.Duration
	lease    time.Duration

	settings atomic.Pointer[Settings]
	accounts *Accounts

	callbacks *callbackMemo // wraps api: which CallbackUrl this process set on each trigger

	reconcileMu sync.Mutex // never two reconciles at once
	lastRecon   atomic.Pointer[ReconcileResult]

	wake     chan struct{} // nudges the executor
	inflight sync.Map      // action ID -> struct{}: running now

	op      *operatorState // guard slots, account locks (operator.go)
	acctMu  keyedMutex     // one action per subaccount at a time
	leases  leases         // accounts a write from before a restart may still reach
	wroteBy sync.Map       // account SID -> ID of the action whose suspend write this process saw succeed

	pollMu sync.Mutex // never two polls at once

	holds deleteHold // trigger deletions held for a person (deletehold.go)
	// suspended subaccount SID -> the callback URLs its owned triggers were
	// last brought up to date with (reconcile.go): listed again only when
	// they change (a basic_auth password, public_url) or after a restart.
	suspendedURLs sync.Map

	exec   atomic.Pointer[execState] // the running executor, for the fast path (fast.go)
	tokens tokenSet                  // callback tokens seen: a repeat takes no fast path
}

// New builds a Breaker; nothing runs until Reconcile or RunExecutor is called.
func New(o Options) *Breaker {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Fanout <= 0 {
		o.Fanout = 8
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.WriteLease <= 0 {
		o.WriteLease = 20 * time.Second
	}
	b := &Breaker{
		api: o.API, store: o.Store, log: o.Logger, m: o.Metrics, now: o.Now,
		fanout: o.Fanout, workers: o.Workers, retryMin: o.RetryMin, retryMax: o.RetryMax, lease: o.WriteLease,
		accounts: NewAccounts(o.API, o.Now),
		wake:     make(chan struct{}, 1),
		op:       newOperatorState(),
	}
	b.callbacks = newCallbackMemo(o.API)
	b.api = b.callbacks
	s := o.Settings
	b.settings.Store(&s)
	return b
}

// SetSettings swaps the settings (on reload).
func (b *Breaker) SetSettings(s Settings) { b.settings.Store(&s) }

// Settings returns the current settings.
func (b *Breaker) Settings() Settings { return *b.settings.Load() }

// Accounts is the subaccount and token cache.
func (b *Breaker) Accounts() *Accounts { return b.accounts }

// Rule returns the current rule with that name, or nil.
func (b *Breaker) Rule(name string) *rules.Rule { return b.settings.Load().Rules.Get(name) }

// Wake makes the executor look for due actions now.
func (b *Breaker) Wake() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// UpdatePendingGauge refreshes usagebreaker_actions_pending from the store.
func (b *Breaker) UpdatePendingGauge(ctx context.Context) {
	n, err := b.store.CountPendingActions(ctx)
	if err != nil {
		b.log.Warn("cannot count pending actions", "err", err)
		return
	}
	b.m.ActionsPending.Set(float64(n))
}

// PublicURL is the base URL Twilio calls, from the current settings.
func (b *Breaker) PublicURL() string { return b.settings.Load().PublicURL }

// LookupAccount returns a subaccount for a callback (see Accounts.Lookup).
func (b *Breaker) LookupAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	return b.accounts.Lookup(ctx, sid)
}

// RefreshAccount re-fetches an account whose token failed (see Accounts.Refresh).
func (b *Breaker) RefreshAccount(ctx context.Context, sid string) (twilioapi.Account, bool) {
	return b.accounts.Refresh(ctx, sid)
}
