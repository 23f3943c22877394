package twiliosim

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// serveControl serves the unauthenticated /sim/ endpoints.
func (s *Sim) serveControl(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		writeError(w, errParam("Unable to parse the request: "+err.Error()))
		return
	}
	type endpoint struct{ method, path string }
	switch (endpoint{r.Method, r.URL.Path}) {
	case endpoint{http.MethodPost, "/sim/accounts"}:
		s.simCreateAccount(w, r)
	case endpoint{http.MethodPost, "/sim/usage"}:
		s.simUsage(w, r)
	case endpoint{http.MethodPost, "/sim/history"}:
		s.simHistory(w, r)
	case endpoint{http.MethodPost, "/sim/clock"}:
		s.simClock(w, r)
	case endpoint{http.MethodGet, "/sim/clock"}:
		writeJSON(w, http.StatusOK, map[string]any{"now": s.Now()})
	case endpoint{http.MethodPost, "/sim/faults"}:
		s.simAddFault(w, r)
	case endpoint{http.MethodGet, "/sim/faults"}:
		writeJSON(w, http.StatusOK, map[string]any{"faults": s.State().Faults})
	case endpoint{http.MethodDelete, "/sim/faults"}:
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	case endpoint{http.MethodPost, "/sim/calls"}:
		s.simStartCall(w, r)
	case endpoint{http.MethodGet, "/sim/state"}:
		writeJSON(w, http.StatusOK, s.State())
	default:
		for _, p := range []string{"/sim/accounts", "/sim/usage", "/sim/history", "/sim/clock", "/sim/faults", "/sim/calls", "/sim/state"} {
			if r.URL.Path == p {
				writeError(w, errMethod(r.Method))
				return
			}
		}
		writeError(w, errNotFound(r.URL.Path))
	}
}

func (s *Sim) simCreateAccount(w http.ResponseWriter, r *http.Request) {
	name := r.Form.Get("FriendlyName")
	if len(name) > 64 {
		writeError(w, errParam("FriendlyName must be at most 64 characters"))
		return
	}
	s.mu.Lock()
	j := renderAccount(s.createSubLocked(name))
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, j)
}

// usageResponse is the answer of POST /sim/usage.
type usageResponse struct {
	AccountSID    string     `json:"account_sid"`
	UsageCategory string     `json:"usage_category"`
	Added         Usage      `json:"added"`
	Firings       []Firing   `json:"firings"`
	Deliveries    []Delivery `json:"deliveries,omitempty"` // with Wait=true
}

func (s *Sim) simUsage(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	in := UsageInput{AccountSID: f.Get("AccountSid"), Category: f.Get("UsageCategory")}
	if in.AccountSID == "" || in.Category == "" {
		writeError(w, errParam("AccountSid and UsageCategory are required"))
		return
	}
	for _, fld := range []struct {
		name string
		dst  *decimal.Decimal
	}{{"Count", &in.Count}, {"Usage", &in.Usage}, {"Price", &in.Price}} {
		if v := f.Get(fld.name); v != "" {
			d, err := decimal.Parse(v)
			if err != nil || d.Sign() < 0 {
				writeError(w, errParam(fld.name+" must be a non-negative decimal"))
				return
			}
			*fld.dst = d
		}
	}
	if f.Get("Usage") == "" && in.Category != CategoryTotalPrice {
		// Twilio reports a count category's usage in the same unit (one
		// per message, per call): a rule on the default trigger_by (usage)
		// trips on what a test adds as Count alone.
		in.Usage = in.Count
	}
	wait := false
	if v := f.Get("Wait"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, errParam("Wait must be true or false"))
			return
		}
		wait = b
	}
	if _, ok := s.Account(in.AccountSID); !ok {
		writeError(w, errNotFound("/2010-04-01/Accounts/"+in.AccountSID+".json"))
		return
	}
	firings, err := s.AddUsage(in)
	var na *NotActiveError
	switch {
	case errors.As(err, &na):
		// Documented: 10001 "Account is not active" (a suspended account cannot use Twilio).
		writeError(w, &apiError{http.StatusConflict, 10001, "Account is not active: " + na.SID + " is " + na.Status})
		return
	case err != nil:
		writeError(w, errParam(err.Error()))
		return
	}
	resp := usageResponse{AccountSID: in.AccountSID, UsageCategory: in.Category,
		Added: Usage{Count: in.Count, Usage: in.Usage, Price: in.Price}, Firings: firings}
	if resp.Firings == nil {
		resp.Firings = []Firing{}
	}
	if wait {
		d, err := s.Wait(r.Context(), firings...)
		if err != nil {
			return // the client went away
		}
		resp.Deliveries = d
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Sim) simClock(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.Form.Get("Advance"))
	if err != nil || d < 0 {
		writeError(w, errParam("Advance must be a non-negative Go duration such as 24h"))
		return
	}
	firings := s.Advance(d)
	if firings == nil {
		firings = []Firing{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"now": s.Now(), "firings": firings})
}

func (s *Sim) simAddFault(w http.ResponseWriter, r *http.Request) {
	q := r.Form
	f := Fault{Target: q.Get("Target"), Path: q.Get("Path"), Method: q.Get("Method"), Message: q.Get("Message")}
	ints := []struct {
		name string
		dst  *int
	}{{"Status", &f.Status}, {"Times", &f.Times}, {"RetryAfter", &f.RetryAfter}, {"Code", &f.Code}}
	for _, fld := range ints {
		if v := q.Get(fld.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				writeError(w, errParam(fld.name+" must be an integer"))
				return
			}
			*fld.dst = n
		}
	}
	if v := q.Get("DelayMs"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, errParam("DelayMs must be an integer"))
			return
		}
		f.Delay = time.Duration(n) * time.Millisecond
	}
	if v := q.Get("Probability"); v != "" {
		p, err := strconv.ParseFloat(v, 64)
		if err != nil {
			writeError(w, errParam("Probability must be a number within 0..1"))
			return
		}
		if p == 0 {
			p = -1 // an explicit 0 is not "default 1": reject below
		}
		f.Probability = p
	}
	switch b := strings.ToLower(q.Get("Body")); b {
	case "", "json":
	case "html":
		f.HTML = true
	default:
		writeError(w, errParam("Body must be json or html"))
		return
	}
	for _, fld := range []struct {
		name string
		dst  *bool
	}{{"After", &f.After}, {"Drop", &f.Drop}} {
		if v := q.Get(fld.name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeError(w, errParam(fld.name+" must be true or false"))
				return
			}
			*fld.dst = b
		}
	}
	out, err := s.AddFault(f)
	if err != nil {
		writeError(w, errParam(err.Error()))
		return
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Sim) simStartCall(w http.ResponseWriter, r *http.Request) {
	sid := r.Form.Get("AccountSid")
	s.mu.Lock()
	a, ok := s.accounts[sid]
	if !ok {
		s.mu.Unlock()
		writeError(w, errNotFound("/2010-04-01/Accounts/"+sid+".json"))
		return
	}
	if a.Status != StatusActive {
		s.mu.Unlock()
		writeError(w, &apiError{http.StatusConflict, 10001, "Account is not active: " + a.SID + " is " + a.Status})
		return
	}
	c := s.startCallLocked(a, r.Form.Get("From"), r.Form.Get("To"))
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, renderCall(c))
}

// State returns a snapshot of everything the simulator holds.
func (s *Sim) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	st := State{
		Now:        now,
		Parent:     s.accountStateLocked(s.parent, now),
		Accounts:   make([]AccountState, 0, len(s.order)-1),
		Messages:   append([]Message{}, s.messages...),
		Calls:      make([]Call, 0, len(s.callOrder)),
		Deliveries: append([]Delivery{}, s.deliveries...),
		Requests:   make(map[string]int, len(s.requests)),
		Faults:     make([]Fault, 0, len(s.faults)),
	}
	for _, a := range s.order[1:] {
		st.Accounts = append(st.Accounts, s.accountStateLocked(a, now))
	}
	for _, c := range s.callOrder {
		st.Calls = append(st.Calls, c.Call)
	}
	for k, v := range s.requests {
		st.Requests[k] = v
	}
	for _, f := range s.faults {
		st.Faults = append(st.Faults, *f)
	}
	return st
}

func (s *Sim) accountStateLocked(a *account, now time.Time) AccountState {
	as := AccountState{
		Account:       a.Account,
		StatusHistory: append([]StatusChange{}, a.history...),
		Triggers:      make([]Trigger, 0, len(a.triggers)),
		Usage:         currentUsageLocked(a, now),
	}
	for _, t := range a.triggers {
		as.Triggers = append(as.Triggers, s.exportTriggerLocked(t, now))
	}
	return as
}

// Deliveries returns every callback delivery attempt so far.
func (s *Sim) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Delivery{}, s.deliveries...)
}

// Requests returns the count of API requests by operation.
func (s *Sim) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.requests))
	for k, v := range s.requests {
		out[k] = v
	}
	return out
}

// Triggers returns an account's triggers in creation order.
func (s *Sim) Triggers(accountSID string) []Trigger {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[accountSID]
	if !ok {
		return nil
	}
	now := s.nowLocked()
	out := make([]Trigger, 0, len(a.triggers))
	for _, t := range a.triggers {
		out = append(out, s.exportTriggerLocked(t, now))
	}
	return out
}
