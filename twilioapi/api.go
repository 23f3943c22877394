// Package twilioapi is the narrow interface through which usagebreaker talks to
// Twilio, and its implementation on twilio-go (see client.go).
//
// Everything the daemon does at Twilio goes through API, so the breaker can be
// tested with an in-memory fake and the real client can add retries, backoff, a
// concurrency limit and metrics in one place.
package twilioapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Account statuses.
const (
	StatusActive    = "active"
	StatusSuspended = "suspended"
	StatusClosed    = "closed"
)

// Account is a Twilio account (the parent or a subaccount).
type Account struct {
	SID          string
	FriendlyName string
	Status       string // active | suspended | closed
	OwnerSID     string // the parent's SID; equal to SID for the parent itself
	AuthToken    string // the account's primary auth token (returned to parent credentials)
}

// Trigger is a Usage Trigger as Twilio reports it.
type Trigger struct {
	SID            string
	AccountSID     string
	FriendlyName   string
	CallbackURL    string
	CallbackMethod string
	UsageCategory  string
	TriggerBy      string // count | usage | price
	Recurring      string // daily | monthly | yearly | alltime ("" from Twilio means alltime)
	TriggerValue   decimal.Decimal
	CurrentValue   decimal.Decimal
	DateFired      string // RFC 2822, "" until it fires
	DateCreated    string // RFC 2822, as Twilio reports it
}

// TriggerSpec is what to create. TriggerValue is a decimal string; a leading
// "+" makes it an offset above the current usage ("+50").
type TriggerSpec struct {
	FriendlyName   string
	CallbackURL    string
	CallbackMethod string
	UsageCategory  string
	TriggerBy      string
	Recurring      string
	TriggerValue   string
}

// TriggerUpdate holds the only fields Twilio lets an update change; empty
// fields are left as they are.
type TriggerUpdate struct {
	FriendlyName   string
	CallbackURL    string
	CallbackMethod string
}

// Period names the usage record that covers a rule's recurring interval.
type Period string

// The usage periods, one per rule "recurring" value.
const (
	PeriodDaily   Period = "daily"   // Usage/Records/Today.json
	PeriodMonthly Period = "monthly" // Usage/Records/ThisMonth.json
	PeriodYearly  Period = "yearly"  // Usage/Records/Yearly.json?StartDate={this year}-01-01
	PeriodAllTime Period = "alltime" // Usage/Records/AllTime.json
)

// UsageRecord is one usage record, with exact decimals.
type UsageRecord struct {
	AccountSID string
	Category   string
	StartDate  string // YYYY-MM-DD
	EndDate    string
	Count      decimal.Decimal
	Usage      decimal.Decimal
	Price      decimal.Decimal
	PriceUnit  string
	// AsOf is when Twilio computed the record (its as_of); zero when it
	// did not say.
	AsOf time.Time
}

// Value returns the record's value as a trigger of the given trigger_by would see it.
func (r UsageRecord) Value(triggerBy string) decimal.Decimal {
	switch triggerBy {
	case "count":
		return r.Count
	case "price":
		return r.Price
	default:
		return r.Usage
	}
}

// Message is an SMS to send from the parent account.
type Message struct {
	To                  string
	From                string // or MessagingServiceSID
	MessagingServiceSID string
	Body                string
}

// Call is an in-progress call on a subaccount.
type Call struct {
	SID    string
	Status string
	From   string
	To     string
}

// API is everything usagebreaker does at Twilio. Implementations are safe for
// concurrent use; every method honours ctx (cancellation ends retries too).
// Errors from Twilio are *Error (use errors.As, or the Is* helpers below).
type API interface {
	// ParentSID is the parent account's SID.
	ParentSID() string
	// ListSubaccounts returns every subaccount of the parent (all pages, any
	// status), never the parent itself.
	ListSubaccounts(ctx context.Context) ([]Account, error)
	// FetchAccount reads one account.
	FetchAccount(ctx context.Context, sid string) (Account, error)
	// SetAccountStatus sets a subaccount's status (active or suspended). A
	// write whose outcome is unknown (5xx, timeout) is not repeated: the
	// caller reads the account before writing again.
	SetAccountStatus(ctx context.Context, sid, status string) (Account, error)

	// ListTriggers returns all of an account's usage triggers (all pages).
	ListTriggers(ctx context.Context, accountSID string) ([]Trigger, error)
	// CreateTrigger creates a trigger. It never leaves a duplicate behind when
	// Twilio's answer was lost: see the implementation's comment.
	CreateTrigger(ctx context.Context, accountSID string, spec TriggerSpec) (Trigger, error)
	// UpdateTrigger changes a trigger's callback URL, method or friendly name.
	UpdateTrigger(ctx context.Context, accountSID, triggerSID string, upd TriggerUpdate) (Trigger, error)
	// DeleteTrigger deletes a trigger; deleting one that is already gone is not an error.
	DeleteTrigger(ctx context.Context, accountSID, triggerSID string) error

	// UsageRecords reads every category of an account's usage in the current
	// period in one call (at most one record per category).
	UsageRecords(ctx context.Context, accountSID string, period Period) ([]UsageRecord, error)

	// SendMessage sends an SMS from the parent account and returns its SID.
	SendMessage(ctx context.Context, msg Message) (string, error)
	// ListInProgressCalls lists a subaccount's in-progress calls.
	ListInProgressCalls(ctx context.Context, accountSID string) ([]Call, error)
	// EndCall sets a call's status to completed.
	EndCall(ctx context.Context, accountSID, callSID string) error
}

// Error is a failed Twilio request. Status is the HTTP status (0 for a
// transport error or timeout); Code is Twilio's error code when the body
// carried one (also recovered from non-JSON bodies when possible, else 0).
type Error struct {
	Operation string // e.g. "accounts.update"
	Status    int
	Code      int
	Message   string
	MoreInfo  string
	Err       error // the underlying error, if any
}

func (e *Error) Error() string {
	switch {
	case e.Status == 0:
		return fmt.Sprintf("twilio %s: %v", e.Operation, e.Err)
	case e.Code != 0:
		return fmt.Sprintf("twilio %s: HTTP %d, error %d: %s", e.Operation, e.Status, e.Code, e.Message)
	default:
		return fmt.Sprintf("twilio %s: HTTP %d: %s", e.Operation, e.Status, e.Message)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Twilio error codes the daemon reacts to.
const (
	CodeAuthenticate    = 20003 // authentication failed (HTTP 401)
	CodeNotFound        = 20404 // the requested resource was not found
	CodeTooManyRequests = 20429 // too many concurrent requests (HTTP 429)
)

// IsNotFound reports a 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// IsRetryable reports whether trying the same request again later may succeed:
// transport errors, timeouts, 429 and 5xx.
func IsRetryable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// IsPermanent reports a Twilio answer that can never succeed if repeated (a 4xx
// other than 429): a closed account, bad parameters, missing resource.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests
}
