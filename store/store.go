// Package store keeps usagebreaker's durable state: trigger firings, the
// incidents they open, and the actions each incident must carry out.
//
// Actions are the jobs of the action engine (breaker/engine.go). Each has a
// typed state:
//
//	available --claim--> running --complete--> done | failed
//	    ^                  |  \
//	    +--retry/snooze----+   +--hold--> held --release--> available
//
// A worker claims due actions in the statement that fetches them
// (ClaimActions): the row records the owner and a lease. An action that locks
// an account (AccountSID set: trip, end_calls, reactivate) is never claimed
// while another action of that account holds a lease, so one action per
// subaccount runs at a time, across processes. What a restart needs to know
// lives in columns: who claimed an action and until when (Owner,
// LeaseUntil), and when a status write was sent to Twilio (WriteSentAt).
// RescueActions hands the claims of a stopped owner back to the queue.
//
// The only implementation is SQLite (sqlite.go, modernc.org/sqlite: pure Go, so
// the binary stays static), in WAL mode with synchronous=FULL: when a write
// method returns nil the data survives a crash of the process or the machine.
// The writes of the callback -> suspension path are group-committed
// (groupcommit.go): a burst shares fsyncs.
package store

import (
	"context"
	"errors"
	"strings"
	"time"
)

// State is an incident's state: that of its trip action, folded.
type State string

// Incident states.
const (
	StatePending State = "pending" // the trip action has not finished
	StateDone    State = "done"    // finished (see Outcome)
	StateFailed  State = "failed"  // gave up (see Detail)
)

// ActionState is where an action is in its life (see the package comment).
type ActionState string

// Action states.
const (
	ActionAvailable ActionState = "available" // due at NextAttemptAt; any worker may claim it then
	ActionRunning   ActionState = "running"   // claimed by Owner until LeaseUntil
	ActionHeld      ActionState = "held"      // the guard holds it until a person releases it
	ActionDone      ActionState = "done"      // finished with Outcome
	ActionFailed    ActionState = "failed"    // gave up (see Detail)
)

// Finished reports whether the state is final.
func (s ActionState) Finished() bool { return s == ActionDone || s == ActionFailed }

// Source is where a firing came from.
type Source string

// Incident sources.
const (
	SourceCallback Source = "callback"
	SourcePoll     Source = "poll"
)

// ActionKind is what an action does; one worker serves each kind.
type ActionKind string

// Action kinds. notify:{name} and guard:{name} carry a notifier's name.
const (
	// ActionTrip is an incident's primary action: suspend, notify or dry-run,
	// as the rule says. Its state and outcome are mirrored on the incident.
	ActionTrip ActionKind = "trip"
	// ActionEndCalls ends the subaccount's in-progress calls after the trip
	// action suspended it.
	ActionEndCalls ActionKind = "end_calls"
	// ActionReactivate is a scheduled reactivation (a rule's reactivate
	// policy); its NextAttemptAt is when it is due.
	ActionReactivate ActionKind = "reactivate"
	// ActionRearmStep arms a velocity rule's next step after a step firing
	// (one per firing, with no incident: Action.Step names the firing).
	ActionRearmStep ActionKind = "rearm_step"

	// KindNotifyPrefix + notifier name: tell that notifier about the incident,
	// once, after the trip action finished.
	KindNotifyPrefix = "notify:"
	// KindGuardPrefix + notifier name: the one page a notifier gets when the
	// guard starts holding suspensions (attached to the first held incident).
	KindGuardPrefix = "guard:"
	// KindApprovalPrefix + notifier name: tell that notifier the incident
	// awaits a person's approval (the rule's approval), once.
	KindApprovalPrefix = "approval:"
)

// NotifyKind is the kind of the action that tells notifier name about an incident.
func NotifyKind(name string) ActionKind { return ActionKind(KindNotifyPrefix + name) }

// GuardPageKind is the kind of the guard's page to notifier name.
func GuardPageKind(name string) ActionKind { return ActionKind(KindGuardPrefix + name) }

// ApprovalNoticeKind is the kind of the notice to notifier name that an
// incident awaits approval.
func ApprovalNoticeKind(name string) ActionKind { return ActionKind(KindApprovalPrefix + name) }

// Notifier returns the notifier's name of a notify:{name} or guard:{name} kind.
func (k ActionKind) Notifier() (name string, ok bool) {
	s := string(k)
	for _, p := range []string{KindNotifyPrefix, KindGuardPrefix, KindApprovalPrefix} {
		if n, ok := strings.CutPrefix(s, p); ok {
			return n, true
		}
	}
	return "", false
}

// LocksAccount reports whether actions of this kind act on the account at
// Twilio, so that no two of them run at once for one account.
func (k ActionKind) LocksAccount() bool {
	return k == ActionTrip || k == ActionEndCalls || k == ActionReactivate
}

// WaitsForTrip reports whether actions of this kind wait until the
// incident's trip has finished (they report or follow its outcome).
func (k ActionKind) WaitsForTrip() bool {
	return k == ActionEndCalls || strings.HasPrefix(string(k), KindNotifyPrefix)
}

// Outcome is how an action (and, for the trip, its incident) ended.
type Outcome string

// Outcomes. The first four are also the outcome label of
// usagebreaker_suspensions_total.
const (
	OutcomeSuspended        Outcome = "suspended"
	OutcomeAlreadySuspended Outcome = "already_suspended"
	OutcomeDryRun           Outcome = "dry_run"
	OutcomeFailed           Outcome = "failed"
	OutcomeNotified         Outcome = "notified"
	OutcomeSkipped          Outcome = "skipped"
	OutcomeSent             Outcome = "sent"        // a notification
	OutcomeEnded            Outcome = "ended"       // end_calls
	OutcomeReactivated      Outcome = "reactivated" // a scheduled reactivation
	// OutcomeAwaitingApproval is the outcome of an incident whose trip waits
	// for a person (the rule's approval); the incident is still pending.
	OutcomeAwaitingApproval Outcome = "awaiting_approval"
	OutcomeVetoed           Outcome = "vetoed" // a person vetoed the suspension
	OutcomeArmed            Outcome = "armed"  // rearm_step: the next step trigger exists
)

// Decision is a person's answer to an incident awaiting approval.
type Decision string

// Decisions.
const (
	DecisionApprove Decision = "approve"
	DecisionVeto    Decision = "veto"
)

// Approval is a person's decision on an incident, with who, when and why.
type Approval struct {
	IncidentID int64
	Decision   Decision
	Actor      string
	Reason     string
	CreatedAt  time.Time
}

// ErrNotFound is returned when a requested row does not exist.
var ErrNotFound = errors.New("not found")

// Firing is one detection of a crossed threshold: a verified callback, or a
// poll that found usage at or over the threshold.
type Firing struct {
	Source Source
	// IdempotencyToken identifies the firing. For callbacks it is Twilio's
	// token; for polls the poller makes one up from rule, account and period.
	IdempotencyToken string
	Rule             string
	AccountSID       string
	AccountName      string // the subaccount's friendly name at the time
	// Period names the rule's interval the firing falls in, e.g.
	// "daily:2026-11-24", "monthly:2026-11", "yearly:2026", "alltime".
	Period string
	// ApplyRearm: Period is a plain period key, and the incident's period is
	// Period, or "Period#N" while a re-arm exception of generation N exists
	// for (AccountSID, Rule, Period) (BeginRearm): after a re-arm, a firing
	// in the same period belongs to the re-armed generation. The store looks
	// the exception up in the statement (Postgres) or transaction (SQLite)
	// that records the firing.
	ApplyRearm      bool
	UsageTriggerSID string
	UsageCategory   string
	TriggerBy       string
	Recurring       string
	TriggerValue    string
	CurrentValue    string
	DateFired       string
	Action          string // the rule's action at the time: suspend | notify
	DryRun          bool
	ReceivedAt      time.Time
	// Actions are the kinds of action rows to create with a new incident; the
	// first is normally ActionTrip. Ignored when the incident already exists.
	Actions []ActionKind
	// ClaimBy, when set, creates a new incident's trip action already claimed
	// by this owner (running, leased until LeaseUntil), unless another action
	// of the account holds a lease: the recording process then runs it at
	// once, with no claim of its own (RecordResult.Trip).
	ClaimBy *Claim
}

// Claim is who claims actions, and until when.
type Claim struct {
	Owner      string
	LeaseUntil time.Time
}

// RecordResult says what RecordFiring did.
type RecordResult struct {
	Incident Incident
	// DuplicateToken: this IdempotencyToken was recorded before; nothing changed.
	DuplicateToken bool
	// NewIncident: this firing opened the incident. False when the token is a
	// duplicate or another firing already opened the (rule, account, period) incident.
	NewIncident bool
	// Trip is the ActionTrip action created with a new incident, as stored
	// (running if the firing's ClaimBy took it); zero ID when none was created.
	Trip Action
	// Reopened: this firing (a new token) attached to an existing incident
	// whose trip action had ended, either done with outcome "skipped" or
	// failed, and put it back to work in the same transaction:
	//   - the trip action is available again with no Outcome, due at the
	//     firing's ReceivedAt, its Attempts and WriteSentAt kept and its
	//     release cleared;
	//   - an end_calls action that ended "skipped" (the account was not
	//     suspended) is available again; notify:* and other actions are left
	//     as they are, so notifications that already ran are not repeated;
	//   - the incident takes this firing's AccountName, UsageTriggerSID,
	//     UsageCategory, TriggerBy, Recurring, TriggerValue, CurrentValue,
	//     DateFired, Action and DryRun, is pending with no Outcome, and its
	//     Detail says it was reopened and how the trip had ended; UpdatedAt
	//     moves forward to ReceivedAt (never back); Source, IdempotencyToken
	//     and CreatedAt stay the first firing's.
	// Never true together with NewIncident or DuplicateToken. A new token for
	// an incident whose trip is unfinished, or ended otherwise, changes only
	// Firings and UpdatedAt.
	Reopened bool
	// LastStatusWrite, when ClaimBy took the trip: when the latest status
	// write to the account that the store knows of was sent (the newest
	// WriteSentAt of the account's actions, or its newest reactivation);
	// zero if none. A read of the account that started before it may not
	// show that write. (Any other status write of ours is sent under a claim
	// on the account, and none holds one while the trip is claimed.)
	LastStatusWrite time.Time
}

// Incident is one trip: one per (rule, account, period).
type Incident struct {
	// Source and IdempotencyToken are the first firing's. AccountName and
	// UsageTriggerSID to DryRun are the first firing's, or those of the
	// latest firing that reopened the incident (RecordResult.Reopened).
	ID               int64
	Rule             string
	AccountSID       string
	AccountName      string
	Period           string
	Source           Source // of the first firing
	IdempotencyToken string // of the first firing
	UsageTriggerSID  string
	UsageCategory    string
	TriggerBy        string
	Recurring        string
	TriggerValue     string
	CurrentValue     string
	DateFired        string
	Action           string
	DryRun           bool
	State            State   // of the ActionTrip action
	Outcome          Outcome // "" while pending
	Detail           string  // why: the error, or why it was skipped
	Firings          int     // firings recorded for this incident (1 + repeats with other tokens)
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Action is one unit of work an incident must carry out, retried until done or failed.
type Action struct {
	ID int64
	// IncidentID is the incident the action works for; 0 for the action of
	// a velocity rule's step firing (Step).
	IncidentID int64
	// Step is the IdempotencyToken of the step firing the action works for
	// (ActionRearmStep); "" for an incident's action.
	Step string
	Kind ActionKind
	// AccountSID is the account the action locks ("" for kinds that lock
	// none, see ActionKind.LocksAccount).
	AccountSID    string
	State         ActionState
	Attempts      int
	NextAttemptAt time.Time // when an available action is due
	// Owner and LeaseUntil: who claimed the action and until when. While
	// LeaseUntil is after now no other action of AccountSID is claimed; a
	// retry whose status write may still land keeps the lease (with no
	// owner) until it no longer can.
	Owner      string
	LeaseUntil time.Time
	// WriteSentAt is when an attempt last sent a status write to Twilio
	// (zero: none was sent). A later attempt that finds the account
	// suspended knows the suspension may be its own.
	WriteSentAt time.Time
	Released    bool // a person released it from the guard: it runs past the guard
	// Rescued: a process claimed it and stopped before recording a result
	// (RescueActions). Without WriteSentAt nobody knows whether that process
	// sent a status write.
	Rescued   bool
	Outcome   Outcome
	Detail    string
	Progress  string // what a multi-part action already did (a notification's recipients)
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Completion is how a worker's attempt at a running action ends
// (CompleteAction).
type Completion struct {
	// State is ActionDone or ActionFailed (finished), ActionAvailable (try
	// again at NextAttemptAt) or ActionHeld (the guard holds it).
	State         ActionState
	Outcome       Outcome
	Detail        string
	NextAttemptAt time.Time // with ActionAvailable
	// Attempted counts the attempt (Attempts+1); a snooze does not.
	Attempted bool
	// HoldAccountUntil, with ActionAvailable, keeps the action's lease on its
	// account until then: a status write it sent may still land.
	HoldAccountUntil time.Time
	// WriteSentAt, when set, records that this attempt sent a status write.
	WriteSentAt time.Time
	// ClearWriteSent forgets an earlier attempt's status write (this attempt
	// read the account unchanged and nothing it sent may still land).
	// WriteSentAt wins over it.
	ClearWriteSent bool
	// Progress replaces the action's progress (pass the action's own to keep it).
	Progress string
	// Then, with ActionDone or ActionAvailable, creates these actions for
	// the same incident (kinds it has already are left as they are).
	Then []Scheduled
	// Pages, with ActionHeld, creates these actions for the same incident if
	// no other action was held (the guard's pages); a page this incident
	// already sent in an earlier episode is made available again.
	Pages []ActionKind
}

// Completed says what CompleteAction did.
type Completed struct {
	Paged bool // a hold created Completion.Pages
}

// Scheduled is an action to create with a completion, due at At.
type Scheduled struct {
	Kind ActionKind
	At   time.Time
}

// IncidentFilter narrows ListIncidents; zero fields match everything.
type IncidentFilter struct {
	Rule       string
	AccountSID string
	Limit      int // 0 means 100
}

// Store is the durable state.
//
// Concurrency contract: every method is safe to call from many goroutines at
// once. Each write method is one transaction: it either happened completely and
// durably when it returns nil, or not at all. RecordFiring, ClaimActions,
// MarkWriteSent and CompleteAction are serialised with each other (one writer,
// group-committed), so two concurrent firings with the same token or the same
// (rule, account, period) produce exactly one incident, and an action is
// claimed by one owner at a time.
type Store interface {
	// ActionStore: the action engine's queue.
	ActionStore
	// OperatorStore: re-arms, reactivations (rearms.go) and approvals (approvals.go).
	OperatorStore
	// VelocityStore: the step firings of velocity rules (velocity.go).
	VelocityStore
	// HoldStore: holds on accounts outside the queue (holds.go).
	HoldStore

	// RecordFiring records a firing and, if its (Rule, AccountSID, Period) has no
	// incident yet, opens one with an action of each kind in f.Actions.
	// A new token for an incident whose trip ended skipped or failed reopens
	// it (RecordResult.Reopened). A token recorded before changes nothing.
	RecordFiring(ctx context.Context, f Firing) (RecordResult, error)

	// Incident returns one incident, or ErrNotFound.
	Incident(ctx context.Context, id int64) (Incident, error)
	// ListIncidents returns incidents, newest first.
	ListIncidents(ctx context.Context, f IncidentFilter) ([]Incident, error)

	// Close releases the database.
	Close() error
}

// ActionStore is the queue of the action engine.
type ActionStore interface {
	// ClaimActions claims up to limit available actions due at now for owner
	// (running, leased until c.LeaseUntil) and returns them: trip actions
	// first, then the others, each oldest NextAttemptAt first. It never
	// claims an action that waits for its incident's trip, nor two actions
	// of one account, nor one whose account another action holds a lease on.
	ClaimActions(ctx context.Context, c Claim, now time.Time, limit int) ([]Action, error)
	// MarkWriteSent records that owner's attempt number attempt (the
	// action's Attempts when it was claimed) at running action id sent a
	// status write at, and extends its lease to leaseUntil. ErrNotFound if
	// that attempt is over (owner no longer holds the action, or a later
	// attempt does).
	MarkWriteSent(ctx context.Context, id int64, owner string, attempt int, at, leaseUntil time.Time) error
	// CompleteAction ends owner's attempt at running action id. For a trip
	// action the incident follows (its state, outcome and detail). ErrNotFound
	// if owner no longer holds it: nothing changes.
	CompleteAction(ctx context.Context, id int64, owner string, c Completion) (Completed, error)
	// RescueActions hands back running actions whose owner stopped: those
	// whose lease has passed at now, or, with all, every running action (a
	// process that alone owns the state calls it at start, before it claims
	// anything). Each is available again, due at now, except that an action
	// that locks its account keeps the account (and waits) until
	// now+writeLease: its owner may have sent a status write just before it
	// stopped. With all, the holds on accounts (HoldStore) end too: at once,
	// or at now+writeLease if they had marked a write. It returns the
	// actions as they were before.
	RescueActions(ctx context.Context, now time.Time, writeLease time.Duration, all bool) ([]Action, error)
	// ResumeAvailable makes every available action due at now, whatever its
	// backoff said (a restart may be the fix it waited for), except
	// scheduled reactivations and actions that hold their account's lease.
	// It returns how many it moved.
	ResumeAvailable(ctx context.Context, now time.Time) (int, error)

	// IncidentActions returns the actions of each incident, in creation order.
	IncidentActions(ctx context.Context, incidentIDs []int64) (map[int64][]Action, error)
	// CountPendingActions counts available and running actions, except
	// scheduled reactivations, which wait for a time rather than for work.
	// Held actions are counted by CountHeld.
	CountPendingActions(ctx context.Context) (int, error)
	// ReleaseHeld makes every held action available now, marked Released,
	// and returns how many there were.
	ReleaseHeld(ctx context.Context, now time.Time, detail string) (int, error)
	// CountHeld counts the actions the guard holds.
	CountHeld(ctx context.Context) (int, error)
	// CountSuspensions counts trip actions that finished with outcome
	// "suspended" at or after since.
	CountSuspensions(ctx context.Context, since time.Time) (int, error)
	// SuspendedSince reports whether a trip action of another incident than
	// exceptIncident of the account finished "suspended" at or after since.
	SuspendedSince(ctx context.Context, accountSID string, exceptIncident int64, since time.Time) (bool, error)
}
