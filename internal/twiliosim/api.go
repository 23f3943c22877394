package twiliosim

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// route is a parsed Twilio API path.
type route struct {
	op      string
	handler func(s *Sim, w http.ResponseWriter, r *http.Request, rt route)
	acct    string // the account SID in the path ("" for /Accounts.json)
	sid     string // the trigger or call SID
	kind    string // usage records subresource ("" for Records.json)
	err     *apiError
}

var recordKinds = map[string]bool{
	"AllTime": true, "Daily": true, "LastMonth": true, "Monthly": true,
	"ThisMonth": true, "Today": true, "Yearly": true, "Yesterday": true,
}

func parseRoute(method, path string) route {
	notFound := route{op: OpUnknown, err: errNotFound(path)}
	rest, ok := strings.CutPrefix(path, "/2010-04-01/Accounts")
	if !ok {
		return notFound
	}
	pick := func(byMethod map[string]route) route {
		if rt, ok := byMethod[method]; ok {
			return rt
		}
		return route{op: OpUnknown, err: errMethod(method)}
	}
	if rest == ".json" {
		return pick(map[string]route{
			http.MethodGet:  {op: OpAccountsList, handler: (*Sim).listAccounts},
			http.MethodPost: {op: OpAccountsCreate, handler: (*Sim).createAccount},
		})
	}
	seg := strings.Split(strings.TrimPrefix(rest, "/"), "/")
	if !strings.HasPrefix(rest, "/") || len(seg) == 0 {
		return notFound
	}
	if len(seg) == 1 {
		acct, ok := strings.CutSuffix(seg[0], ".json")
		if !ok {
			return notFound
		}
		rt := pick(map[string]route{
			http.MethodGet:  {op: OpAccountsFetch, handler: (*Sim).fetchAccount},
			http.MethodPost: {op: OpAccountsUpdate, handler: (*Sim).updateAccount},
		})
		rt.acct = acct
		return rt
	}
	acct := seg[0]
	var rt route
	switch {
	case len(seg) == 3 && seg[1] == "Usage" && seg[2] == "Triggers.json":
		rt = pick(map[string]route{
			http.MethodGet:  {op: OpTriggersList, handler: (*Sim).listTriggers},
			http.MethodPost: {op: OpTriggersCreate, handler: (*Sim).createTrigger},
		})
	case len(seg) == 4 && seg[1] == "Usage" && seg[2] == "Triggers" && strings.HasSuffix(seg[3], ".json"):
		rt = pick(map[string]route{
			http.MethodGet:    {op: OpTriggersFetch, handler: (*Sim).fetchTrigger},
			http.MethodPost:   {op: OpTriggersUpdate, handler: (*Sim).updateTrigger},
			http.MethodDelete: {op: OpTriggersDelete, handler: (*Sim).deleteTrigger},
		})
		rt.sid = strings.TrimSuffix(seg[3], ".json")
	case len(seg) == 3 && seg[1] == "Usage" && seg[2] == "Records.json":
		rt = pick(map[string]route{http.MethodGet: {op: OpRecordsRead, handler: (*Sim).readRecords}})
	case len(seg) == 4 && seg[1] == "Usage" && seg[2] == "Records" && recordKinds[strings.TrimSuffix(seg[3], ".json")] && strings.HasSuffix(seg[3], ".json"):
		rt = pick(map[string]route{http.MethodGet: {op: OpRecordsRead, handler: (*Sim).readRecords}})
		rt.kind = strings.TrimSuffix(seg[3], ".json")
	case len(seg) == 2 && seg[1] == "Messages.json":
		rt = pick(map[string]route{http.MethodPost: {op: OpMessagesCreate, handler: (*Sim).createMessage}})
	case len(seg) == 2 && seg[1] == "Calls.json":
		rt = pick(map[string]route{http.MethodGet: {op: OpCallsList, handler: (*Sim).listCalls}})
	case len(seg) == 3 && seg[1] == "Calls" && strings.HasSuffix(seg[2], ".json"):
		rt = pick(map[string]route{http.MethodPost: {op: OpCallsUpdate, handler: (*Sim).updateCall}})
		rt.sid = strings.TrimSuffix(seg[2], ".json")
	default:
		return notFound
	}
	rt.acct = acct
	return rt
}

// ServeHTTP serves the Twilio API and the /sim/ control endpoints.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isSimPath(r.URL.Path) {
		s.serveControl(w, r)
		return
	}
	rt := parseRoute(r.Method, r.URL.Path)
	s.mu.Lock()
	s.requests[rt.op]++
	s.mu.Unlock()
	w.Header().Set("Twilio-Request-Id", newSID("RQ"))
	if f := s.takeFault(TargetAPI, r.Method, r.URL.Path); f != nil {
		if !s.applyAPIFault(w, r, f, rt) {
			return
		}
	}
	s.dispatch(w, r, rt)
}

func (s *Sim) dispatch(w http.ResponseWriter, r *http.Request, rt route) {
	if rt.err != nil {
		writeError(w, rt.err)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		writeError(w, errParam("Unable to parse the request: "+err.Error()))
		return
	}
	rt.handler(s, w, r, rt)
}

// authLocked checks the Basic credentials and that they may act on the
// account in the path (acct "" for /Accounts.json). It returns the caller and
// the target account.
func (s *Sim) authLocked(r *http.Request, acct string) (caller, target *account, e *apiError) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return nil, nil, errAuthenticate
	}
	caller = s.accounts[user]
	if caller == nil || subtle.ConstantTimeCompare([]byte(pass), []byte(caller.AuthToken)) != 1 {
		return nil, nil, errAuthenticate
	}
	if caller.Status != StatusActive {
		// 20003's documented causes include "Account is suspended or closed".
		return nil, nil, errAuthenticate
	}
	if acct == "" {
		return caller, nil, nil
	}
	if caller != s.parent {
		// A subaccount's credentials reach only that subaccount; Twilio lists
		// "Using subaccount credentials to access master account" under 20003.
		if acct != caller.SID {
			return nil, nil, errAuthenticate
		}
		return caller, caller, nil
	}
	target = s.accounts[acct]
	if target == nil {
		return nil, nil, errNotFound(r.URL.Path)
	}
	return caller, target, nil
}

// ---- accounts ----

func (s *Sim) listAccounts(w http.ResponseWriter, r *http.Request, _ route) {
	s.mu.Lock()
	caller, _, e := s.authLocked(r, "")
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	p, e := s.parsePageLocked(r.Form)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	name, status := r.Form.Get("FriendlyName"), r.Form.Get("Status")
	if status != "" && !validStatus(status) {
		s.mu.Unlock()
		writeError(w, errParam("Status must be one of active, suspended, closed"))
		return
	}
	items := s.order
	switch {
	case caller != s.parent:
		items = []*account{caller}
	case name != "":
		items = s.byName[name]
	}
	page, next, prev := pageOf(items, func(a *account) uint64 { return a.seq }, func(a *account) bool {
		return (name == "" || a.FriendlyName == name) && (status == "" || a.Status == status)
	}, p)
	list := make([]accountJSON, len(page))
	for i, a := range page {
		list[i] = renderAccount(a)
	}
	s.mu.Unlock()
	first, last := "", ""
	if len(page) > 0 {
		first, last = page[0].SID, page[len(page)-1].SID
	}
	l := listURI{path: "/2010-04-01/Accounts.json", filters: [][2]string{{"FriendlyName", name}, {"Status", status}}}
	writeJSON(w, http.StatusOK, envelope("accounts", list, len(list), l, p, next, prev, first, last))
}

func validStatus(s string) bool {
	return s == StatusActive || s == StatusSuspended || s == StatusClosed
}

func (s *Sim) fetchAccount(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	j := renderAccount(a)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, j)
}

func (s *Sim) updateAccount(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	caller, a, e := s.authLocked(r, rt.acct)
	if e == nil {
		e = s.updateAccountLocked(caller, a, r.PostForm)
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	j := renderAccount(a)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, j)
}

func (s *Sim) updateAccountLocked(caller, a *account, form url.Values) *apiError {
	status, hasStatus := form.Get("Status"), form.Has("Status")
	name, hasName := form.Get("FriendlyName"), form.Has("FriendlyName")
	if hasStatus {
		if !validStatus(status) {
			return errParam("Status must be one of active, suspended, closed")
		}
		if a == s.parent && status != StatusActive {
			// Documented: 21477 "Unable to update Status for parent accounts".
			return &apiError{http.StatusBadRequest, 21477, "Unable to update Status for parent accounts"}
		}
		if caller != s.parent && status != a.Status {
			// Suspending needs main-account credentials (SUB-DOC); whether
			// Twilio answers 401/20003 is inferred.
			return errAuthenticate
		}
		if a.Status == StatusClosed && status != StatusClosed {
			// Documented: 21479 "Unable to update Status for subaccount, subaccount has been closed."
			return &apiError{http.StatusBadRequest, 21479, "Unable to update Status for subaccount, subaccount has been closed."}
		}
	}
	if hasName && len(name) > 64 {
		return errParam("FriendlyName must be at most 64 characters")
	}
	now := s.nowLocked()
	if hasName && name != a.FriendlyName {
		s.renameLocked(a, name)
		a.updated = now
	}
	if hasStatus {
		a.setStatus(status, now)
		if status == StatusClosed {
			s.closeCallsLocked(a, now)
		}
	}
	return nil
}

func (s *Sim) renameLocked(a *account, name string) {
	old := s.byName[a.FriendlyName]
	for i, x := range old {
		if x == a {
			old = append(old[:i:i], old[i+1:]...)
			break
		}
	}
	if len(old) == 0 {
		delete(s.byName, a.FriendlyName)
	} else {
		s.byName[a.FriendlyName] = old
	}
	a.FriendlyName = name
	list := s.byName[name]
	i := sort.Search(len(list), func(i int) bool { return list[i].seq > a.seq })
	list = append(list, nil)
	copy(list[i+1:], list[i:])
	list[i] = a
	s.byName[name] = list
}

// closeCallsLocked ends a closed account's calls (Twilio releases its resources).
func (s *Sim) closeCallsLocked(a *account, now time.Time) {
	for _, c := range a.callOrder {
		if c.Status == "in-progress" || c.Status == "ringing" || c.Status == "queued" {
			end := now
			c.Status, c.EndTime, c.DateUpdated = "completed", &end, now
		}
	}
}

func (s *Sim) createAccount(w http.ResponseWriter, r *http.Request, _ route) {
	s.mu.Lock()
	caller, _, e := s.authLocked(r, "")
	if e == nil && caller != s.parent {
		// Documented: 21101 "Subaccounts cannot contain subaccounts" (HTTP status inferred).
		e = &apiError{http.StatusBadRequest, 21101, "Subaccounts cannot contain subaccounts"}
	}
	name := r.PostForm.Get("FriendlyName")
	if e == nil && len(name) > 64 {
		e = errParam("FriendlyName must be at most 64 characters")
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	j := renderAccount(s.createSubLocked(name))
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, j)
}

// ---- triggers ----

var categoryRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

func (s *Sim) listTriggers(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	var p pageReq
	if e == nil {
		p, e = s.parsePageLocked(r.Form)
	}
	recurring, by, cat := r.Form.Get("Recurring"), r.Form.Get("TriggerBy"), r.Form.Get("UsageCategory")
	if e == nil && recurring != "" && !validRecurring(recurring) {
		e = errParam("Recurring must be one of daily, monthly, yearly, alltime")
	}
	if e == nil && by != "" && !validTriggerBy(by) {
		e = errParam("TriggerBy must be one of count, usage, price")
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	items := a.triggers
	if cat != "" {
		items = a.byCat[cat]
	}
	now := s.nowLocked()
	page, next, prev := pageOf(items, func(t *trigger) uint64 { return t.seq }, func(t *trigger) bool {
		if by != "" && t.by != by {
			return false
		}
		switch recurring {
		case "":
			return true
		case "alltime": // empty or alltime reads the non-recurring triggers
			return t.recur == "" || t.recur == "alltime"
		default:
			return t.recur == recurring
		}
	}, p)
	list := make([]triggerJSON, len(page))
	for i, t := range page {
		list[i] = s.renderTriggerLocked(t, now)
	}
	s.mu.Unlock()
	first, last := "", ""
	if len(page) > 0 {
		first, last = page[0].sid, page[len(page)-1].sid
	}
	l := listURI{path: "/2010-04-01/Accounts/" + rt.acct + "/Usage/Triggers.json",
		filters: [][2]string{{"Recurring", recurring}, {"TriggerBy", by}, {"UsageCategory", cat}}}
	writeJSON(w, http.StatusOK, envelope("usage_triggers", list, len(list), l, p, next, prev, first, last))
}

func validRecurring(v string) bool {
	return v == "daily" || v == "monthly" || v == "yearly" || v == "alltime"
}

func validTriggerBy(v string) bool { return v == "count" || v == "usage" || v == "price" }

func validCallbackURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func (s *Sim) createTrigger(w http.ResponseWriter, r *http.Request, rt route) {
	f := r.PostForm
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	now := s.nowLocked()
	t, e := s.newTriggerLocked(a, f, now)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	j := s.evalLocked(a, t, now) // a threshold already reached fires at the next evaluation
	out := s.renderTriggerLocked(t, now)
	s.mu.Unlock()
	if j != nil {
		s.start([]*job{j})
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Sim) newTriggerLocked(a *account, f url.Values, now time.Time) (*trigger, *apiError) {
	for _, req := range []string{"CallbackUrl", "TriggerValue", "UsageCategory"} {
		if f.Get(req) == "" {
			return nil, errParam("Missing required parameter " + req + " in the post body")
		}
	}
	t := &trigger{
		acct:     a.SID,
		url:      f.Get("CallbackUrl"),
		method:   strings.ToUpper(f.Get("CallbackMethod")),
		category: f.Get("UsageCategory"),
		by:       f.Get("TriggerBy"),
		recur:    f.Get("Recurring"),
		name:     f.Get("FriendlyName"),
		created:  now,
		updated:  now,
	}
	if !validCallbackURL(t.url) {
		// Documented: 21502 "Invalid callback url".
		return nil, &apiError{http.StatusBadRequest, 21502, "CallbackUrl is not a valid URL: " + t.url}
	}
	if t.method == "" {
		t.method = http.MethodPost
	}
	if t.method != http.MethodGet && t.method != http.MethodPost {
		return nil, errParam("CallbackMethod must be GET or POST")
	}
	if !categoryRE.MatchString(t.category) {
		return nil, errParam("UsageCategory is not a valid usage category: " + t.category)
	}
	if t.by == "" {
		t.by = "usage"
	}
	if !validTriggerBy(t.by) {
		return nil, errParam("TriggerBy must be one of count, usage, price")
	}
	if t.recur != "" && !validRecurring(t.recur) {
		return nil, errParam("Recurring must be one of daily, monthly, yearly, alltime")
	}
	if len(t.name) > 64 {
		return nil, errParam("FriendlyName must be at most 64 characters")
	}
	raw := f.Get("TriggerValue")
	v, err := decimal.Parse(raw)
	if err != nil {
		return nil, errParam("TriggerValue must be a number, or +N for an offset (urlencode + as %2B): " + raw)
	}
	if v.Sign() < 0 {
		return nil, errParam("TriggerValue must be a positive number")
	}
	if strings.HasPrefix(raw, "+") {
		// An offset: N above the current value of the watched quantity in the trigger's current period.
		cur := s.bookFor(a).get(t.category, periodKey(t.recur, now)).Value(t.by)
		v = cur.Add(v)
	}
	t.value = v
	if t.name == "" {
		t.name = fmt.Sprintf("Trigger for %s at %s of %s", t.category, t.by, v.String())
	}
	if len(a.triggers) >= MaxTriggersPerAccount {
		// Twilio documents the limit (UT-DOC) but not its error code; 59200
		// "Account Limit Reached" is Twilio's code for the same situation in
		// the Webhooks Configuration API.
		return nil, &apiError{http.StatusBadRequest, 59200, fmt.Sprintf(
			"Account Limit Reached: an account can have at most %d UsageTriggers; delete unused ones", MaxTriggersPerAccount)}
	}
	t.sid = newSID("UT")
	for s.triggers[t.sid] != nil {
		t.sid = newSID("UT")
	}
	t.seq = s.nextSeq(t.sid)
	s.triggers[t.sid] = t
	a.triggers = append(a.triggers, t)
	a.byCat[t.category] = append(a.byCat[t.category], t)
	return t, nil
}

func (s *Sim) triggerLocked(r *http.Request, rt route) (*account, *trigger, *apiError) {
	_, a, e := s.authLocked(r, rt.acct)
	if e != nil {
		return nil, nil, e
	}
	t := s.triggers[rt.sid]
	if t == nil || t.acct != a.SID {
		return nil, nil, errNotFound(r.URL.Path)
	}
	return a, t, nil
}

func (s *Sim) fetchTrigger(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	_, t, e := s.triggerLocked(r, rt)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	out := s.renderTriggerLocked(t, s.nowLocked())
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) updateTrigger(w http.ResponseWriter, r *http.Request, rt route) {
	f := r.PostForm
	s.mu.Lock()
	a, t, e := s.triggerLocked(r, rt)
	if e == nil && f.Has("CallbackUrl") && !validCallbackURL(f.Get("CallbackUrl")) {
		e = &apiError{http.StatusBadRequest, 21502, "CallbackUrl is not a valid URL: " + f.Get("CallbackUrl")}
	}
	method := strings.ToUpper(f.Get("CallbackMethod"))
	if e == nil && f.Has("CallbackMethod") && method != http.MethodGet && method != http.MethodPost {
		e = errParam("CallbackMethod must be GET or POST")
	}
	if e == nil && len(f.Get("FriendlyName")) > 64 {
		e = errParam("FriendlyName must be at most 64 characters")
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	// Only these three can change; other parameters are ignored, as at Twilio.
	if f.Has("CallbackUrl") {
		t.url = f.Get("CallbackUrl")
	}
	if f.Has("CallbackMethod") {
		t.method = method
	}
	if f.Has("FriendlyName") {
		t.name = f.Get("FriendlyName")
	}
	now := s.nowLocked()
	t.updated = now
	j := s.evalLocked(a, t, now)
	out := s.renderTriggerLocked(t, now)
	s.mu.Unlock()
	if j != nil {
		s.start([]*job{j})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) deleteTrigger(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	a, t, e := s.triggerLocked(r, rt)
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	delete(s.triggers, t.sid)
	a.triggers = removeTrigger(a.triggers, t)
	if l := removeTrigger(a.byCat[t.category], t); len(l) > 0 {
		a.byCat[t.category] = l
	} else {
		delete(a.byCat, t.category)
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func removeTrigger(l []*trigger, t *trigger) []*trigger {
	for i, x := range l {
		if x == t {
			return append(l[:i:i], l[i+1:]...)
		}
	}
	return l
}

// ---- messages ----

func (s *Sim) createMessage(w http.ResponseWriter, r *http.Request, rt route) {
	f := r.PostForm
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	switch {
	case e != nil:
	case a.Status != StatusActive:
		// Documented: 20403 "The account lacks permission ... suspended or closed".
		e = &apiError{http.StatusForbidden, 20403, "Account " + a.SID + " is " + a.Status}
	case f.Get("To") == "":
		// Documented message codes: 21604 'To' required, 21603 'From' required, 21602 body required.
		e = &apiError{http.StatusBadRequest, 21604, "A 'To' phone number is required."}
	case f.Get("From") == "" && f.Get("MessagingServiceSid") == "":
		e = &apiError{http.StatusBadRequest, 21603, "A 'From' phone number is required."}
	case f.Get("MessagingServiceSid") != "" && !sidRE["MG"].MatchString(f.Get("MessagingServiceSid")):
		e = errParam("MessagingServiceSid is not a valid Messaging Service SID")
	case f.Get("Body") == "" && f.Get("MediaUrl") == "" && f.Get("ContentSid") == "":
		e = &apiError{http.StatusBadRequest, 21602, "Message body is required."}
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	sid := newSID("SM")
	s.nextSeq(sid)
	m := Message{SID: sid, AccountSID: a.SID, To: f.Get("To"), From: f.Get("From"),
		MessagingServiceSID: f.Get("MessagingServiceSid"), Body: f.Get("Body"), Status: "queued",
		DateCreated: s.nowLocked()}
	s.messages = append(s.messages, m)
	s.mu.Unlock()
	s.log.Info("message created", "sid", m.SID, "to", m.To)
	writeJSON(w, http.StatusCreated, renderMessage(m))
}

// ---- calls ----

func (s *Sim) listCalls(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	var p pageReq
	if e == nil {
		p, e = s.parsePageLocked(r.Form)
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	status, to, from := r.Form.Get("Status"), r.Form.Get("To"), r.Form.Get("From")
	page, next, prev := pageOf(a.callOrder, func(c *call) uint64 { return c.seq }, func(c *call) bool {
		return (status == "" || c.Status == status) && (to == "" || c.To == to) && (from == "" || c.From == from)
	}, p)
	list := make([]callJSON, len(page))
	for i, c := range page {
		list[i] = renderCall(c.Call)
	}
	s.mu.Unlock()
	first, last := "", ""
	if len(page) > 0 {
		first, last = page[0].SID, page[len(page)-1].SID
	}
	l := listURI{path: "/2010-04-01/Accounts/" + rt.acct + "/Calls.json",
		filters: [][2]string{{"To", to}, {"From", from}, {"Status", status}}}
	writeJSON(w, http.StatusOK, envelope("calls", list, len(list), l, p, next, prev, first, last))
}

func (s *Sim) updateCall(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	_, a, e := s.authLocked(r, rt.acct)
	var c *call
	if e == nil {
		c = s.calls[rt.sid]
		if c == nil || c.AccountSID != a.SID {
			e = errNotFound(r.URL.Path)
		}
	}
	status := r.PostForm.Get("Status")
	if e == nil && status != "" && status != "completed" && status != "canceled" {
		e = errParam("Status must be completed or canceled")
	}
	if e != nil {
		s.mu.Unlock()
		writeError(w, e)
		return
	}
	now := s.nowLocked()
	live := c.Status == "in-progress" || c.Status == "ringing" || c.Status == "queued"
	queued := c.Status == "ringing" || c.Status == "queued"
	// completed ends a live call; canceled only affects a call not yet
	// answered (Twilio: canceling an in-progress call has no effect).
	if status == "completed" && live || status == "canceled" && queued {
		end := now
		c.Status, c.EndTime, c.DateUpdated = status, &end, now
	}
	out := renderCall(c.Call)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}
