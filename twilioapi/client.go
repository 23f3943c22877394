package twilioapi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twilio/twilio-go/client"
	openapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Operation names: the "operation" metric label, *Error.Operation, and the
// simulator's request counts.
const (
	OpAccountsList   = "accounts.list"
	OpAccountsFetch  = "accounts.fetch"
	OpAccountsUpdate = "accounts.update"
	OpTriggersList   = "triggers.list"
	OpTriggersCreate = "triggers.create"
	OpTriggersUpdate = "triggers.update"
	OpTriggersDelete = "triggers.delete"
	OpRecordsRead    = "records.read"
	OpMessagesCreate = "messages.create"
	OpCallsList      = "calls.list"
	OpCallsUpdate    = "calls.update"
)

// DefaultBaseURL is Twilio's REST API.
const DefaultBaseURL = "https://api.twilio.com"

// twilioBase is the base URL twilio-go hard-codes; rewriteTransport maps it
// to Options.BaseURL.
const twilioBase = "https://api.twilio.com"

// pageSize is the largest page Twilio serves.
const pageSize = 1000

// Options configure a Client. Zero values mean the defaults.
type Options struct {
	AccountSID string // the parent account's SID, ^AC[0-9a-fA-F]{32}$
	AuthToken  string // the parent's auth token (alphanumeric: twilio-go rejects anything else)
	BaseURL    string // default "https://api.twilio.com"; may carry a path prefix ("http://127.0.0.1:8080/twilio")

	MaxConcurrency int           // HTTP attempts in flight at once; default 10
	Timeout        time.Duration // per HTTP attempt; default 10s
	MaxAttempts    int           // attempts per request, first one included; default 5
	MinBackoff     time.Duration // first retry wait (before jitter); default 200ms
	MaxBackoff     time.Duration // cap on any retry wait, Retry-After included; default 10s

	Registerer prometheus.Registerer // where to register the metrics; nil: don't register
	Logger     *slog.Logger          // retries are logged at Debug; nil: discard
	Transport  http.RoundTripper     // base transport; default a clone of http.DefaultTransport
}

// String shows the options without the auth token.
func (o Options) String() string {
	return fmt.Sprintf("twilioapi.Options{AccountSID:%s AuthToken:<secret> BaseURL:%s MaxConcurrency:%d Timeout:%s MaxAttempts:%d MinBackoff:%s MaxBackoff:%s}",
		o.AccountSID, o.BaseURL, o.MaxConcurrency, o.Timeout, o.MaxAttempts, o.MinBackoff, o.MaxBackoff)
}

// GoString is String, so %#v does not print the token either.
func (o Options) GoString() string { return o.String() }

var (
	accountSIDRe = regexp.MustCompile(`^AC[0-9a-fA-F]{32}$`)
	triggerSIDRe = regexp.MustCompile(`^UT[0-9a-fA-F]{32}$`)
	callSIDRe    = regexp.MustCompile(`^CA[0-9a-fA-F]{32}$`)
	alnumRe      = regexp.MustCompile(`^[a-zA-Z0-9]+$`)
)

// Client implements API on twilio-go with per-call contexts, retries with
// backoff (go-retryablehttp), a concurrency limit and metrics. It is safe for
// concurrent use.
type Client struct {
	parent      string
	baseURL     string // Options.BaseURL without a trailing slash
	creds       *client.Credentials
	secret      *secrets // for redaction; a pointer so %+v of a Client shows no token
	maxAttempts int
	minBackoff  time.Duration
	maxBackoff  time.Duration
	policy      *retryPolicy
	attemptHTTP *http.Client // shared by all calls; its transport is the attemptTransport
	log         *slog.Logger
	metrics     *metrics
	now         func() time.Time // for the yearly StartDate and offset adoption; tests replace it
}

type secrets struct {
	token string
	basic string // base64 of "sid:token", as in the Authorization header
}

var _ API = (*Client)(nil)

// New validates opts and builds a Client.
func New(opts Options) (*Client, error) {
	if !accountSIDRe.MatchString(opts.AccountSID) {
		return nil, errors.New("twilioapi: AccountSID must match ^AC[0-9a-fA-F]{32}$")
	}
	if !alnumRe.MatchString(opts.AuthToken) {
		// Never echo the token.
		return nil, errors.New("twilioapi: AuthToken must be non-empty and alphanumeric")
	}
	if opts.BaseURL == "" {
		opts.BaseURL = DefaultBaseURL
	}
	base, err := url.Parse(opts.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" ||
		base.User != nil || base.RawQuery != "" || base.Fragment != "" || base.Opaque != "" {
		return nil, fmt.Errorf("twilioapi: BaseURL %q must be an absolute http(s) URL without credentials, query or fragment", redactURL(opts.BaseURL))
	}
	if opts.MaxConcurrency < 0 || opts.MaxAttempts < 0 || opts.Timeout < 0 || opts.MinBackoff < 0 || opts.MaxBackoff < 0 {
		return nil, errors.New("twilioapi: MaxConcurrency, MaxAttempts, Timeout, MinBackoff and MaxBackoff must not be negative")
	}
	if opts.MaxConcurrency == 0 {
		opts.MaxConcurrency = 10
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 5
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.MinBackoff > opts.MaxBackoff {
		return nil, fmt.Errorf("twilioapi: MinBackoff %s exceeds MaxBackoff %s", opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = opts.MaxConcurrency
		opts.Transport = t
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("twilioapi: registering metrics: %w", err)
	}

	c := &Client{
		parent:  opts.AccountSID,
		baseURL: strings.TrimRight(base.String(), "/"),
		creds:   client.NewCredentials(opts.AccountSID, opts.AuthToken),
		secret: &secrets{
			token: opts.AuthToken,
			basic: base64.StdEncoding.EncodeToString([]byte(opts.AccountSID + ":" + opts.AuthToken)),
		},
		maxAttempts: opts.MaxAttempts,
		minBackoff:  opts.MinBackoff,
		maxBackoff:  opts.MaxBackoff,
		policy:      newRetryPolicy(),
		log:         opts.Logger,
		metrics:     m,
		now:         time.Now,
	}
	c.attemptHTTP = &http.Client{
		CheckRedirect: noRedirect,
		Transport: &attemptTransport{
			sem:     make(chan struct{}, opts.MaxConcurrency),
			timeout: opts.Timeout,
			metrics: m,
			next:    newRewriteTransport(base, opts.Transport),
		},
	}
	return c, nil
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparsable>"
	}
	return u.Redacted()
}

// String identifies the client without its credentials.
func (c *Client) String() string { return "twilioapi.Client{" + c.parent + "}" }

// ParentSID is the parent account's SID.
func (c *Client) ParentSID() string { return c.parent }

// call is one API call: its state and a twilio-go client bound to its context.
type call struct {
	ctx context.Context // the caller's ctx carrying st
	st  *callState
	bc  *client.Client
	api *openapi.ApiService
}

// begin prepares a call of operation op. Building the per-call twilio-go
// client is cheap (a few small structs); it is what lets a context-less SDK
// honour ctx: bindContext puts ctx (with the callState) on every request, so
// cancellation ends an attempt in flight and any retry wait. maxAttempts
// bounds the attempts of each HTTP request of the call.
func (c *Client) begin(ctx context.Context, op string, idem idempotency, maxAttempts int) *call {
	st := &callState{op: op, idem: idem}
	cctx := withCall(ctx, st)
	rc := &retryablehttp.Client{
		HTTPClient:   c.attemptHTTP,
		Logger:       nil, // we log retries ourselves, without URLs
		RetryWaitMin: c.minBackoff,
		RetryWaitMax: c.maxBackoff,
		RetryMax:     max(maxAttempts-1, 0),
		CheckRetry:   c.policy.checkRetry,
		Backoff: func(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
			wait := c.policy.backoff(minWait, maxWait, attempt, resp)
			c.logRetry(cctx, st, attempt+1, wait)
			return wait
		},
		ErrorHandler: giveUp,
	}
	hc := &http.Client{
		CheckRedirect: noRedirect,
		Transport:     bindContext{ctx: cctx, next: &retryablehttp.RoundTripper{Client: rc}},
	}
	bc := &client.Client{Credentials: c.creds, HTTPClient: hc}
	bc.SetAccountSid(c.parent)
	api := openapi.NewApiServiceWithClient(bc)
	// rewriteTransport decides where requests go; TWILIO_EDGE/TWILIO_REGION
	// in the environment must not rename the host (it mangles IP hosts).
	rh := api.RequestHandler()
	rh.Edge, rh.Region = "", ""
	return &call{ctx: cctx, st: st, bc: bc, api: api}
}

func (c *Client) logRetry(ctx context.Context, st *callState, attempt int, wait time.Duration) {
	if !c.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	last := st.last()
	status := "error"
	if last.status != 0 {
		status = fmt.Sprint(last.status)
	}
	attrs := []slog.Attr{
		slog.String("operation", st.op),
		slog.Int("attempt", attempt),
		slog.String("status", status),
		slog.Duration("wait", wait),
	}
	if last.err != nil {
		attrs = append(attrs, slog.String("error", c.redact(last.err.Error())))
	}
	c.log.LogAttrs(ctx, slog.LevelDebug, "retrying Twilio request", attrs...)
}

// fail converts err from twilio-go into an *Error for this call.
func (k *call) fail(c *Client, err error) error {
	return c.toError(k.ctx, k.st, err)
}

// ---- accounts ----

// ListSubaccounts returns every subaccount of the parent (all pages of 1000,
// any status), never the parent itself.
func (c *Client) ListSubaccounts(ctx context.Context) ([]Account, error) {
	k := c.begin(ctx, OpAccountsList, idempotent, c.maxAttempts)
	// Streamed page by page, so only one page of twilio-go's account structs
	// (each with its subresource map) is alive at a time, not all of them:
	// with 10,000 subaccounts that is the reconcile's largest allocation.
	recs, errs := k.api.StreamAccount((&openapi.ListAccountParams{}).SetPageSize(pageSize))
	var out []Account
	for r := range recs {
		a := toAccount(&r)
		if a.SID == c.parent {
			continue
		}
		out = append(out, a)
	}
	if err := <-errs; err != nil {
		return nil, k.fail(c, err)
	}
	return out, nil
}

// FetchAccount reads one account.
func (c *Client) FetchAccount(ctx context.Context, sid string) (Account, error) {
	if !accountSIDRe.MatchString(sid) {
		return Account{}, invalidArg(OpAccountsFetch, "malformed account SID %q", sid)
	}
	k := c.begin(ctx, OpAccountsFetch, idempotent, c.maxAttempts)
	a, err := k.api.FetchAccount(sid)
	if err != nil {
		return Account{}, k.fail(c, err)
	}
	return toAccount(a), nil
}

// SetAccountStatus sets a subaccount's status to active or suspended. It
// refuses "closed" (irreversible: Twilio releases the numbers) and the
// parent itself. Like a create, it is retried blindly only when Twilio
// certainly did not process it (429, dial errors): after a 5xx or a
// transport error/timeout the write may have landed, and the error (which
// IsRetryable) goes back to the caller, which reads the account before
// writing again. So each status change is written once, and Twilio's status
// history shows exactly the changes usagebreaker meant.
func (c *Client) SetAccountStatus(ctx context.Context, sid, status string) (Account, error) {
	if !accountSIDRe.MatchString(sid) {
		return Account{}, invalidArg(OpAccountsUpdate, "malformed account SID %q", sid)
	}
	if sid == c.parent {
		return Account{}, invalidArg(OpAccountsUpdate, "refusing to change the parent account's status")
	}
	if status != StatusActive && status != StatusSuspended {
		return Account{}, invalidArg(OpAccountsUpdate, "account status must be %q or %q, not %q", StatusActive, StatusSuspended, status)
	}
	k := c.begin(ctx, OpAccountsUpdate, notIdempotent, c.maxAttempts)
	a, err := k.api.UpdateAccount(sid, (&openapi.UpdateAccountParams{}).SetStatus(status))
	if err != nil {
		return Account{}, k.fail(c, err)
	}
	return toAccount(a), nil
}

func toAccount(a *openapi.ApiV2010Account) Account {
	return Account{
		SID:          deref(a.Sid),
		FriendlyName: deref(a.FriendlyName),
		Status:       deref(a.Status),
		OwnerSID:     deref(a.OwnerAccountSid),
		AuthToken:    deref(a.AuthToken),
	}
}

// ---- triggers ----

// ListTriggers returns all of an account's usage triggers (all pages of
// 1000). Recurring is as Twilio reports it: "" (JSON null) for a
// non-recurring trigger, which our rules call "alltime" (see SameRecurring).
func (c *Client) ListTriggers(ctx context.Context, accountSID string) ([]Trigger, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return nil, invalidArg(OpTriggersList, "malformed account SID %q", accountSID)
	}
	k := c.begin(ctx, OpTriggersList, idempotent, c.maxAttempts)
	list, err := k.api.ListUsageTrigger((&openapi.ListUsageTriggerParams{}).
		SetPathAccountSid(accountSID).SetPageSize(pageSize))
	if err != nil {
		return nil, k.fail(c, err)
	}
	out := make([]Trigger, 0, len(list))
	for i := range list {
		t, err := toTrigger(&list[i])
		if err != nil {
			return nil, k.fail(c, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// CreateTrigger creates a usage trigger on accountSID.
//
// A create is not idempotent, so it is retried blindly only when Twilio
// certainly did not process it: on 429 (Twilio: "Requests that receive 429
// responses aren't processed") and on dial errors (nothing was sent). When a
// 5xx or a transport error/timeout leaves it unknown whether the trigger was
// created, CreateTrigger waits a backoff, lists the account's triggers and
// adopts one that matches spec (TriggerSpec.Matches: FriendlyName,
// CallbackUrl, method, category, trigger_by, recurring, and the value
// numerically; for a "+N" offset spec everything but the value, and only a
// trigger created in the last few minutes, since an older one cannot be the
// lost create). Only when none matches does it create again. So a lost answer
// never leaves a duplicate, except in the window where Twilio answers 5xx but
// commits the create after our listing; the reconciler's next pass sees such
// a duplicate (same FriendlyName) and deletes it. Attempts across the rounds
// share one MaxAttempts budget; the error of the last create is returned when
// it runs out.
func (c *Client) CreateTrigger(ctx context.Context, accountSID string, spec TriggerSpec) (Trigger, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return Trigger{}, invalidArg(OpTriggersCreate, "malformed account SID %q", accountSID)
	}
	if spec.CallbackURL == "" || spec.UsageCategory == "" || spec.TriggerValue == "" {
		return Trigger{}, invalidArg(OpTriggersCreate, "CallbackURL, UsageCategory and TriggerValue are required")
	}
	if _, err := decimal.Parse(spec.TriggerValue); err != nil {
		return Trigger{}, invalidArg(OpTriggersCreate, "TriggerValue: %v", err)
	}
	params := (&openapi.CreateUsageTriggerParams{}).
		SetPathAccountSid(accountSID).
		SetCallbackUrl(spec.CallbackURL).
		SetTriggerValue(spec.TriggerValue). // "+50" goes out as %2B50 (url.Values.Encode)
		SetUsageCategory(spec.UsageCategory)
	if spec.CallbackMethod != "" {
		params.SetCallbackMethod(spec.CallbackMethod)
	}
	if spec.FriendlyName != "" {
		params.SetFriendlyName(spec.FriendlyName)
	}
	if spec.Recurring != "" {
		params.SetRecurring(spec.Recurring)
	}
	if spec.TriggerBy != "" {
		params.SetTriggerBy(spec.TriggerBy)
	}

	start := c.now()
	budget := c.maxAttempts
	for round := 0; ; round++ {
		k := c.begin(ctx, OpTriggersCreate, notIdempotent, budget)
		ut, err := k.api.CreateUsageTrigger(params)
		if err == nil {
			t, cerr := toTrigger(ut)
			if cerr != nil {
				return Trigger{}, k.fail(c, cerr)
			}
			return t, nil
		}
		e := c.toError(k.ctx, k.st, err)
		last := k.st.last()
		budget -= last.attempts
		if !ambiguous(e) || ctx.Err() != nil {
			return Trigger{}, e
		}
		// The create may have happened. Give a slow create time to land,
		// then look for it.
		wait := c.policy.backoff(c.minBackoff, c.maxBackoff, c.maxAttempts-budget-1,
			&http.Response{StatusCode: last.status, Header: last.header})
		c.log.LogAttrs(ctx, slog.LevelDebug, "Twilio create failed ambiguously; looking for the trigger",
			slog.String("operation", OpTriggersCreate), slog.Int("attempt", c.maxAttempts-budget),
			slog.Int("status", e.Status), slog.Duration("wait", wait))
		if sleep(ctx, wait) != nil {
			return Trigger{}, e
		}
		existing, lerr := c.ListTriggers(ctx, accountSID)
		if lerr != nil {
			return Trigger{}, e // still ambiguous; the caller's next reconcile lists again
		}
		if t, ok := adoptable(existing, spec, start.Add(-offsetAdoptWindow)); ok {
			c.log.LogAttrs(ctx, slog.LevelDebug, "adopted the trigger an ambiguous create made",
				slog.String("operation", OpTriggersCreate), slog.String("trigger", t.SID))
			return t, nil
		}
		if budget <= 0 {
			return Trigger{}, e
		}
	}
}

// offsetAdoptWindow: a "+N" trigger created this long before CreateTrigger
// started is not taken for the result of a lost create (clock skew allowance).
const offsetAdoptWindow = 10 * time.Minute

// ambiguous reports a failure after which a create may or may not have
// happened: a 5xx, or a transport error/timeout (Status 0).
func ambiguous(e *Error) bool {
	return e.Status == 0 || e.Status >= 500
}

// adoptable picks, among triggers matching spec, the newest. For an offset
// spec the value is not compared, so only triggers created after notBefore
// qualify.
func adoptable(ts []Trigger, spec TriggerSpec, notBefore time.Time) (Trigger, bool) {
	offset := strings.HasPrefix(spec.TriggerValue, "+")
	var best Trigger
	var bestAt time.Time
	found := false
	for _, t := range ts {
		if !spec.Matches(t) {
			continue
		}
		at, err := time.Parse(time.RFC1123Z, t.DateCreated)
		if offset && (err != nil || at.Before(notBefore)) {
			continue
		}
		if !found || (err == nil && !at.Before(bestAt)) {
			best, bestAt, found = t, at, true
		}
	}
	return best, found
}

// Matches reports whether trigger t is what s asks for: same FriendlyName,
// CallbackURL, CallbackMethod (default POST, case-insensitive),
// UsageCategory, TriggerBy (default usage), Recurring (SameRecurring), and
// the same TriggerValue numerically ("50" matches "50.000000"). For an offset
// spec ("+N") the value cannot be known in advance and is not compared.
func (s TriggerSpec) Matches(t Trigger) bool {
	if t.FriendlyName != s.FriendlyName || t.CallbackURL != s.CallbackURL || t.UsageCategory != s.UsageCategory {
		return false
	}
	if !strings.EqualFold(orDefault(t.CallbackMethod, http.MethodPost), orDefault(s.CallbackMethod, http.MethodPost)) {
		return false
	}
	if orDefault(t.TriggerBy, "usage") != orDefault(s.TriggerBy, "usage") {
		return false
	}
	if !SameRecurring(t.Recurring, s.Recurring) {
		return false
	}
	if strings.HasPrefix(s.TriggerValue, "+") {
		return true
	}
	v, err := decimal.Parse(s.TriggerValue)
	return err == nil && v.Equal(t.TriggerValue)
}

// SameRecurring compares recurring values the way Twilio means them: ""
// (what Twilio reports for a non-recurring trigger) equals "alltime".
func SameRecurring(a, b string) bool {
	norm := func(s string) string {
		if s == "" {
			return "alltime"
		}
		return strings.ToLower(s)
	}
	return norm(a) == norm(b)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// UpdateTrigger changes a trigger's callback URL, method or friendly name
// (the only fields Twilio lets an update change). It is idempotent and
// retried on 5xx and transport errors.
func (c *Client) UpdateTrigger(ctx context.Context, accountSID, triggerSID string, upd TriggerUpdate) (Trigger, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return Trigger{}, invalidArg(OpTriggersUpdate, "malformed account SID %q", accountSID)
	}
	if !triggerSIDRe.MatchString(triggerSID) {
		return Trigger{}, invalidArg(OpTriggersUpdate, "malformed trigger SID %q", triggerSID)
	}
	params := (&openapi.UpdateUsageTriggerParams{}).SetPathAccountSid(accountSID)
	if upd.FriendlyName != "" {
		params.SetFriendlyName(upd.FriendlyName)
	}
	if upd.CallbackURL != "" {
		params.SetCallbackUrl(upd.CallbackURL)
	}
	if upd.CallbackMethod != "" {
		params.SetCallbackMethod(upd.CallbackMethod)
	}
	k := c.begin(ctx, OpTriggersUpdate, idempotent, c.maxAttempts)
	ut, err := k.api.UpdateUsageTrigger(triggerSID, params)
	if err != nil {
		return Trigger{}, k.fail(c, err)
	}
	t, err := toTrigger(ut)
	if err != nil {
		return Trigger{}, k.fail(c, err)
	}
	return t, nil
}

// DeleteTrigger deletes a trigger. A 404 is success: it is already gone
// (possibly deleted by an earlier attempt whose answer was lost).
func (c *Client) DeleteTrigger(ctx context.Context, accountSID, triggerSID string) error {
	if !accountSIDRe.MatchString(accountSID) {
		return invalidArg(OpTriggersDelete, "malformed account SID %q", accountSID)
	}
	if !triggerSIDRe.MatchString(triggerSID) {
		return invalidArg(OpTriggersDelete, "malformed trigger SID %q", triggerSID)
	}
	k := c.begin(ctx, OpTriggersDelete, idempotent, c.maxAttempts)
	err := k.api.DeleteUsageTrigger(triggerSID, (&openapi.DeleteUsageTriggerParams{}).SetPathAccountSid(accountSID))
	if err != nil {
		if e := k.fail(c, err); !IsNotFound(e) {
			return e
		}
	}
	return nil
}

func toTrigger(u *openapi.ApiV2010UsageTrigger) (Trigger, error) {
	t := Trigger{
		SID:            deref(u.Sid),
		AccountSID:     deref(u.AccountSid),
		FriendlyName:   deref(u.FriendlyName),
		CallbackURL:    deref(u.CallbackUrl),
		CallbackMethod: deref(u.CallbackMethod),
		UsageCategory:  deref(u.UsageCategory),
		TriggerBy:      deref(u.TriggerBy),
		Recurring:      deref(u.Recurring),
		DateFired:      deref(u.DateFired),
		DateCreated:    deref(u.DateCreated),
	}
	var err error
	if t.TriggerValue, err = parseDecimal(deref(u.TriggerValue)); err != nil {
		return Trigger{}, fmt.Errorf("trigger %s: trigger_value: %w", t.SID, err)
	}
	if t.CurrentValue, err = parseDecimal(deref(u.CurrentValue)); err != nil {
		return Trigger{}, fmt.Errorf("trigger %s: current_value: %w", t.SID, err)
	}
	return t, nil
}

// parseDecimal reads a Twilio decimal string; "" is zero.
func parseDecimal(s string) (decimal.Decimal, error) {
	if s == "" {
		return decimal.Zero, nil
	}
	return decimal.Parse(s)
}

// ---- messages and calls ----

// SendMessage sends an SMS from the parent account and returns its SID.
//
// A message create is not idempotent and a duplicate alert is not harmless,
// so it is retried only when Twilio certainly did not process it (429, dial
// errors). After a 5xx or a transport error/timeout the message may or may
// not have been sent: SendMessage does NOT retry, it returns the error
// (IsRetryable reports true) and the caller decides whether to risk a
// duplicate.
func (c *Client) SendMessage(ctx context.Context, msg Message) (string, error) {
	if msg.To == "" || msg.Body == "" || (msg.From == "" && msg.MessagingServiceSID == "") {
		return "", invalidArg(OpMessagesCreate, "a message needs To, Body, and From or MessagingServiceSID")
	}
	params := (&openapi.CreateMessageParams{}).
		SetPathAccountSid(c.parent).
		SetTo(msg.To).
		SetBody(msg.Body)
	if msg.MessagingServiceSID != "" {
		params.SetMessagingServiceSid(msg.MessagingServiceSID)
	}
	if msg.From != "" {
		params.SetFrom(msg.From)
	}
	k := c.begin(ctx, OpMessagesCreate, notIdempotent, c.maxAttempts)
	m, err := k.api.CreateMessage(params)
	if err != nil {
		return "", k.fail(c, err)
	}
	return deref(m.Sid), nil
}

// ListInProgressCalls lists a subaccount's in-progress calls (all pages).
func (c *Client) ListInProgressCalls(ctx context.Context, accountSID string) ([]Call, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return nil, invalidArg(OpCallsList, "malformed account SID %q", accountSID)
	}
	k := c.begin(ctx, OpCallsList, idempotent, c.maxAttempts)
	list, err := k.api.ListCall((&openapi.ListCallParams{}).
		SetPathAccountSid(accountSID).SetStatus("in-progress").SetPageSize(pageSize))
	if err != nil {
		return nil, k.fail(c, err)
	}
	out := make([]Call, 0, len(list))
	for i := range list {
		out = append(out, Call{
			SID:    deref(list[i].Sid),
			Status: deref(list[i].Status),
			From:   deref(list[i].From),
			To:     deref(list[i].To),
		})
	}
	return out, nil
}

// EndCall sets a call's status to completed. It is idempotent and retried on
// 5xx and transport errors.
func (c *Client) EndCall(ctx context.Context, accountSID, callSID string) error {
	if !accountSIDRe.MatchString(accountSID) {
		return invalidArg(OpCallsUpdate, "malformed account SID %q", accountSID)
	}
	if !callSIDRe.MatchString(callSID) {
		return invalidArg(OpCallsUpdate, "malformed call SID %q", callSID)
	}
	k := c.begin(ctx, OpCallsUpdate, idempotent, c.maxAttempts)
	_, err := k.api.UpdateCall(callSID, (&openapi.UpdateCallParams{}).
		SetPathAccountSid(accountSID).SetStatus("completed"))
	if err != nil {
		return k.fail(c, err)
	}
	return nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
