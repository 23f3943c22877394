package breaker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

const parentSID = "AC00000000000000000000000000000000"

// fakeAPI is an in-memory twilioapi.API: accounts, their triggers, calls
// counted by operation, and errors to inject per operation.
type fakeAPI struct {
	mu       sync.Mutex
	accounts map[string]*twilioapi.Account
	order    []string
	triggers map[string][]twilioapi.Trigger // account -> triggers
	nextID   int
	calls    map[string]int
	seq      []string           // every write, in order: "create NAME", "delete NAME", "update NAME", "status SID STATUS"
	fail     map[string][]error // operation -> errors returned by the next calls, in order

	usage map[string]map[twilioapi.Period][]twilioapi.UsageRecord // account -> period -> records (fake_usage_test.go)

	// onStatusSent, when set, runs in SetAccountStatus after the request was
	// "written" (the caller's OnSent hook has run) and before it is applied
	// or refused: a test blocks there to look at the state mid-write.
	onStatusSent func(sid, status string)
	// statusDeadline is the deadline of the last SetAccountStatus call's
	// context (zero: none).
	statusDeadline time.Time
}

// notSent wraps an injected error that fails a request before it was
// written to the connection (a refused connection): the caller's OnSent
// hook is not told it was sent. Any other injected error is an answer
// Twilio sent back, to a request that was written.
type notSent struct{ error }

func (e notSent) Unwrap() error { return e.error }

// wroteRequest does what the HTTP transport does once it has written a
// request: it calls the WroteRequest hook of the context's client trace
// (how twilioapi.OnSent learns that a status write was sent).
func wroteRequest(ctx context.Context, err error) {
	if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.WroteRequest != nil {
		tr.WroteRequest(httptrace.WroteRequestInfo{Err: err})
	}
}

func newFakeAPI() *fakeAPI {
	return &fakeAPI{accounts: map[string]*twilioapi.Account{}, triggers: map[string][]twilioapi.Trigger{},
		calls: map[string]int{}, fail: map[string][]error{}}
}

func (f *fakeAPI) addAccount(name, status string) twilioapi.Account {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	a := twilioapi.Account{SID: fmt.Sprintf("AC%032x", f.nextID), FriendlyName: name, Status: status,
		OwnerSID: parentSID, AuthToken: fmt.Sprintf("token%027d", f.nextID)}
	f.accounts[a.SID] = &a
	f.order = append(f.order, a.SID)
	return a
}

func (f *fakeAPI) writeSeq() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seq...)
}

// addForeign puts a trigger this instance does not own on an account.
func (f *fakeAPI) addForeign(acct, name string) twilioapi.Trigger {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	t := twilioapi.Trigger{SID: fmt.Sprintf("UT%032x", f.nextID), AccountSID: acct, FriendlyName: name,
		CallbackURL: "https://other.example.com/hook", CallbackMethod: "POST", UsageCategory: "sms",
		TriggerBy: "count", Recurring: "daily", TriggerValue: decimal.MustParse("10")}
	f.triggers[acct] = append(f.triggers[acct], t)
	return t
}

func (f *fakeAPI) failNext(op string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[op] = append(f.fail[op], errs...)
}

func (f *fakeAPI) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *fakeAPI) writes() int {
	return f.count("triggers.create") + f.count("triggers.update") + f.count("triggers.delete") + f.count("accounts.update")
}

// call counts op and returns an injected error, if any. Callers hold f.mu.
func (f *fakeAPI) call(op string) error {
	f.calls[op]++
	if errs := f.fail[op]; len(errs) > 0 {
		f.fail[op] = errs[1:]
		return errs[0]
	}
	return nil
}

func (f *fakeAPI) trig(acct string) []twilioapi.Trigger {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]twilioapi.Trigger(nil), f.triggers[acct]...)
	sort.Slice(out, func(i, j int) bool { return out[i].FriendlyName < out[j].FriendlyName })
	return out
}

func (f *fakeAPI) ParentSID() string { return parentSID }

func (f *fakeAPI) ListSubaccounts(ctx context.Context) ([]twilioapi.Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("accounts.list"); err != nil {
		return nil, err
	}
	var out []twilioapi.Account
	for _, sid := range f.order {
		out = append(out, *f.accounts[sid])
	}
	return out, nil
}

func (f *fakeAPI) FetchAccount(ctx context.Context, sid string) (twilioapi.Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("accounts.fetch"); err != nil {
		return twilioapi.Account{}, err
	}
	a, ok := f.accounts[sid]
	if !ok {
		return twilioapi.Account{}, &twilioapi.Error{Operation: "accounts.fetch", Status: http.StatusNotFound, Code: twilioapi.CodeNotFound, Message: "not found"}
	}
	return *a, nil
}

func (f *fakeAPI) SetAccountStatus(ctx context.Context, sid, status string) (twilioapi.Account, error) {
	f.mu.Lock()
	err := f.call("accounts.update")
	hook := f.onStatusSent
	f.statusDeadline, _ = ctx.Deadline()
	f.mu.Unlock()
	var ns notSent
	if errors.As(err, &ns) {
		wroteRequest(ctx, err)
		return twilioapi.Account{}, errors.Join(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, ns.error)
	}
	wroteRequest(ctx, nil)
	if hook != nil {
		hook(sid, status)
	}
	if err != nil {
		return twilioapi.Account{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[sid]
	if !ok {
		return twilioapi.Account{}, &twilioapi.Error{Operation: "accounts.update", Status: http.StatusNotFound, Code: twilioapi.CodeNotFound, Message: "not found"}
	}
	a.Status = status
	f.seq = append(f.seq, "status "+sid+" "+status)
	return *a, nil
}

func (f *fakeAPI) ListTriggers(ctx context.Context, acct string) ([]twilioapi.Trigger, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("triggers.list"); err != nil {
		return nil, err
	}
	return append([]twilioapi.Trigger(nil), f.triggers[acct]...), nil
}

func (f *fakeAPI) CreateTrigger(ctx context.Context, acct string, s twilioapi.TriggerSpec) (twilioapi.Trigger, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("triggers.create"); err != nil {
		return twilioapi.Trigger{}, err
	}
	if len(f.triggers[acct]) >= 1000 {
		return twilioapi.Trigger{}, &twilioapi.Error{Operation: "triggers.create", Status: 400, Message: "too many triggers"}
	}
	f.nextID++
	v := decimal.MustParse(strings.TrimPrefix(s.TriggerValue, "+"))
	t := twilioapi.Trigger{SID: fmt.Sprintf("UT%032x", f.nextID), AccountSID: acct, FriendlyName: s.FriendlyName,
		CallbackURL: s.CallbackURL, CallbackMethod: s.CallbackMethod, UsageCategory: s.UsageCategory,
		TriggerBy: s.TriggerBy, Recurring: s.Recurring, TriggerValue: v}
	if t.Recurring == "alltime" {
		t.Recurring = "" // Twilio reports non-recurring triggers with no recurring
	}
	f.triggers[acct] = append(f.triggers[acct], t)
	f.seq = append(f.seq, "create "+t.FriendlyName)
	return t, nil
}

func (f *fakeAPI) UpdateTrigger(ctx context.Context, acct, sid string, u twilioapi.TriggerUpdate) (twilioapi.Trigger, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("triggers.update"); err != nil {
		return twilioapi.Trigger{}, err
	}
	for i, t := range f.triggers[acct] {
		if t.SID == sid {
			if u.CallbackURL != "" {
				t.CallbackURL = u.CallbackURL
			}
			if u.CallbackMethod != "" {
				t.CallbackMethod = u.CallbackMethod
			}
			if u.FriendlyName != "" {
				t.FriendlyName = u.FriendlyName
			}
			f.triggers[acct][i] = t
			f.seq = append(f.seq, "update "+t.FriendlyName)
			return t, nil
		}
	}
	return twilioapi.Trigger{}, &twilioapi.Error{Operation: "triggers.update", Status: 404, Code: twilioapi.CodeNotFound}
}

func (f *fakeAPI) DeleteTrigger(ctx context.Context, acct, sid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("triggers.delete"); err != nil {
		return err
	}
	ts := f.triggers[acct]
	for i, t := range ts {
		if t.SID == sid {
			f.triggers[acct] = append(ts[:i:i], ts[i+1:]...)
			f.seq = append(f.seq, "delete "+t.FriendlyName)
			return nil
		}
	}
	return nil
}

func (f *fakeAPI) SendMessage(ctx context.Context, m twilioapi.Message) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return "SM1", f.call("messages.create")
}

func (f *fakeAPI) ListInProgressCalls(ctx context.Context, acct string) ([]twilioapi.Call, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return nil, f.call("calls.list")
}

func (f *fakeAPI) EndCall(ctx context.Context, acct, sid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.call("calls.update")
}

var _ twilioapi.API = (*fakeAPI)(nil)
