package twiliosim

import (
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Account is an account of the simulator: the parent (OwnerAccountSID == SID)
// or a subaccount.
type Account struct {
	SID             string    `json:"sid"`
	FriendlyName    string    `json:"friendly_name"`
	Status          string    `json:"status"`
	AuthToken       string    `json:"auth_token"`
	OwnerAccountSID string    `json:"owner_account_sid"`
	DateCreated     time.Time `json:"date_created"`
}

// StatusChange is one write of an account's status (including writes that
// set the status it already had).
type StatusChange struct {
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

// Trigger is a Usage Trigger as the simulator holds it.
type Trigger struct {
	SID            string `json:"sid"`
	AccountSID     string `json:"account_sid"`
	FriendlyName   string `json:"friendly_name"`
	CallbackURL    string `json:"callback_url"`
	CallbackMethod string `json:"callback_method"`
	UsageCategory  string `json:"usage_category"`
	TriggerBy      string `json:"trigger_by"`
	// Recurring as created: daily, monthly, yearly, alltime, or "" (non-recurring).
	Recurring    string          `json:"recurring"`
	TriggerValue decimal.Decimal `json:"trigger_value"`
	// CurrentValue is the watched value in the trigger's current period, now.
	CurrentValue decimal.Decimal `json:"current_value"`
	DateCreated  time.Time       `json:"date_created"`
	DateUpdated  time.Time       `json:"date_updated"`
	DateFired    *time.Time      `json:"date_fired"`
}

// Usage is an amount of usage of one category in one period.
type Usage struct {
	Count decimal.Decimal `json:"count"`
	Usage decimal.Decimal `json:"usage"`
	Price decimal.Decimal `json:"price"`
}

func (u Usage) add(o Usage) Usage {
	return Usage{Count: u.Count.Add(o.Count), Usage: u.Usage.Add(o.Usage), Price: u.Price.Add(o.Price)}
}

// Value is the field a trigger with this trigger_by watches.
func (u Usage) Value(triggerBy string) decimal.Decimal {
	switch triggerBy {
	case "count":
		return u.Count
	case "price":
		return u.Price
	default:
		return u.Usage
	}
}

// UsageInput is usage to add to an account's current periods.
type UsageInput struct {
	AccountSID string
	Category   string
	Count      decimal.Decimal
	Usage      decimal.Decimal
	Price      decimal.Decimal
}

// Message is a message created through the Messages API.
type Message struct {
	SID                 string    `json:"sid"`
	AccountSID          string    `json:"account_sid"`
	To                  string    `json:"to"`
	From                string    `json:"from"`
	MessagingServiceSID string    `json:"messaging_service_sid"`
	Body                string    `json:"body"`
	Status              string    `json:"status"`
	DateCreated         time.Time `json:"date_created"`
}

// Call is a simulated call.
type Call struct {
	SID         string     `json:"sid"`
	AccountSID  string     `json:"account_sid"`
	From        string     `json:"from"`
	To          string     `json:"to"`
	Status      string     `json:"status"`
	StartTime   time.Time  `json:"start_time"`
	EndTime     *time.Time `json:"end_time"`
	DateCreated time.Time  `json:"date_created"`
	DateUpdated time.Time  `json:"date_updated"`
}

// Firing is one trigger firing: a callback whose delivery (up to 4 attempts)
// runs in the background. Pass it to Sim.Wait to wait for the delivery.
type Firing struct {
	TriggerSID       string          `json:"trigger_sid"`
	AccountSID       string          `json:"account_sid"`
	IdempotencyToken string          `json:"idempotency_token"`
	CallbackURL      string          `json:"callback_url"` // without credentials
	CallbackMethod   string          `json:"callback_method"`
	TriggerValue     decimal.Decimal `json:"trigger_value"`
	CurrentValue     decimal.Decimal `json:"current_value"`
	DateFired        time.Time       `json:"date_fired"`

	job *job
}

// Delivery is one attempt to deliver a callback.
type Delivery struct {
	TriggerSID       string `json:"trigger_sid"`
	AccountSID       string `json:"account_sid"`
	IdempotencyToken string `json:"idempotency_token"`
	// Attempt is 1 for the first try, 2..4 for the retries.
	Attempt int    `json:"attempt"`
	Method  string `json:"method"`
	// URL is the URL requested and signed: without userinfo or fragment; for
	// GET it carries the callback parameters in its query.
	URL           string            `json:"url"`
	BasicAuthUser string            `json:"basic_auth_user,omitempty"`
	Params        map[string]string `json:"params"`
	Signature     string            `json:"signature"`
	// Status is the HTTP status of the answer, 0 when there was none.
	Status int `json:"status"`
	// Error is the transport error (or "dropped by fault"), if any.
	Error string `json:"error,omitempty"`
	// Fault is set when a callbacks fault decided the outcome.
	Fault        bool      `json:"fault,omitempty"`
	ResponseBody string    `json:"response_body,omitempty"`
	At           time.Time `json:"at"`
}

// Retryable reports whether Twilio would retry after this attempt (5xx or no answer).
func (d Delivery) Retryable() bool { return d.Status == 0 || d.Status >= 500 }

// AccountState is an account in State.
type AccountState struct {
	Account
	StatusHistory []StatusChange `json:"status_history"`
	Triggers      []Trigger      `json:"triggers"`
	// Usage is the account's own usage in the current periods:
	// period (daily, monthly, yearly, alltime) -> category -> usage.
	Usage map[string]map[string]Usage `json:"usage"`
}

// State is a snapshot of everything the simulator holds (GET /sim/state).
type State struct {
	Now        time.Time      `json:"now"`
	Parent     AccountState   `json:"parent"`
	Accounts   []AccountState `json:"accounts"` // subaccounts, in creation order
	Messages   []Message      `json:"messages"`
	Calls      []Call         `json:"calls"`
	Deliveries []Delivery     `json:"deliveries"`
	// Requests counts the Twilio API requests by operation (accounts.list, ...,
	// unknown), including the ones answered with an error or a fault.
	Requests map[string]int `json:"requests"`
	Faults   []Fault        `json:"faults"`
}
