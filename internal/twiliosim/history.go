package twiliosim

import (
	"fmt"
	"net/http"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// Usage history: POST /sim/history books usage on a past day (or today)
// without firing any trigger, so that Usage/Records/Daily.json (and the
// other record endpoints) report it as Twilio would report the usage it
// kept. The backtest reads it.

// HistoryInput is usage booked on one day.
type HistoryInput struct {
	AccountSID string
	Category   string
	Day        time.Time // a GMT day; not after the simulator's today
	Count      decimal.Decimal
	Usage      decimal.Decimal
	Price      decimal.Decimal
}

// AddHistory books usage on a day, as AddUsage does (Price also adds to
// totalprice; totalprice's usage is its price) but on in.Day, whatever the
// account's status, and without firing triggers.
func (s *Sim) AddHistory(in HistoryInput) error {
	if in.Category == "" {
		return fmt.Errorf("twiliosim: usage needs a category")
	}
	if in.Count.Sign() < 0 || in.Usage.Sign() < 0 || in.Price.Sign() < 0 {
		return fmt.Errorf("twiliosim: usage cannot be negative")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[in.AccountSID]
	if !ok {
		return fmt.Errorf("twiliosim: no account %s", in.AccountSID)
	}
	d := day(in.Day.UTC())
	if d.After(day(s.nowLocked())) {
		return fmt.Errorf("twiliosim: %s is after today (%s)", d.Format(dateLayout), s.nowLocked().Format(dateLayout))
	}
	s.bookUsageLocked(a, UsageInput{AccountSID: in.AccountSID, Category: in.Category, Count: in.Count, Usage: in.Usage, Price: in.Price}, d)
	return nil
}

// bookUsageLocked adds usage at t to the account's book and the parent's
// tree: to the category and to totalprice (Price; totalprice has no count,
// and its usage is its price). It returns the categories changed.
func (s *Sim) bookUsageLocked(a *account, in UsageInput, t time.Time) []string {
	if in.Category == CategoryTotalPrice {
		p := in.Price
		if p.IsZero() {
			p = in.Usage
		}
		u := Usage{Usage: p, Price: p}
		a.usage.add(CategoryTotalPrice, t, u)
		s.tree.add(CategoryTotalPrice, t, u)
		return []string{CategoryTotalPrice}
	}
	u := Usage{Count: in.Count, Usage: in.Usage, Price: in.Price}
	a.usage.add(in.Category, t, u)
	s.tree.add(in.Category, t, u)
	tp := Usage{Usage: in.Price, Price: in.Price}
	a.usage.add(CategoryTotalPrice, t, tp)
	s.tree.add(CategoryTotalPrice, t, tp)
	return []string{in.Category, CategoryTotalPrice}
}

// simHistory serves POST /sim/history: AccountSid, Category, Day
// (YYYY-MM-DD), Count, Usage, Price (non-negative decimals, optional).
func (s *Sim) simHistory(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	in := HistoryInput{AccountSID: f.Get("AccountSid"), Category: f.Get("Category")}
	if in.AccountSID == "" || in.Category == "" || f.Get("Day") == "" {
		writeError(w, errParam("AccountSid, Category and Day are required"))
		return
	}
	d, err := time.Parse(dateLayout, f.Get("Day"))
	if err != nil {
		writeError(w, errParam("Day must be YYYY-MM-DD"))
		return
	}
	in.Day = d
	for _, fld := range []struct {
		name string
		dst  *decimal.Decimal
	}{{"Count", &in.Count}, {"Usage", &in.Usage}, {"Price", &in.Price}} {
		if v := f.Get(fld.name); v != "" {
			x, err := decimal.Parse(v)
			if err != nil || x.Sign() < 0 {
				writeError(w, errParam(fld.name+" must be a non-negative decimal"))
				return
			}
			*fld.dst = x
		}
	}
	if _, ok := s.Account(in.AccountSID); !ok {
		writeError(w, errNotFound("/2010-04-01/Accounts/"+in.AccountSID+".json"))
		return
	}
	if err := s.AddHistory(in); err != nil {
		writeError(w, errParam(err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"account_sid": in.AccountSID, "category": in.Category,
		"day": d.Format(dateLayout), "added": Usage{Count: in.Count, Usage: in.Usage, Price: in.Price}})
}
