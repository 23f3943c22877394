package twiliosim

import (
	"fmt"
	"net/url"
	"sort"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// CategoryTotalPrice is the category that sums every category's price.
const CategoryTotalPrice = "totalprice"

// usageBook holds usage per category and period key. Period keys are
// "d:2006-01-02", "m:2006-01", "y:2006" and "all".
type usageBook struct {
	cats map[string]map[string]Usage
}

func newUsageBook() *usageBook { return &usageBook{cats: make(map[string]map[string]Usage)} }

func periodKeys(t time.Time) [4]string {
	return [4]string{"d:" + t.Format("2006-01-02"), "m:" + t.Format("2006-01"), "y:" + t.Format("2006"), "all"}
}

func (b *usageBook) add(cat string, t time.Time, u Usage) {
	m := b.cats[cat]
	if m == nil {
		m = make(map[string]Usage)
		b.cats[cat] = m
	}
	for _, k := range periodKeys(t) {
		m[k] = m[k].add(u)
	}
}

func (b *usageBook) get(cat, key string) Usage { return b.cats[cat][key] }

// categories returns the categories with any usage, plus totalprice, sorted.
func (b *usageBook) categories() []string {
	out := make([]string, 0, len(b.cats)+1)
	seen := false
	for c := range b.cats {
		out = append(out, c)
		if c == CategoryTotalPrice {
			seen = true
		}
	}
	if !seen {
		out = append(out, CategoryTotalPrice)
	}
	sort.Strings(out)
	return out
}

// periodKey is the usage period a trigger with this recurring value watches at t.
func periodKey(recurring string, t time.Time) string {
	switch recurring {
	case "daily":
		return "d:" + t.Format("2006-01-02")
	case "monthly":
		return "m:" + t.Format("2006-01")
	case "yearly":
		return "y:" + t.Format("2006")
	default:
		return "all"
	}
}

// periodStart is the first day of the trigger's period at t, for the
// IdempotencyToken. A non-recurring trigger fires at most once ever, so the day
// it fires identifies the firing (Twilio's format for that case is not documented).
func periodStart(recurring string, t time.Time) string {
	switch recurring {
	case "monthly":
		return t.Format("2006-01") + "-01"
	case "yearly":
		return t.Format("2006") + "-01-01"
	default:
		return t.Format("2006-01-02")
	}
}

// bookFor is the usage a trigger on account a watches: the account's own, or for
// the parent everything (as the parent's usage records include subaccounts by default).
func (s *Sim) bookFor(a *account) *usageBook {
	if a == s.parent {
		return s.tree
	}
	return a.usage
}

func (s *Sim) currentValueLocked(t *trigger, now time.Time) decimal.Decimal {
	a := s.accounts[t.acct]
	return s.bookFor(a).get(t.category, periodKey(t.recur, now)).Value(t.by)
}

// NotActiveError is returned by AddUsage for a suspended or closed account.
type NotActiveError struct{ SID, Status string }

func (e *NotActiveError) Error() string {
	return fmt.Sprintf("twiliosim: account %s is %s; its usage is refused", e.SID, e.Status)
}

// AddUsage adds usage to the current period (GMT day, month, year and all
// time) of the category and of totalprice (Price adds to totalprice's usage and
// price), then fires every trigger of the account whose watched value reached its
// trigger value, at most once per period. The firings' deliveries run in the
// background; pass them to Wait to wait for them. A suspended or closed
// account's usage is refused with *NotActiveError.
func (s *Sim) AddUsage(in UsageInput) ([]Firing, error) {
	if in.Category == "" {
		return nil, fmt.Errorf("twiliosim: usage needs a category")
	}
	if in.Count.Sign() < 0 || in.Usage.Sign() < 0 || in.Price.Sign() < 0 {
		return nil, fmt.Errorf("twiliosim: usage cannot be negative")
	}
	s.mu.Lock()
	a, ok := s.accounts[in.AccountSID]
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("twiliosim: no account %s", in.AccountSID)
	}
	if a.Status != StatusActive {
		s.mu.Unlock()
		return nil, &NotActiveError{SID: a.SID, Status: a.Status}
	}
	now := s.nowLocked()
	cats := s.bookUsageLocked(a, in, now)
	var jobs []*job
	for _, acc := range []*account{a, s.parent} {
		for _, c := range cats {
			for _, t := range acc.byCat[c] {
				if j := s.evalLocked(acc, t, now); j != nil {
					jobs = append(jobs, j)
				}
			}
		}
		if a == s.parent {
			break
		}
	}
	s.mu.Unlock()
	return s.start(jobs), nil
}

// evalLocked fires t if its watched value reached its trigger value and it has
// not fired in the current period. It returns the delivery job, or nil.
func (s *Sim) evalLocked(a *account, t *trigger, now time.Time) *job {
	if a.Status == StatusClosed || s.closed {
		return nil
	}
	key := periodKey(t.recur, now)
	if t.fired != nil && t.firedPeriod == key {
		return nil
	}
	cur := s.currentValueLocked(t, now)
	if cur.Cmp(t.value) < 0 {
		return nil
	}
	fired := now
	t.fired = &fired
	t.firedPeriod = key
	recurring := t.recur
	if recurring == "alltime" {
		recurring = ""
	}
	token := fmt.Sprintf("%s-FIRES-%s-%s", a.SID, t.sid, periodStart(t.recur, now))
	params := url.Values{}
	params.Set("AccountSid", a.SID)
	params.Set("UsageTriggerSid", t.sid)
	params.Set("DateFired", now.Format(time.RFC1123Z))
	params.Set("Recurring", recurring)
	params.Set("UsageCategory", t.category)
	params.Set("TriggerBy", t.by)
	params.Set("TriggerValue", t.value.String())
	params.Set("CurrentValue", cur.String())
	params.Set("UsageRecordUri", usageRecordURI(a.SID, t.recur, t.category))
	params.Set("IdempotencyToken", token)
	s.inflight++
	if s.inflight == 1 {
		s.idle = make(chan struct{})
	}
	return &job{
		firing: Firing{TriggerSID: t.sid, AccountSID: a.SID, IdempotencyToken: token,
			CallbackURL: redactURL(t.url), CallbackMethod: t.method, TriggerValue: t.value,
			CurrentValue: cur, DateFired: now},
		rawURL:    t.url,
		method:    t.method,
		authToken: a.AuthToken,
		params:    params,
		done:      make(chan struct{}),
	}
}

// usageRecordURI is the usage record a trigger watches (DOMAIN.md §1: Today for
// daily, Records.json for non-recurring; ThisMonth and Yearly are inferred).
func usageRecordURI(acct, recurring, category string) string {
	base := "/2010-04-01/Accounts/" + acct + "/Usage/Records"
	q := "?Category=" + url.QueryEscape(category)
	switch recurring {
	case "daily":
		return base + "/Today.json" + q
	case "monthly":
		return base + "/ThisMonth.json" + q
	case "yearly":
		return base + "/Yearly.json" + q
	default:
		return base + ".json" + q
	}
}

// currentUsageLocked is an account's own usage in the current periods.
func currentUsageLocked(a *account, now time.Time) map[string]map[string]Usage {
	keys := periodKeys(now)
	names := [4]string{"daily", "monthly", "yearly", "alltime"}
	out := make(map[string]map[string]Usage, 4)
	for i, k := range keys {
		m := make(map[string]Usage)
		for cat, byKey := range a.usage.cats {
			if u, ok := byKey[k]; ok {
				m[cat] = u
			}
		}
		out[names[i]] = m
	}
	return out
}
