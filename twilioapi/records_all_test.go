package twilioapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
)

func TestUsageRecordsOneCallAllCategories(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		mu.Lock()
		queries = append(queries, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		if q.Get("Category") != "" || q.Get("IncludeSubaccounts") != "false" || q.Get("PageSize") != "1000" {
			t.Errorf("query %v", q)
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/Yearly.json"):
			// Two years for one category: the latest wins.
			io.WriteString(w, `{"usage_records":[
				{"account_sid":"`+testSub+`","category":"sms","start_date":"2025-01-01","end_date":"2025-12-31","count":"7","usage":"7","price":"0.7","price_unit":"usd"},
				{"account_sid":"`+testSub+`","category":"sms","start_date":"2026-01-01","end_date":"2026-12-31","count":"3","usage":"3","price":"0.3","price_unit":"usd"}],
				"next_page_uri":null}`)
		default:
			io.WriteString(w, `{"usage_records":[
				{"account_sid":"`+testSub+`","category":"totalprice","start_date":"2026-05-02","end_date":"2026-05-02","count":"","usage":"2192.84855","price":"2192.84855","price_unit":"usd"},
				{"account_sid":"`+testSub+`","category":"sms","start_date":"2026-05-02","end_date":"2026-05-02","count":"120","usage":"120","price":9.5,"price_unit":"usd","as_of":"2026-05-02T09:58:30+00:00"},
				{"account_sid":"`+testSub+`","category":"","start_date":"2026-05-02"}],
				"next_page_uri":null}`)
		}
	})
	c := newTestClient(t, testOptions(f.URL))
	c.now = func() time.Time { return time.Date(2026, 5, 2, 10, 0, 0, 0, time.UTC) }
	ctx := context.Background()

	recs, err := c.UsageRecords(ctx, testSub, PeriodDaily)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Category != "totalprice" || !recs[0].Price.Equal(decimal.MustParse("2192.84855")) ||
		!recs[0].Count.IsZero() || recs[1].Category != "sms" || recs[1].Count.String() != "120" ||
		recs[1].Value("price").String() != "9.5" || recs[1].StartDate != "2026-05-02" || recs[1].AccountSID != testSub ||
		!recs[1].AsOf.Equal(time.Date(2026, 5, 2, 9, 58, 30, 0, time.UTC)) || !recs[0].AsOf.IsZero() {
		t.Fatalf("daily %+v", recs)
	}
	recs, err = c.UsageRecords(ctx, testSub, PeriodYearly)
	if err != nil || len(recs) != 1 || recs[0].Count.String() != "3" || recs[0].StartDate != "2026-01-01" {
		t.Fatalf("yearly %+v %v", recs, err)
	}
	if len(queries) != 2 || !strings.Contains(queries[1], "/Usage/Records/Yearly.json") || !strings.Contains(queries[1], "StartDate=2026-01-01") ||
		!strings.Contains(queries[0], "/Usage/Records/Today.json") {
		t.Errorf("requests %v", queries)
	}
	if _, err := c.UsageRecords(ctx, testSub, Period("weekly")); !IsPermanent(err) || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unknown period: %v", err)
	}
	if _, err := c.UsageRecords(ctx, "AC123", PeriodDaily); !IsPermanent(err) {
		t.Errorf("bad SID: %v", err)
	}
	if f.total() != 2 {
		t.Errorf("requests = %d, want 2", f.total())
	}
}

func TestUsageRecordsFollowsPages(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("Page") == "1" {
			io.WriteString(w, `{"usage_records":[{"category":"calls","start_date":"2026-05-01","usage":"5"}],"next_page_uri":null}`)
			return
		}
		io.WriteString(w, `{"usage_records":[{"category":"sms","start_date":"2026-05-01","count":"1"}],
			"next_page_uri":"/2010-04-01/Accounts/`+testSub+`/Usage/Records/ThisMonth.json?IncludeSubaccounts=false&PageSize=1000&Page=1"}`)
	})
	c := newTestClient(t, testOptions(f.URL))
	recs, err := c.UsageRecords(context.Background(), testSub, PeriodMonthly)
	if err != nil || len(recs) != 2 || recs[0].Category != "sms" || recs[1].Category != "calls" || recs[1].Usage.String() != "5" ||
		recs[0].AccountSID != testSub {
		t.Fatalf("%+v %v", recs, err)
	}
	if n := f.count("GET /2010-04-01/Accounts/" + testSub + "/Usage/Records/ThisMonth.json"); n != 2 {
		t.Errorf("requests = %d", n)
	}

	// A server that pages forever is cut off.
	loop := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"usage_records":[],"next_page_uri":"/2010-04-01/Accounts/`+testSub+`/Usage/Records/Today.json?Page=2"}`)
	})
	c = newTestClient(t, testOptions(loop.URL))
	if _, err := c.UsageRecords(context.Background(), testSub, PeriodDaily); err == nil || loop.total() != maxRecordPages {
		t.Fatalf("endless paging: %v after %d requests", err, loop.total())
	}
}

func TestSetAccountStatusNotRepeatedBlindly(t *testing.T) {
	// The write lands but the answer is lost (a 500 after processing, or a
	// dropped connection): the client must not write again; the caller reads first.
	var writes atomic.Int32
	for _, kind := range []string{"500", "drop"} {
		writes.Store(0)
		f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
			writes.Add(1)
			if kind == "drop" {
				dropConnection(t, w)
				return
			}
			twilioError(w, 500, 20500, "Internal Server Error")
		})
		c := newTestClient(t, testOptions(f.URL))
		_, err := c.SetAccountStatus(context.Background(), testSub, StatusSuspended)
		if err == nil || !IsRetryable(err) {
			t.Fatalf("%s: err = %v, want a retryable error", kind, err)
		}
		if n := writes.Load(); n != 1 {
			t.Errorf("%s: %d writes, want 1", kind, n)
		}
	}
	// 429 is never processed: retried.
	writes.Store(0)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if writes.Add(1) < 3 {
			twilioError(w, 429, 20429, "Too Many Requests")
			return
		}
		r.ParseForm()
		writeJSON(w, 200, accountJSON(testSub, "tenant", r.PostForm.Get("Status")))
	})
	c := newTestClient(t, testOptions(f.URL))
	if a, err := c.SetAccountStatus(context.Background(), testSub, StatusSuspended); err != nil || a.Status != StatusSuspended || writes.Load() != 3 {
		t.Fatalf("after 429s: %+v %v, %d requests", a, err, writes.Load())
	}
}
