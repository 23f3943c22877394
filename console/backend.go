package console

import (
	"context"
	"errors"
	"time"
)

// Backend is everything the console reads and does. The daemon implements it
// over its store and breaker (daemon/console.go); the console depends on
// nothing else, so the machinery behind it can change freely.
//
// Every method that changes something takes who: the signed-in operator as
// the audit records them. Those methods must do exactly what the admin API's
// endpoint of the same name does, audit included.
type Backend interface {
	// Overview is the health page's data.
	Overview(ctx context.Context) (Overview, error)
	// Coverage is the last reconcile's view; At is zero when none finished.
	Coverage(ctx context.Context) (CoverageView, error)
	// Rules are the rules in force, with their trips this period.
	Rules(ctx context.Context) ([]Rule, error)
	// Incidents lists incidents, newest first.
	Incidents(ctx context.Context, f IncidentFilter) ([]Incident, error)
	// Incident returns one incident with what happened to it, or ErrNotFound.
	Incident(ctx context.Context, id int64) (IncidentDetail, error)
	// Guard is what the blast-radius guard holds.
	Guard(ctx context.Context) (GuardState, error)

	// Reconcile asks for a reconcile soon (POST /api/v1/reconcile).
	Reconcile(ctx context.Context, who string) error
	// Reactivate reactivates a subaccount the breaker suspended (POST
	// /api/v1/accounts/{sid}/reactivate). A refusal is a *RefusedError.
	Reactivate(ctx context.Context, accountSID, reason, who string) (Reactivated, error)
	// ReleaseGuard executes every held suspension (POST /api/v1/guard/release)
	// and returns how many there were.
	ReleaseGuard(ctx context.Context, who string) (int, error)
	// Approve and Veto decide an incident whose outcome is
	// OutcomeAwaitingApproval. Until approvals exist they return
	// ErrUnsupported.
	Approve(ctx context.Context, incidentID int64, who string) error
	Veto(ctx context.Context, incidentID int64, reason, who string) error
}

// ErrNotFound: no such incident.
var ErrNotFound = errors.New("not found")

// ErrUnsupported: this build cannot do that yet.
var ErrUnsupported = errors.New("not supported by this version")

// RefusedError is an action the breaker will not do, with why.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return e.Reason }

// OutcomeAwaitingApproval is the incident outcome for which Approve and Veto
// are offered.
const OutcomeAwaitingApproval = "awaiting_approval"

// OutcomeSuspended is the incident outcome for which Reactivate is offered.
const OutcomeSuspended = "suspended"

// Overview is the health page.
type Overview struct {
	Instance       string
	Version        string
	Ready          bool // the first reconcile finished
	ConfigReloadOK bool // the last config (re)load succeeded
	Replicas       []Replica
	LastReconcile  *Run // nil: none finished yet
	LastPoll       *Run // nil: none finished yet
	PollSchedule   string
	Twilio         TwilioCalls
	PendingActions int
	Guard          GuardSummary
}

// Replica is one running usagebreaker process of this deployment.
type Replica struct {
	Name    string // host name
	Role    string // e.g. "this process"
	Started time.Time
}

// Run is one finished reconcile or poll.
type Run struct {
	Started  time.Time
	Duration time.Duration
	Summary  string   // what it did, in a line
	Errors   []string // its per-account problems
}

// TwilioCalls are the HTTP attempts at Twilio's API since the process started.
type TwilioCalls struct {
	Attempts int
	Failed   int         // transport errors, timeouts and 4xx/5xx answers
	ByCode   []CodeCount // the failed ones by HTTP status ("error": no answer)
}

// CodeCount is a number of failed attempts with one answer code.
type CodeCount struct {
	Code string
	N    int
}

// GuardSummary is the guard's configuration and state.
type GuardSummary struct {
	On              bool
	MaxSuspensions  int
	Window          time.Duration
	SuspendedInWin  int // suspensions in the current window
	HeldSuspensions int
	HeldDeletions   int
}

// Coverage states, per rule and subaccount.
const (
	StateGuarded    = "guarded"
	StateNotMatched = "not matched"
	StateMissing    = "missing"
	StateDrifted    = "drifted"
	StateSuspended  = "suspended"
)

// CoverageView is the last reconcile's view of every subaccount.
type CoverageView struct {
	At       time.Time // when that reconcile started; zero: none finished
	Rules    []string
	Accounts []AccountCoverage
}

// AccountCoverage is one subaccount: its status and, per CoverageView.Rules
// entry, one of the State* values.
type AccountCoverage struct {
	SID    string
	Name   string
	Status string // active | suspended | closed
	States []string
	Error  string // the reconcile's problem with it, if any
}

// Rule is a rule in force.
type Rule struct {
	Name         string
	Description  string
	Watches      string // category, trigger_by, recurring, threshold in a line
	Action       string // suspend | notify, and "(dry run)"
	Source       string // file:line
	Period       string // the current period
	Trips        int    // incidents in the current period
	TripsAtLeast bool   // Trips is a lower bound (too many incidents to count)
}

// IncidentFilter narrows Incidents; zero fields match everything.
type IncidentFilter struct {
	Rule       string
	AccountSID string
	Limit      int
}

// Incident is one trip: one per (rule, subaccount, period).
type Incident struct {
	ID           int64
	Rule         string
	AccountSID   string
	AccountName  string
	Period       string
	Source       string // callback | poll: of the first firing
	Category     string
	TriggerValue string
	CurrentValue string
	Action       string
	DryRun       bool
	State        string // pending | done | failed
	Outcome      string
	Detail       string
	Firings      int
	Held         bool // the guard holds its suspension
	Reactivated  bool
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// IncidentDetail is an incident and everything recorded about it.
type IncidentDetail struct {
	Incident
	Actions      []Action
	Reactivation *Reactivation
	Approvals    []Approval
}

// Action is a unit of work of an incident: the trip, a notification, ending
// calls, a guard page, a scheduled reactivation.
type Action struct {
	Kind          string
	State         string
	Outcome       string
	Detail        string // the last attempt's error, or what it did
	Attempts      int    // attempts so far: each failed one, and the one that finished it
	Held          bool
	Released      bool
	NextAttemptAt time.Time // zero unless waiting in the queue
	Owner         string    // the process running it now
	WriteSentAt   time.Time // when a status write was last sent (zero: none)
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// Reactivation is the undoing of an incident's suspension.
type Reactivation struct {
	At      time.Time
	Via     string // manual | scheduled
	Actor   string
	Reason  string
	Rearmed int
	Detail  string
}

// Approval is a person's decision on an incident awaiting approval.
type Approval struct {
	At       time.Time
	Decision string // approved | vetoed
	Actor    string
	Reason   string
}

// GuardState is what the guard holds.
type GuardState struct {
	GuardSummary
	Suspensions []Held
	Deletions   []Held
	// Partial: more are held than listed (see HeldSuspensions and HeldDeletions).
	Partial bool
}

// Held is one held suspension or deletion.
type Held struct {
	IncidentID  int64 // 0 if none
	AccountSID  string
	AccountName string
	Rule        string
	Detail      string
	Since       time.Time
}

// Reactivated is what a reactivation did.
type Reactivated struct {
	AccountSID  string
	AccountName string
	IncidentID  int64 // the suspension undone
	WasActive   bool  // someone had already set it active at Twilio
	Rearmed     int
	Problems    []string
}
