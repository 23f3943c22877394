// Package store keeps usagebreaker's durable state: trigger firings, the
// incidents they open, and the actions each incident must carry out.
//
// The only implementation is SQLite (sqlite.go, modernc.org/sqlite: pure Go, so
// the binary stays static), in WAL mode with synchronous=FULL: when a write
// method returns nil the data survives a crash of the process or the machine.
package store

import (
	"context"
	"errors"
	"time"
)

// Incident and action states.
const (
	StatePending = "pending" // work remains
	StateDone    = "done"    // finished (see Outcome)
	StateFailed  = "failed"  // gave up (see Detail)
)

// Incident sources.
const (
	SourceCallback = "callback"
	SourcePoll     = "poll"
)

// ActionTrip is the kind of an incident's primary action: suspend, notify or
// dry-run, as the rule says. Its state and outcome are mirrored on the incident.
const ActionTrip = "trip"

// ErrNotFound is returned when a requested row does not exist.
var ErrNotFound = errors.New("not found")

// Firing is one detection of a crossed threshold: a verified callback, or a
// poll that found usage at or over the threshold.
type Firing struct {
	Source string // SourceCallback | SourcePoll
	// IdempotencyToken identifies the firing. For callbacks it is Twilio's
	// token; for polls the poller makes one up from rule, account and period.
	IdempotencyToken string
	Rule             string
	AccountSID       string
	AccountName      string // the subaccount's friendly name at the time
	// Period names the rule's interval the firing falls in, e.g.
	// "daily:2026-11-24", "monthly:2026-11", "yearly:2026", "alltime".
	Period          string
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
	Actions []string
	// Claim, when set, says the recording process runs the new incident's
	// ActionTrip itself, straight after the commit: the action is created
	// with Claim's NextAttemptAt and Detail instead of due at ReceivedAt with
	// no detail, so no executor pass picks it up while the claimant works,
	// and a process that restarts finds the claimant's mark. Ignored when no
	// incident is created.
	Claim *Claim
}

// Claim is how a claimed trip action is created (Firing.Claim).
type Claim struct {
	NextAttemptAt time.Time
	Detail        string
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
	// (with the firing's Claim applied); zero ID when none was created.
	Trip Action
	// Reopened: this firing (a new token) attached to an existing incident
	// whose trip action had ended, either done with outcome "skipped" or
	// failed, and put it back to work in the same transaction:
	//   - the trip action is pending again with no Outcome, due at the
	//     firing's ReceivedAt, its Attempts kept and its Hold cleared;
	//   - an end_calls action that ended "skipped" (the account was not
	//     suspended) is pending again; notify:* and other actions are left
	//     as they are, so notifications that already ran are not repeated;
	//   - the incident takes this firing's AccountName, UsageTriggerSID,
	//     UsageCategory, TriggerBy, Recurring, TriggerValue, CurrentValue,
	//     DateFired, Action and DryRun, is pending with no Outcome, and its
	//     Detail says it was reopened and how the trip had ended; UpdatedAt
	//     moves forward to ReceivedAt (never back); Source, IdempotencyToken
	//     and CreatedAt stay the first firing's.
	// Incident is the incident after that. The caller treats it as work to
	// do, like a new incident (wake the executor), though no action was
	// created. Never true together with NewIncident or DuplicateToken. A new
	// token for an incident whose trip is pending, or ended otherwise
	// (suspended, already_suspended, dry_run, notified), changes only
	// Firings and UpdatedAt, as before.
	Reopened bool
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
	Source           string // of the first firing
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
	State            string // pending | done | failed (of the ActionTrip action)
	Outcome          string // suspended | already_suspended | dry_run | notified | skipped | failed | ""
	Detail           string // why: the error, or why it was skipped
	Firings          int    // firings recorded for this incident (1 + repeats with other tokens)
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Action is one unit of work an incident must carry out, retried until done or failed.
type Action struct {
	ID            int64
	IncidentID    int64
	Kind          string // ActionTrip, later "notify:{name}", "end_calls", ...
	State         string
	Attempts      int
	NextAttemptAt time.Time
	Outcome       string
	Detail        string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	Hold          int    // HoldNone | HoldHeld | HoldReleased (the guard; see operator.go)
	Progress      string // what a multi-part action already did (see SetActionProgress)
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
// durably when it returns nil, or not at all. RecordFiring serialises with
// itself, so two concurrent firings with the same token or the same (rule,
// account, period) produce exactly one incident.
type Store interface {
	// OperatorStore: re-arms, reactivations, the guard (operator.go).
	OperatorStore

	// RecordFiring records a firing and, if its (Rule, AccountSID, Period) has no
	// incident yet, opens one with a pending action of each kind in f.Actions.
	// A new token for an incident whose trip ended skipped or failed reopens
	// it (RecordResult.Reopened). A token recorded before changes nothing.
	RecordFiring(ctx context.Context, f Firing) (RecordResult, error)

	// Incident returns one incident, or ErrNotFound.
	Incident(ctx context.Context, id int64) (Incident, error)
	// ListIncidents returns incidents, newest first.
	ListIncidents(ctx context.Context, f IncidentFilter) ([]Incident, error)

	// PendingActions returns every pending action whose NextAttemptAt is at or
	// before now, at most limit (0: no limit): trip actions first, then the
	// others, each group oldest NextAttemptAt first (ties: lowest ID), so the
	// executor hands out due suspensions before notifications. Notify and end_calls
	// actions are left out while their incident's trip action is pending:
	// they report or follow its outcome.
	PendingActions(ctx context.Context, now time.Time, limit int) ([]Action, error)
	// CountPendingActions counts pending actions regardless of NextAttemptAt,
	// except suspensions the guard holds and scheduled reactivations, which
	// wait for a person or a time rather than for work.
	CountPendingActions(ctx context.Context) (int, error)
	// RetryAction records a failed attempt: attempts+1, the error as Detail, and
	// when to try next. The action stays pending.
	RetryAction(ctx context.Context, id int64, nextAttemptAt time.Time, detail string) error
	// NoteAction records the progress of an attempt under way, before a step
	// whose outcome a crash could hide: the detail, and when to look at the
	// action again should the attempt never finish. Attempts is unchanged;
	// the action stays pending. For an ActionTrip action the incident's
	// Detail follows. A missing or no longer pending action: ErrNotFound.
	NoteAction(ctx context.Context, id int64, nextAttemptAt time.Time, detail string) error
	// FinishAction ends an action as done or failed with its outcome and detail.
	// For an ActionTrip action the incident's State, Outcome and Detail follow.
	// Finishing an action that is no longer pending returns ErrNotFound and changes nothing.
	FinishAction(ctx context.Context, id int64, state, outcome, detail string) error

	// Close releases the database.
	Close() error
}
