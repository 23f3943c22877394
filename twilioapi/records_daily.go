package twilioapi

import (
	"context"
	"net/url"
	"strconv"
	"time"
)

// maxDailyPages bounds the pages DailyUsageRecords follows: a year of
// every category Twilio has fits in far fewer; the bound only stops a
// misbehaving server from paging forever.
const maxDailyPages = 500

// DailyUsageReader reads an account's usage history day by day. *Client
// implements it; the backtest needs nothing else besides the subaccounts.
type DailyUsageReader interface {
	DailyUsageRecords(ctx context.Context, accountSID, category, startDate, endDate string) ([]UsageRecord, error)
}

// DailyUsageRecords reads an account's daily usage records
// (Usage/Records/Daily.json) from startDate to endDate (YYYY-MM-DD, GMT,
// both included): one record per day and category, StartDate the day. With
// a category, only that category (one page holds 1000 days); with "" every
// category Twilio lists, in one listing (PageSize=1000, followed through
// next_page_uri). Subaccount usage is not aggregated (IncludeSubaccounts=
// false). Read-only; it goes through the client's concurrency cap, retries
// and metrics like every call.
func (c *Client) DailyUsageRecords(ctx context.Context, accountSID, category, startDate, endDate string) ([]UsageRecord, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return nil, invalidArg(OpRecordsRead, "malformed account SID %q", accountSID)
	}
	start, err1 := time.Parse(time.DateOnly, startDate)
	end, err2 := time.Parse(time.DateOnly, endDate)
	if err1 != nil || err2 != nil || end.Before(start) {
		return nil, invalidArg(OpRecordsRead, "bad date range %q to %q (YYYY-MM-DD, start first)", startDate, endDate)
	}
	q := url.Values{}
	q.Set("StartDate", startDate)
	q.Set("EndDate", endDate)
	q.Set("IncludeSubaccounts", "false")
	q.Set("PageSize", strconv.Itoa(pageSize))
	if category != "" {
		q.Set("Category", category)
	}
	rawURL := twilioBase + "/2010-04-01/Accounts/" + accountSID + "/Usage/Records/Daily.json"

	k := c.begin(ctx, OpRecordsRead, idempotent, c.maxAttempts)
	var out []UsageRecord
	err := c.readRecordPages(k, rawURL, q, maxDailyPages, "daily usage records", func(r usageRecordJSON) {
		if category == "" || r.Category == category {
			out = append(out, r.record(accountSID))
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
