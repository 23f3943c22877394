package twiliosim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

const apiVersion = "2010-04-01"

// rfc2822 formats a time as Twilio's date_* fields: "Mon, 21 Apr 2014 09:14:35 +0000".
func rfc2822(t time.Time) string { return t.UTC().Format(time.RFC1123Z) }

func strp(s string) *string { return &s }

// apiError is a Twilio error body.
type apiError struct {
	status int
	code   int
	msg    string
}

type errorJSON struct {
	Code     int    `json:"code"`
	Message  string `json:"message"`
	MoreInfo string `json:"more_info"`
	Status   int    `json:"status"`
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="Twilio API"`)
	}
	writeJSON(w, e.status, errorJSON{Code: e.code, Message: e.msg,
		MoreInfo: "https://www.twilio.com/docs/errors/" + strconv.Itoa(e.code), Status: e.status})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Twilio error codes used by the simulator. Documented ones say where from;
// the others are marked as choices.
var (
	// 20003 "Authenticate" (HTTP 401): wrong/missing credentials, subaccount
	// credentials used on another account, suspended or closed account's
	// credentials (twilio.com/docs/errors/20003 lists all of these causes).
	errAuthenticate = &apiError{http.StatusUnauthorized, 20003, "Authenticate"}
)

// 20404 (HTTP 404), with Twilio's message shape.
func errNotFound(path string) *apiError {
	return &apiError{http.StatusNotFound, 20404, "The requested resource " + path + " was not found"}
}

// errParam is a bad or missing parameter. Twilio's generic code for this in the
// 2010 API is not documented; 70002 "Bad request" (docs: parameters "not in
// the expected format ... does not match the API's expected schema") is used.
func errParam(msg string) *apiError { return &apiError{http.StatusBadRequest, 70002, msg} }

// 20004 Method not allowed (HTTP 405).
func errMethod(method string) *apiError {
	return &apiError{http.StatusMethodNotAllowed, 20004, "Method not allowed: " + method}
}

// ---- accounts ----

type accountJSON struct {
	AuthToken       string            `json:"auth_token"`
	DateCreated     string            `json:"date_created"`
	DateUpdated     string            `json:"date_updated"`
	FriendlyName    string            `json:"friendly_name"`
	OwnerAccountSid string            `json:"owner_account_sid"`
	Sid             string            `json:"sid"`
	Status          string            `json:"status"`
	SubresourceUris map[string]string `json:"subresource_uris"`
	Type            string            `json:"type"`
	URI             string            `json:"uri"`
}

var accountSubresources = []struct{ key, path string }{
	{"available_phone_numbers", "AvailablePhoneNumbers"}, {"calls", "Calls"}, {"conferences", "Conferences"},
	{"incoming_phone_numbers", "IncomingPhoneNumbers"}, {"notifications", "Notifications"},
	{"outgoing_caller_ids", "OutgoingCallerIds"}, {"recordings", "Recordings"},
	{"transcriptions", "Transcriptions"}, {"addresses", "Addresses"}, {"signing_keys", "SigningKeys"},
	{"connect_apps", "ConnectApps"}, {"sip", "SIP"}, {"authorized_connect_apps", "AuthorizedConnectApps"},
	{"usage", "Usage"}, {"keys", "Keys"}, {"applications", "Applications"}, {"short_codes", "SMS/ShortCodes"},
	{"queues", "Queues"}, {"messages", "Messages"}, {"balance", "Balance"},
}

func renderAccount(a *account) accountJSON {
	base := "/2010-04-01/Accounts/" + a.SID
	sub := make(map[string]string, len(accountSubresources))
	for _, r := range accountSubresources {
		sub[r.key] = base + "/" + r.path + ".json"
	}
	return accountJSON{
		AuthToken:       a.AuthToken,
		DateCreated:     rfc2822(a.DateCreated),
		DateUpdated:     rfc2822(a.updated),
		FriendlyName:    a.FriendlyName,
		OwnerAccountSid: a.OwnerAccountSID,
		Sid:             a.SID,
		Status:          a.Status,
		SubresourceUris: sub,
		Type:            "Full",
		URI:             base + ".json",
	}
}

// ---- triggers ----

type triggerJSON struct {
	AccountSid     string  `json:"account_sid"`
	APIVersion     string  `json:"api_version"`
	CallbackMethod string  `json:"callback_method"`
	CallbackURL    string  `json:"callback_url"`
	CurrentValue   string  `json:"current_value"`
	DateCreated    string  `json:"date_created"`
	DateFired      *string `json:"date_fired"`
	DateUpdated    string  `json:"date_updated"`
	FriendlyName   string  `json:"friendly_name"`
	Recurring      *string `json:"recurring"`
	Sid            string  `json:"sid"`
	TriggerBy      string  `json:"trigger_by"`
	TriggerValue   string  `json:"trigger_value"`
	URI            string  `json:"uri"`
	UsageCategory  string  `json:"usage_category"`
	UsageRecordURI string  `json:"usage_record_uri"`
}

// twilioDecimal writes a trigger value as Twilio does ("1000.000000"): six
// fractional digits, or every digit when there are more.
func twilioDecimal(d decimal.Decimal) string {
	s := d.String()
	if i := strings.IndexByte(s, '.'); i >= 0 && len(s)-i-1 > 6 {
		return s
	}
	return d.StringFixed(6)
}

func (s *Sim) renderTriggerLocked(t *trigger, now time.Time) triggerJSON {
	j := triggerJSON{
		AccountSid:     t.acct,
		APIVersion:     apiVersion,
		CallbackMethod: t.method,
		CallbackURL:    t.url,
		CurrentValue:   s.currentValueLocked(t, now).String(),
		DateCreated:    rfc2822(t.created),
		DateUpdated:    rfc2822(t.updated),
		FriendlyName:   t.name,
		Sid:            t.sid,
		TriggerBy:      t.by,
		TriggerValue:   twilioDecimal(t.value),
		URI:            "/2010-04-01/Accounts/" + t.acct + "/Usage/Triggers/" + t.sid + ".json",
		UsageCategory:  t.category,
		UsageRecordURI: usageRecordURI(t.acct, t.recur, t.category),
	}
	if t.fired != nil {
		j.DateFired = strp(rfc2822(*t.fired))
	}
	// A non-recurring trigger shows "recurring": null in Twilio's examples.
	if t.recur != "" {
		j.Recurring = strp(t.recur)
	}
	return j
}

func (s *Sim) exportTriggerLocked(t *trigger, now time.Time) Trigger {
	out := Trigger{
		SID: t.sid, AccountSID: t.acct, FriendlyName: t.name, CallbackURL: t.url,
		CallbackMethod: t.method, UsageCategory: t.category, TriggerBy: t.by, Recurring: t.recur,
		TriggerValue: t.value, CurrentValue: s.currentValueLocked(t, now),
		DateCreated: t.created, DateUpdated: t.updated,
	}
	if t.fired != nil {
		f := *t.fired
		out.DateFired = &f
	}
	return out
}

// ---- usage records ----

type recordJSON struct {
	AccountSid      string            `json:"account_sid"`
	APIVersion      string            `json:"api_version"`
	AsOf            string            `json:"as_of"`
	Category        string            `json:"category"`
	Count           string            `json:"count"`
	CountUnit       string            `json:"count_unit"`
	Description     string            `json:"description"`
	EndDate         string            `json:"end_date"`
	Price           json.Number       `json:"price"` // the spec declares a number; written exactly
	PriceUnit       string            `json:"price_unit"`
	StartDate       string            `json:"start_date"`
	SubresourceUris map[string]string `json:"subresource_uris"`
	URI             string            `json:"uri"`
	Usage           string            `json:"usage"`
	UsageUnit       string            `json:"usage_unit"`
}

var categoryInfo = map[string][3]string{ // count unit, usage unit, description
	"calls":                    {"calls", "minutes", "Voice Minutes"},
	"calls-inbound":            {"calls", "minutes", "Inbound Voice Minutes"},
	"calls-outbound":           {"calls", "minutes", "Outbound Voice Minutes"},
	"sms":                      {"messages", "messages", "SMS Messages"},
	"sms-inbound":              {"messages", "messages", "Inbound SMS Messages"},
	"sms-outbound":             {"messages", "messages", "Outbound SMS Messages"},
	"mms":                      {"messages", "messages", "MMS Messages"},
	"phonenumbers":             {"phonenumbers", "phonenumbers", "Phone Numbers"},
	"recordings":               {"recordings", "minutes", "Recordings"},
	CategoryTotalPrice:         {"", "usd", "Total Price"},
	"transcriptions":           {"transcriptions", "minutes", "Voice Minutes"},
	"lookups":                  {"lookups", "lookups", "Lookups"},
	"recordingstorage":         {"minutes", "minutes", "Recording Storage"},
	"calleridlookups":          {"lookups", "lookups", "Caller ID Lookups"},
	"sms-messages-carrierfees": {"messages", "messages", "SMS Carrier Fees"},
}

var recordSubresources = []struct{ key, path string }{
	{"all_time", "AllTime"}, {"today", "Today"}, {"yesterday", "Yesterday"}, {"this_month", "ThisMonth"},
	{"last_month", "LastMonth"}, {"daily", "Daily"}, {"monthly", "Monthly"}, {"yearly", "Yearly"},
}

func renderRecord(acct, kind, cat string, u Usage, start, end string, now time.Time) recordJSON {
	info := categoryInfo[cat]
	base := "/2010-04-01/Accounts/" + acct + "/Usage/Records"
	q := "?Category=" + url.QueryEscape(cat)
	sub := make(map[string]string, len(recordSubresources))
	for _, r := range recordSubresources {
		sub[r.key] = base + "/" + r.path + ".json" + q
	}
	path := base + ".json"
	if kind != "" {
		path = base + "/" + kind + ".json"
	}
	return recordJSON{
		AccountSid:      acct,
		APIVersion:      apiVersion,
		AsOf:            now.Format("2006-01-02T15:04:05") + "+00:00",
		Category:        cat,
		Count:           u.Count.String(),
		CountUnit:       info[0],
		Description:     info[2],
		EndDate:         end,
		Price:           json.Number(u.Price.String()),
		PriceUnit:       "usd",
		StartDate:       start,
		SubresourceUris: sub,
		URI:             path + q + "&StartDate=" + start + "&EndDate=" + end,
		Usage:           u.Usage.String(),
		UsageUnit:       info[1],
	}
}

// ---- messages ----

type messageJSON struct {
	AccountSid          string            `json:"account_sid"`
	APIVersion          string            `json:"api_version"`
	Body                string            `json:"body"`
	DateCreated         string            `json:"date_created"`
	DateSent            *string           `json:"date_sent"`
	DateUpdated         string            `json:"date_updated"`
	Direction           string            `json:"direction"`
	ErrorCode           *int              `json:"error_code"`
	ErrorMessage        *string           `json:"error_message"`
	From                *string           `json:"from"`
	MessagingServiceSid *string           `json:"messaging_service_sid"`
	NumMedia            string            `json:"num_media"`
	NumSegments         string            `json:"num_segments"`
	Price               *string           `json:"price"`
	PriceUnit           string            `json:"price_unit"`
	Sid                 string            `json:"sid"`
	Status              string            `json:"status"`
	SubresourceUris     map[string]string `json:"subresource_uris"`
	To                  string            `json:"to"`
	URI                 string            `json:"uri"`
}

func renderMessage(m Message) messageJSON {
	uri := "/2010-04-01/Accounts/" + m.AccountSID + "/Messages/" + m.SID
	j := messageJSON{
		AccountSid: m.AccountSID, APIVersion: apiVersion, Body: m.Body,
		DateCreated: rfc2822(m.DateCreated), DateUpdated: rfc2822(m.DateCreated),
		Direction: "outbound-api", NumMedia: "0", NumSegments: strconv.Itoa(segments(m.Body)),
		PriceUnit: "USD", Sid: m.SID, Status: m.Status,
		SubresourceUris: map[string]string{"media": uri + "/Media.json"},
		To:              m.To, URI: uri + ".json",
	}
	if m.From != "" {
		j.From = strp(m.From)
	}
	if m.MessagingServiceSID != "" {
		j.MessagingServiceSid = strp(m.MessagingServiceSID)
	}
	return j
}

func segments(body string) int {
	n := len([]rune(body))
	if n <= 160 {
		return 1
	}
	return (n + 152) / 153
}

// ---- calls ----

type callJSON struct {
	AccountSid      string            `json:"account_sid"`
	AnsweredBy      *string           `json:"answered_by"`
	APIVersion      string            `json:"api_version"`
	CallerName      *string           `json:"caller_name"`
	DateCreated     string            `json:"date_created"`
	DateUpdated     string            `json:"date_updated"`
	Direction       string            `json:"direction"`
	Duration        *string           `json:"duration"`
	EndTime         *string           `json:"end_time"`
	ForwardedFrom   *string           `json:"forwarded_from"`
	From            string            `json:"from"`
	FromFormatted   string            `json:"from_formatted"`
	GroupSid        *string           `json:"group_sid"`
	ParentCallSid   *string           `json:"parent_call_sid"`
	PhoneNumberSid  *string           `json:"phone_number_sid"`
	Price           *string           `json:"price"`
	PriceUnit       string            `json:"price_unit"`
	QueueTime       string            `json:"queue_time"`
	Sid             string            `json:"sid"`
	StartTime       *string           `json:"start_time"`
	Status          string            `json:"status"`
	SubresourceUris map[string]string `json:"subresource_uris"`
	To              string            `json:"to"`
	ToFormatted     string            `json:"to_formatted"`
	TrunkSid        *string           `json:"trunk_sid"`
	URI             string            `json:"uri"`
}

func renderCall(c Call) callJSON {
	uri := "/2010-04-01/Accounts/" + c.AccountSID + "/Calls/" + c.SID
	j := callJSON{
		AccountSid: c.AccountSID, APIVersion: apiVersion,
		DateCreated: rfc2822(c.DateCreated), DateUpdated: rfc2822(c.DateUpdated),
		Direction: "outbound-api", From: c.From, FromFormatted: c.From, PriceUnit: "USD",
		QueueTime: "0", Sid: c.SID, StartTime: strp(rfc2822(c.StartTime)), Status: c.Status,
		SubresourceUris: map[string]string{
			"notifications": uri + "/Notifications.json",
			"recordings":    uri + "/Recordings.json",
			"events":        uri + "/Events.json",
		},
		To: c.To, ToFormatted: c.To, URI: uri + ".json",
	}
	if c.EndTime != nil {
		j.EndTime = strp(rfc2822(*c.EndTime))
		j.Duration = strp(strconv.Itoa(int(c.EndTime.Sub(c.StartTime).Seconds())))
	}
	return j
}
