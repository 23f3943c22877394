// Package twiliosim is an in-process simulator of the part of Twilio's REST API
// (2010-04-01) that usagebreaker uses: Accounts and subaccounts, Usage Triggers,
// Usage Records, Messages and Calls, with Twilio's paths, form-encoded requests,
// JSON bodies, paging envelopes, error bodies and HTTP Basic auth. Usage Triggers
// fire real, signed, asynchronous callbacks the way Twilio sends them.
//
// # Twilio API
//
// Served under /2010-04-01 (operation names as counted in State.Requests):
//
//	GET  /Accounts.json                                   accounts.list   (FriendlyName, Status, paging)
//	POST /Accounts.json                                   accounts.create (FriendlyName; parent only)
//	GET  /Accounts/{Sid}.json                             accounts.fetch
//	POST /Accounts/{Sid}.json                             accounts.update (Status, FriendlyName)
//	GET  /Accounts/{AccountSid}/Usage/Triggers.json       triggers.list   (Recurring, TriggerBy, UsageCategory, paging)
//	POST /Accounts/{AccountSid}/Usage/Triggers.json       triggers.create
//	GET  /Accounts/{AccountSid}/Usage/Triggers/{Sid}.json triggers.fetch
//	POST /Accounts/{AccountSid}/Usage/Triggers/{Sid}.json triggers.update (CallbackUrl, CallbackMethod, FriendlyName)
//	DELETE same                                           triggers.delete
//	GET  /Accounts/{AccountSid}/Usage/Records[/{Today,Yesterday,ThisMonth,LastMonth,Daily,Monthly,Yearly,AllTime}].json
//	                                                      records.read (Category, StartDate, EndDate, IncludeSubaccounts, paging)
//	POST /Accounts/{AccountSid}/Messages.json             messages.create (To, From or MessagingServiceSid, Body)
//	GET  /Accounts/{AccountSid}/Calls.json                calls.list (Status, To, From, paging)
//	POST /Accounts/{AccountSid}/Calls/{Sid}.json          calls.update (Status=completed|canceled)
//
// Anything else is "unknown" (404 code 20404, or 405 code 20004). Lists page
// with PageSize (default 50, at most 1000), Page and PageToken ("PA"/"PB" +
// SID, stable while items come and go); the parent is listed first among the
// accounts (whether Twilio lists it is unconfirmed: filter owner == sid).
// Usage records are paged by Page only. Money and usage are exact decimals;
// a record's price is a JSON number, as the OpenAPI description declares.
//
// Error codes: 20003 (401) bad, missing or inapplicable credentials
// (including a suspended or closed account's own); 20404 not found; 20004
// method not allowed; 21477 status change of the parent; 21479 status change
// of a closed subaccount; 21101 a subaccount creating subaccounts; 21502
// invalid CallbackUrl; 21602/21603/21604 message without Body/From/To; 20403
// message from an inactive account — all documented by Twilio. Chosen where
// Twilio documents no code: 70002 ("Bad request") for other invalid or
// missing parameters, 59200 ("Account Limit Reached", Twilio's code for the
// same condition in another API) for the 1001st trigger of an account, and
// 10001 ("Account is not active") for /sim/usage and /sim/calls on a
// suspended or closed account (HTTP 409).
//
// # Control endpoints
//
// Unauthenticated, form-encoded, never affected by API faults:
//
//	POST   /sim/accounts FriendlyName                      creates a subaccount; 201 with its Account JSON (auth_token)
//	POST   /sim/usage    AccountSid UsageCategory [Count Usage Price] [Wait=true]
//	                     adds usage; 200 {account_sid, usage_category, added, firings, deliveries (with Wait)};
//	                     409 (code 10001) for a suspended or closed account
//	POST   /sim/clock    Advance (Go duration)              moves the clock; 200 {now, firings}
//	GET    /sim/clock                                       200 {now}
//	POST   /sim/faults   Path Method Status Times DelayMs Probability RetryAfter Body=html|json
//	                     Target=api|callbacks After=true Drop=true Code Message   (see Fault); 201
//	GET    /sim/faults   DELETE /sim/faults (clears)
//	POST   /sim/calls    AccountSid [From To]               starts an in-progress call; 201 with Call JSON
//	GET    /sim/state                                       State as JSON
//
// # Triggers and callbacks
//
// A trigger watches its account's usage of its category in its period (GMT
// day, month, year, or all time when non-recurring; the parent's triggers
// watch the parent and all subaccounts). It is evaluated after every usage
// add, after its creation or update, and after every clock advance, and
// fires at most once per period. Firing sends Twilio's callback parameters
// (AccountSid, UsageTriggerSid, DateFired, Recurring, UsageCategory,
// TriggerBy, TriggerValue, CurrentValue, UsageRecordUri, IdempotencyToken)
// signed with the account's auth token, with Basic auth from the URL's
// userinfo, retried up to three times after a 5xx or a transport error.
// Closed accounts' triggers do not fire; suspended accounts' triggers still
// do (Twilio's behaviour there is unconfirmed), but a suspended account's
// usage is refused, so its values only move when the account is reactivated.
//
// A Sim is safe for concurrent use. Lookups are by map keyed by SID, lists are
// kept in creation order, and no request scans more than the page it serves
// (plus, with a filter, the items the filter skips), so tens of thousands of
// subaccounts and triggers are fine. The lock is never held while a callback is
// delivered.
package twiliosim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Options configures a Sim. The zero value is usable.
type Options struct {
	// ParentSID is the parent account's SID (AC + 32 hex); random when empty.
	ParentSID string
	// ParentAuthToken is the parent's auth token; random (32 alphanumerics) when empty.
	ParentAuthToken string
	// ParentFriendlyName defaults to "usagebreaker simulator parent".
	ParentFriendlyName string
	// Now is the base clock (default time.Now). The simulator's time is
	// Now() plus everything Advance added.
	Now func() time.Time
	// CallbackClient sends the Usage Trigger callbacks. Default: a client with
	// a 15 s timeout (Twilio's default read timeout for webhooks).
	CallbackClient *http.Client
	// RetryDelay is the pause before each callback retry (Twilio retries
	// "quickly"). Default 50 ms; negative means no pause.
	RetryDelay time.Duration
	// Seed seeds the random source used by fault probabilities, so a test with
	// Probability faults is reproducible. Zero picks a random seed.
	Seed uint64
	// Logger receives debug/info logs; default discards.
	Logger *slog.Logger
}

// Operation names counted in State.Requests.
const (
	OpAccountsList   = "accounts.list"
	OpAccountsFetch  = "accounts.fetch"
	OpAccountsUpdate = "accounts.update"
	OpAccountsCreate = "accounts.create"
	OpTriggersList   = "triggers.list"
	OpTriggersCreate = "triggers.create"
	OpTriggersFetch  = "triggers.fetch"
	OpTriggersUpdate = "triggers.update"
	OpTriggersDelete = "triggers.delete"
	OpRecordsRead    = "records.read"
	OpMessagesCreate = "messages.create"
	OpCallsList      = "calls.list"
	OpCallsUpdate    = "calls.update"
	OpUnknown        = "unknown"
)

var allOps = []string{
	OpAccountsList, OpAccountsFetch, OpAccountsUpdate, OpAccountsCreate,
	OpTriggersList, OpTriggersCreate, OpTriggersFetch, OpTriggersUpdate, OpTriggersDelete,
	OpRecordsRead, OpMessagesCreate, OpCallsList, OpCallsUpdate, OpUnknown,
}

// Account statuses.
const (
	StatusActive    = "active"
	StatusSuspended = "suspended"
	StatusClosed    = "closed"
)

// MaxTriggersPerAccount is Twilio's documented limit of Usage Triggers per account.
const MaxTriggersPerAccount = 1000

// Sim is the simulator. Create it with New; it is an http.Handler.
type Sim struct {
	log        *slog.Logger
	baseNow    func() time.Time
	client     *http.Client
	retryDelay time.Duration

	ctx    context.Context // cancelled by Close: stops deliveries
	cancel context.CancelFunc
	wg     sync.WaitGroup // delivery goroutines

	mu         sync.Mutex
	closed     bool
	offset     time.Duration // added by Advance
	seq        uint64        // creation order of every resource
	seqOf      map[string]uint64
	parent     *account
	accounts   map[string]*account
	order      []*account // parent first, then subaccounts in creation order
	byName     map[string][]*account
	triggers   map[string]*trigger
	tree       *usageBook // the parent's and every subaccount's usage together
	messages   []Message
	calls      map[string]*call
	callOrder  []*call
	deliveries []Delivery
	requests   map[string]int
	faults     []*Fault
	faultSeq   int
	rng        *rand.Rand
	inflight   int
	idle       chan struct{} // closed when inflight drops to 0
}

type account struct {
	Account
	seq       uint64
	updated   time.Time
	history   []StatusChange
	triggers  []*trigger // creation order
	byCat     map[string][]*trigger
	usage     *usageBook
	callOrder []*call
}

type trigger struct {
	sid, acct           string
	name                string
	url, method         string
	category, by, recur string // recur as created: "", daily, monthly, yearly, alltime
	value               decimal.Decimal
	created, updated    time.Time
	fired               *time.Time
	firedPeriod         string // period key of the last firing
	seq                 uint64
}

type call struct {
	Call
	seq uint64
}

// New returns a simulator with one parent account.
func New(opts Options) *Sim {
	s := &Sim{
		log:        opts.Logger,
		baseNow:    opts.Now,
		client:     opts.CallbackClient,
		retryDelay: opts.RetryDelay,
		seqOf:      make(map[string]uint64),
		accounts:   make(map[string]*account),
		byName:     make(map[string][]*account),
		triggers:   make(map[string]*trigger),
		tree:       newUsageBook(),
		calls:      make(map[string]*call),
		requests:   make(map[string]int),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.baseNow == nil {
		s.baseNow = time.Now
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 15 * time.Second}
	}
	if s.retryDelay == 0 {
		s.retryDelay = 50 * time.Millisecond
	}
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	s.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for _, op := range allOps {
		s.requests[op] = 0
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	sid := opts.ParentSID
	if sid == "" {
		sid = newSID("AC")
	}
	token := opts.ParentAuthToken
	if token == "" {
		token = newToken()
	}
	name := opts.ParentFriendlyName
	if name == "" {
		name = "usagebreaker simulator parent"
	}
	s.mu.Lock()
	s.parent = s.addAccountLocked(sid, token, name, sid)
	s.mu.Unlock()
	return s
}

// ValidAccountSID reports whether sid looks like a Twilio account SID (AC + 32 hex).
func ValidAccountSID(sid string) bool { return sidRE["AC"].MatchString(sid) }

// ValidAuthToken reports whether tok is usable as a simulated auth token:
// 32 ASCII letters or digits (twilio-go refuses non-alphanumeric credentials).
func ValidAuthToken(tok string) bool { return tokenRE.MatchString(tok) }

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9]{32}$`)

// Close stops every delivery in flight and waits for their goroutines. The
// handler keeps answering API requests; no new callbacks are sent.
func (s *Sim) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// Now is the simulator's current time (UTC).
func (s *Sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nowLocked()
}

func (s *Sim) nowLocked() time.Time { return s.baseNow().Add(s.offset).UTC() }

// Parent returns the parent account.
func (s *Sim) Parent() Account {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parent.Account
}

// Account returns an account (the parent or a subaccount) by SID.
func (s *Sim) Account(sid string) (Account, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[sid]
	if !ok {
		return Account{}, false
	}
	return a.Account, true
}

// CreateSubaccount creates an active subaccount of the parent.
func (s *Sim) CreateSubaccount(friendlyName string) Account {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.createSubLocked(friendlyName).Account
}

func (s *Sim) createSubLocked(friendlyName string) *account {
	if friendlyName == "" {
		friendlyName = "SubAccount Created at " + s.nowLocked().Format("2006-01-02 03:04 pm")
	}
	sid := newSID("AC")
	for s.accounts[sid] != nil {
		sid = newSID("AC")
	}
	return s.addAccountLocked(sid, newToken(), friendlyName, s.parent.SID)
}

func (s *Sim) addAccountLocked(sid, token, name, owner string) *account {
	now := s.nowLocked()
	a := &account{
		Account: Account{SID: sid, FriendlyName: name, Status: StatusActive, AuthToken: token,
			OwnerAccountSID: owner, DateCreated: now},
		seq:     s.nextSeq(sid),
		updated: now,
		history: []StatusChange{{Status: StatusActive, At: now}},
		byCat:   make(map[string][]*trigger),
		usage:   newUsageBook(),
	}
	s.accounts[sid] = a
	s.order = append(s.order, a)
	s.byName[name] = append(s.byName[name], a)
	return a
}

func (s *Sim) nextSeq(sid string) uint64 {
	s.seq++
	s.seqOf[sid] = s.seq
	return s.seq
}

// setStatusLocked writes a status (recording it in the history even when it
// does not change).
func (a *account) setStatus(status string, now time.Time) {
	a.Status = status
	a.updated = now
	a.history = append(a.history, StatusChange{Status: status, At: now})
}

// SetStatus sets an account's status directly (no API rules beyond "closed is
// final"); for tests that need an account suspended without going through the API.
func (s *Sim) SetStatus(sid, status string) error {
	switch status {
	case StatusActive, StatusSuspended, StatusClosed:
	default:
		return fmt.Errorf("twiliosim: unknown status %q", status)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[sid]
	if !ok {
		return fmt.Errorf("twiliosim: no account %s", sid)
	}
	if a.Status == StatusClosed && status != StatusClosed {
		return errors.New("twiliosim: a closed account cannot be reopened")
	}
	a.setStatus(status, s.nowLocked())
	return nil
}

// Advance moves the simulator's clock forward by d (periods roll over in GMT)
// and evaluates every trigger, as Twilio's next evaluation would. It returns
// the firings it caused; their deliveries run in the background.
func (s *Sim) Advance(d time.Duration) []Firing {
	if d < 0 {
		d = 0
	}
	s.mu.Lock()
	s.offset += d
	now := s.nowLocked()
	var jobs []*job
	for _, a := range s.order {
		for _, t := range a.triggers {
			if j := s.evalLocked(a, t, now); j != nil {
				jobs = append(jobs, j)
			}
		}
	}
	s.mu.Unlock()
	return s.start(jobs)
}

// StartCall starts an in-progress call on an account (for end_calls tests).
func (s *Sim) StartCall(accountSID string) (Call, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[accountSID]
	if !ok {
		return Call{}, fmt.Errorf("twiliosim: no account %s", accountSID)
	}
	if a.Status != StatusActive {
		return Call{}, fmt.Errorf("twiliosim: account %s is %s", accountSID, a.Status)
	}
	return s.startCallLocked(a, "", ""), nil
}

func (s *Sim) startCallLocked(a *account, from, to string) Call {
	if from == "" {
		from = "+15005550006"
	}
	if to == "" {
		to = "+15558675310"
	}
	now := s.nowLocked()
	sid := newSID("CA")
	c := &call{Call: Call{SID: sid, AccountSID: a.SID, From: from, To: to, Status: "in-progress",
		StartTime: now, DateCreated: now, DateUpdated: now}, seq: s.nextSeq(sid)}
	s.calls[sid] = c
	s.callOrder = append(s.callOrder, c)
	a.callOrder = append(a.callOrder, c)
	return c.Call
}

// WaitIdle waits until no callback delivery is in flight (or ctx ends).
func (s *Sim) WaitIdle(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.inflight == 0 {
			s.mu.Unlock()
			return nil
		}
		ch := s.idle
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Wait waits until the deliveries of the given firings are finished and returns
// every attempt they made, in order.
func (s *Sim) Wait(ctx context.Context, firings ...Firing) ([]Delivery, error) {
	var out []Delivery
	for _, f := range firings {
		if f.job == nil {
			continue
		}
		select {
		case <-f.job.done:
		case <-ctx.Done():
			return out, ctx.Err()
		}
		s.mu.Lock()
		out = append(out, f.job.attempts...)
		s.mu.Unlock()
	}
	return out, nil
}
