package breaker

import (
	"context"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// setUsage sets an account's usage of a category in the current period of
// kind p (replacing what was there). startDate "" means the record has none.
func (f *fakeAPI) setUsage(acct string, p twilioapi.Period, category, count, usage, price, startDate string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.usage == nil {
		f.usage = map[string]map[twilioapi.Period][]twilioapi.UsageRecord{}
	}
	if f.usage[acct] == nil {
		f.usage[acct] = map[twilioapi.Period][]twilioapi.UsageRecord{}
	}
	dec := func(s string) decimal.Decimal {
		if s == "" {
			return decimal.Zero
		}
		return decimal.MustParse(s)
	}
	rec := twilioapi.UsageRecord{AccountSID: acct, Category: category, StartDate: startDate, EndDate: startDate,
		Count: dec(count), Usage: dec(usage), Price: dec(price), PriceUnit: "usd"}
	recs := f.usage[acct][p]
	for i, r := range recs {
		if r.Category == category {
			recs[i] = rec
			return
		}
	}
	f.usage[acct][p] = append(recs, rec)
}

func (f *fakeAPI) UsageRecords(ctx context.Context, acct string, p twilioapi.Period) ([]twilioapi.UsageRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("records.read"); err != nil {
		return nil, err
	}
	f.calls["records.read:"+string(p)]++
	return append([]twilioapi.UsageRecord(nil), f.usage[acct][p]...), nil
}
