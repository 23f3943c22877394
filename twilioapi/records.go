package twilioapi

import (
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
