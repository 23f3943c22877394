// Package breaker is usagebreaker's core. Its heart is the trip pipeline
// (Breaker), which turns a verified firing into exactly one action:
//
//	record (store.RecordFiring, the trip claimed) -> verify (rule, account,
//	value) -> act (suspend, notify or dry-run at Twilio) -> record the result
//	(the engine: store.CompleteAction) -> metrics/logs
//
// New builds it with the three other parts, each a type of its own:
//
//   - Reconciler (reconcile.go): keeps each subaccount's Usage Triggers as
//     the rules want them;
//   - Poller (poll.go): opens the incidents whose callbacks never came;
//   - Reactivator (reactivate.go): reactivates a suspended subaccount and
//     re-arms its spent triggers.
//
// The parts share the account cache, the per-account locks and the settings
// (common). Each declares the small part of twilioapi.API and store.Store it
// uses, so tests run them against an in-memory fake or the simulator.
package breaker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
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
	Operator     OperatorSettings // notifiers, guard (notifications.go, guard.go)
	// DryRun makes every rule a dry run (config dry_run: true, run --dry-run).
	DryRun bool
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
	// Owner names this process in the claims of the action queue (default:
	// a random name per process).
	Owner string
	// Lease is how long a claim on an action lasts (default 5m).
	Lease time.Duration
	// SharedQueue: other replicas work the same action queue (Postgres).
	SharedQueue bool
}

// Breaker runs the trip pipeline: it accepts firings and runs the workers of
// the action engine (trip, end_calls, notify, guard pages, approval notices,
// reactivate, rearm_step) with an Engine. It also builds and holds the other
// parts, which share its account cache, locks and settings (common):
// the Reconciler, the Poller and the Reactivator.
type Breaker struct {
	common
	api        twilioapi.API // through the callback memo (callbackauth.go)
	store      store.Store
	writeLease time.Duration

	engine   *Engine
	guard    *guard
	handoffs sync.Map // trip action ID -> *handoff: what Accept hands to the trip's worker
	tokens   tokenSet // callback tokens recorded: a replay starts no read
	// lastWrite: account SID -> when this process last sent it a status
	// write (time.Now, monotonic); a read that started before is stale.
	lastWrite sync.Map

	velocityLocks keyedMutex // one per subaccount: a velocity rule's trip check and its record (velocity.go)

	reconciler  *Reconciler
	poller      *Poller
	reactivator *Reactivator
}

// common is what the breaker's parts share; New builds it once and gives
// each part a copy. Its fields are pointers and funcs, so the copies share
// the state.
type common struct {
	settings *atomic.Pointer[Settings] // swapped on reload
	accounts *Accounts                 // the subaccount and token cache
	locks    *keyedMutex               // one per subaccount: reconciler, reactivation and the actions that touch it
	trigGens *sync.Map                 // account SID -> *atomic.Uint64: re-arms that changed its triggers (reconcile.go)
	reconReq *reconcileRequester       // asks the daemon for a reconcile soon
	m        *Metrics
	log      *slog.Logger
	now      func() time.Time
}

// reconcileRequester is the daemon's way to ask for a reconcile soon
// (SetReconcileRequester).
type reconcileRequester struct {
	mu sync.Mutex
	f  func()
}

// New builds a Breaker and its parts; nothing runs until a Reconcile or
// RunExecutor is called.
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
	if o.WriteLease <= 0 {
		o.WriteLease = 20 * time.Second
	}
	if o.Owner == "" {
		o.Owner = NewOwner()
	}
	c := common{
		settings: new(atomic.Pointer[Settings]), accounts: NewAccounts(o.API, o.Now),
		locks: new(keyedMutex), trigGens: new(sync.Map), reconReq: new(reconcileRequester),
		m: o.Metrics, log: o.Logger, now: o.Now,
	}
	s := o.Settings
	c.settings.Store(&s)
	callbacks := newCallbackMemo(o.API) // every trigger write goes through it
	b := &Breaker{
		common: c, api: callbacks, store: o.Store, writeLease: o.WriteLease,
	}
	b.guard = &guard{b: b, slots: map[int64]bool{}}
	b.engine = NewEngine(EngineOptions{
		Store: o.Store, Owner: o.Owner, Logger: o.Logger, Now: o.Now, Workers: o.Workers,
		WriteLease: o.WriteLease, RetryMin: o.RetryMin, RetryMax: o.RetryMax,
		Worker: b.worker, Finished: b.actionFinished, Lease: o.Lease, Shared: o.SharedQueue,
	})
	b.reactivator = &Reactivator{common: c, api: callbacks, store: o.Store, writes: b, writeLease: o.WriteLease,
		owner: b.engine.Owner(), lease: b.engine.o.Lease, holdWait: defaultHoldWait}
	b.reconciler = &Reconciler{common: c, api: callbacks, callbacks: callbacks, rearms: b.reactivator, fanout: o.Fanout}
	b.poller = &Poller{common: c, api: callbacks, store: o.Store, trips: b, velocityLocks: &b.velocityLocks, fanout: o.Fanout}
	return b
}

// Reconciler is the part that keeps the subaccounts' triggers as the rules
// want them.
func (b *Breaker) Reconciler() *Reconciler { return b.reconciler }

// Poller is the part that polls usage for lost callbacks.
func (b *Breaker) Poller() *Poller { return b.poller }

// Reactivator is the part that reactivates subaccounts and re-arms their
// triggers.
func (b *Breaker) Reactivator() *Reactivator { return b.reactivator }

// NewOwner is a process's name in claims: the host name and a random part.
func NewOwner() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "usagebreaker"
	}
	return fmt.Sprintf("%s/%08x", host, rand.Uint32())
}

// Engine is the breaker's action engine.
func (b *Breaker) Engine() *Engine { return b.engine }

// RunExecutor runs the action engine until ctx ends (see Engine.Run), and
// keeps usagebreaker_actions_pending equal to the store's count.
func (b *Breaker) RunExecutor(ctx context.Context, drain time.Duration) {
	gctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			b.UpdatePendingGauge(gctx)
			select {
			case <-gctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	b.engine.Run(ctx, drain)
}

// RunOperator does the periodic work of these features until ctx ends:
// when a re-armed period has ended it asks for a reconcile (which restores
// the rule's threshold), and it keeps the guard gauge current.
func (b *Breaker) RunOperator(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 15 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	b.refreshOperatorGauges(ctx)
	for {
		if n, err := b.store.CountExpiredRearms(ctx, b.now()); err == nil && n > 0 {
			b.requestReconcile()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunDueOnce runs every due action to completion (tests and the demo use it
// to step the pipeline deterministically).
func (b *Breaker) RunDueOnce(ctx context.Context) { b.engine.RunDueOnce(ctx) }

// SetReconcileRequester gives the breaker a way to ask for a reconcile soon
// (after a re-arm could not finish, or when a re-arm's period ended).
func (b *Breaker) SetReconcileRequester(f func()) {
	b.reconReq.mu.Lock()
	defer b.reconReq.mu.Unlock()
	b.reconReq.f = f
}

func (c common) requestReconcile() {
	c.reconReq.mu.Lock()
	f := c.reconReq.f
	c.reconReq.mu.Unlock()
	if f != nil {
		f()
	}
}

// SetSettings swaps the settings (on reload).
func (b *Breaker) SetSettings(s Settings) { b.settings.Store(&s) }

// Settings returns the current settings.
func (b *Breaker) Settings() Settings { return *b.settings.Load() }

// Accounts is the subaccount and token cache.
func (b *Breaker) Accounts() *Accounts { return b.accounts }

// Rule returns the current rule with that name, or nil.
func (b *Breaker) Rule(name string) *rules.Rule { return b.settings.Load().Rules.Get(name) }

// Wake makes the engine look for due actions now.
func (b *Breaker) Wake() { b.engine.Wake() }

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
