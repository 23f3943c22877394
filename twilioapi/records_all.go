package twilioapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// maxRecordPages bounds the pages UsageRecords follows. Twilio has a few
// hundred usage categories and a page holds 1000 records, so one page is the
// norm; the bound only stops a misbehaving server from paging forever.
const maxRecordPages = 20

// UsageRecords reads every category of an account's usage in the current
// period with one request (PageSize=1000, IncludeSubaccounts=false), with
// exact decimals. This is what the polling fallback uses: one call per
// subaccount per period kind, whatever the number of rules. Pages beyond the
// first are followed (next_page_uri) should Twilio ever split the list.
//
// Yearly reads Yearly.json from January 1st (GMT) of the current year; if
// Twilio returns more than one year for a category, the latest is kept, so the
// result has at most one record per category.
func (c *Client) UsageRecords(ctx context.Context, accountSID string, period Period) ([]UsageRecord, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return nil, invalidArg(OpRecordsRead, "malformed account SID %q", accountSID)
	}
	sub, ok := recordsPath[period]
	if !ok {
		return nil, invalidArg(OpRecordsRead, "unknown period %q", period)
	}
	q := url.Values{}
	q.Set("IncludeSubaccounts", "false")
	q.Set("PageSize", strconv.Itoa(pageSize))
	if period == PeriodYearly {
		q.Set("StartDate", fmt.Sprintf("%04d-01-01", c.now().UTC().Year()))
	}
	rawURL := twilioBase + "/2010-04-01/Accounts/" + accountSID + "/Usage/Records/" + sub + ".json"

	k := c.begin(ctx, OpRecordsRead, idempotent, c.maxAttempts)
	var (
		out   []UsageRecord
		index = map[string]int{} // category -> position in out
	)
	err := c.readRecordPages(k, rawURL, q, maxRecordPages, "usage records", func(r usageRecordJSON) {
		rec := r.record(accountSID)
		if i, seen := index[r.Category]; seen {
			if rec.StartDate >= out[i].StartDate {
				out[i] = rec
			}
			return
		}
		index[r.Category] = len(out)
		out = append(out, rec)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// readRecordPages reads every page of a Usage Records listing (rawURL with
// q, then each next_page_uri, which carries the whole query: PageSize, Page,
// PageToken...), at most maxPages, and hands each record with a category to
// each.
func (c *Client) readRecordPages(k *call, rawURL string, q url.Values, maxPages int, what string, each func(usageRecordJSON)) error {
	for page := 0; ; page++ {
		if page == maxPages {
			return &Error{Operation: OpRecordsRead, Status: http.StatusOK,
				Message: fmt.Sprintf("more than %d pages of %s; giving up", maxPages, what)}
		}
		resp, err := k.bc.SendRequest(http.MethodGet, rawURL, q, nil)
		if err != nil {
			return k.fail(c, err)
		}
		var body struct {
			UsageRecords []usageRecordJSON `json:"usage_records"`
			NextPageURI  *string           `json:"next_page_uri"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			return k.fail(c, err)
		}
		for _, r := range body.UsageRecords {
			if r.Category != "" {
				each(r)
			}
		}
		if body.NextPageURI == nil || *body.NextPageURI == "" {
			return nil
		}
		next, err := url.Parse(*body.NextPageURI)
		if err != nil || next.IsAbs() || next.Path == "" || next.Path[0] != '/' {
			return &Error{Operation: OpRecordsRead, Status: http.StatusOK,
				Message: fmt.Sprintf("unusable next_page_uri %q", *body.NextPageURI)}
		}
		rawURL = twilioBase + next.Path + "?" + next.RawQuery
		q = nil
	}
}

// record is a usage record as the API gives it back, with exact decimals.
func (r usageRecordJSON) record(accountSID string) UsageRecord {
	return UsageRecord{
		AccountSID: orDefault(r.AccountSID, accountSID),
		Category:   r.Category,
		StartDate:  r.StartDate,
		EndDate:    r.EndDate,
		Count:      r.Count.Decimal,
		Usage:      r.Usage.Decimal,
		Price:      r.Price.Decimal,
		AsOf:       parseAsOf(r.AsOf),
		PriceUnit:  r.PriceUnit,
	}
}
