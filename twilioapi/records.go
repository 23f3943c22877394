package twilioapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

// recordsPath maps a period to its Usage Records subresource. There is no
// ThisYear in Twilio's spec: yearly reads Yearly.json from January 1st (GMT)
// of the current year.
var recordsPath = map[Period]string{
	PeriodDaily:   "Today",
	PeriodMonthly: "ThisMonth",
	PeriodYearly:  "Yearly",
	PeriodAllTime: "AllTime",
}

// UsageRecord reads an account's usage of one category in the current
// period, with exact decimals. twilio-go's model decodes price into a
// float32, so the request is made directly (through the same per-call
// client: same context, retries, limit and metrics) and decoded here.
// Subaccount usage is not aggregated (IncludeSubaccounts=false). When Twilio
// returns no record the result is a zero record.
func (c *Client) UsageRecord(ctx context.Context, accountSID string, period Period, category string) (UsageRecord, error) {
	if !accountSIDRe.MatchString(accountSID) {
		return UsageRecord{}, invalidArg(OpRecordsRead, "malformed account SID %q", accountSID)
	}
	sub, ok := recordsPath[period]
	if !ok {
		return UsageRecord{}, invalidArg(OpRecordsRead, "unknown period %q", period)
	}
	if category == "" {
		return UsageRecord{}, invalidArg(OpRecordsRead, "a usage category is required")
	}
	q := url.Values{}
	q.Set("Category", category)
	q.Set("IncludeSubaccounts", "false")
	if period == PeriodYearly {
		q.Set("StartDate", fmt.Sprintf("%04d-01-01", c.now().UTC().Year()))
	}
	rawURL := twilioBase + "/2010-04-01/Accounts/" + accountSID + "/Usage/Records/" + sub + ".json"

	k := c.begin(ctx, OpRecordsRead, idempotent, c.maxAttempts)
	resp, err := k.bc.SendRequest(http.MethodGet, rawURL, q, nil)
	if err != nil {
		return UsageRecord{}, k.fail(c, err)
	}
	defer resp.Body.Close()
	var page struct {
		UsageRecords []usageRecordJSON `json:"usage_records"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return UsageRecord{}, k.fail(c, err)
	}

	rec := UsageRecord{AccountSID: accountSID, Category: category}
	found := false
	for _, r := range page.UsageRecords {
		if r.Category != "" && r.Category != category {
			continue
		}
		// Yearly can hold more than one year: keep the latest.
		if found && r.StartDate < rec.StartDate {
			continue
		}
		found = true
		rec = UsageRecord{
			AccountSID: orDefault(r.AccountSID, accountSID),
			Category:   orDefault(r.Category, category),
			StartDate:  r.StartDate,
			EndDate:    r.EndDate,
			Count:      r.Count.Decimal,
			Usage:      r.Usage.Decimal,
			Price:      r.Price.Decimal,
			AsOf:       parseAsOf(r.AsOf),
			PriceUnit:  r.PriceUnit,
		}
	}
	return rec, nil
}

type usageRecordJSON struct {
	AccountSID string       `json:"account_sid"`
	Category   string       `json:"category"`
	StartDate  string       `json:"start_date"`
	EndDate    string       `json:"end_date"`
	Count      looseDecimal `json:"count"`
	Usage      looseDecimal `json:"usage"`
	Price      looseDecimal `json:"price"`
	PriceUnit  string       `json:"price_unit"`
	AsOf       string       `json:"as_of"`
}

// parseAsOf reads a record's as_of ("2026-12-04T10:15:00+00:00"); zero when
// absent or malformed.
func parseAsOf(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

// looseDecimal is a decimal.Decimal that also reads "" as zero (Twilio sends
// an empty count for totalprice).
type looseDecimal struct{ decimal.Decimal }

func (d *looseDecimal) UnmarshalJSON(b []byte) error {
	if s := strings.TrimSpace(string(b)); s == `""` || s == "null" {
		d.Decimal = decimal.Zero
		return nil
	}
	return d.Decimal.UnmarshalJSON(b)
}
