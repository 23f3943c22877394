package twiliosim

import (
	"net/http"
	"regexp"
	"strconv"
	"time"
)

const dateLayout = "2006-01-02"

// maxRecordDays bounds the days a usage-records request may cover.
const maxRecordDays = 3660

var relDateRE = regexp.MustCompile(`^([+-]\d{1,4})days$`)

// parseDate reads YYYY-MM-DD or an offset like -30days (relative to today, GMT).
func parseDate(v string, today time.Time) (time.Time, bool) {
	if m := relDateRE.FindStringSubmatch(v); m != nil {
		n, _ := strconv.Atoi(m[1])
		return today.AddDate(0, 0, n), true
	}
	t, err := time.Parse(dateLayout, v)
	return t, err == nil
}

func day(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// period is one usage record's time span and how to read it from a usage book.
type period struct {
	start, end time.Time
	key        string // a period key, or "" to sum the days from start to end
}

func (b *usageBook) read(cat string, p period) Usage {
	if p.key != "" {
		return b.get(cat, p.key)
	}
	var u Usage
	m := b.cats[cat]
	for d := p.start; !d.After(p.end); d = d.AddDate(0, 0, 1) {
		u = u.add(m["d:"+d.Format(dateLayout)])
	}
	return u
}

// readRecords serves Usage/Records.json and its subresources (Today,
// Yesterday, ThisMonth, LastMonth, Daily, Monthly, Yearly, AllTime).
func (s *Sim) readRecords(w http.ResponseWriter, r *http.Request, rt route) {
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
	now := s.nowLocked()
	today := day(now)
	created := day(a.DateCreated)
	q := r.Form
	var start, end time.Time
	hasStart, hasEnd := q.Get("StartDate") != "", q.Get("EndDate") != ""
	if hasStart {
		var ok bool
		if start, ok = parseDate(q.Get("StartDate"), today); !ok {
			s.mu.Unlock()
			writeError(w, errParam("StartDate must be YYYY-MM-DD or an offset like -30days"))
			return
		}
	}
	end = today
	if hasEnd {
		var ok bool
		if end, ok = parseDate(q.Get("EndDate"), today); !ok {
			s.mu.Unlock()
			writeError(w, errParam("EndDate must be YYYY-MM-DD or an offset like -30days"))
			return
		}
	}
	includeSubs := true
	if v := q.Get("IncludeSubaccounts"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.mu.Unlock()
			writeError(w, errParam("IncludeSubaccounts must be true or false"))
			return
		}
		includeSubs = b
	}
	book := a.usage
	if a == s.parent && includeSubs {
		book = s.tree // for a subaccount IncludeSubaccounts means itself only
	}

	var periods []period
	switch rt.kind {
	case "":
		if hasStart || hasEnd {
			if !hasStart {
				start = created
			}
			periods = []period{{start: start, end: end}}
		} else {
			periods = []period{{start: created, end: today, key: "all"}}
		}
	case "AllTime":
		periods = []period{{start: created, end: today, key: "all"}}
	case "Today":
		periods = []period{{start: today, end: today, key: "d:" + today.Format(dateLayout)}}
	case "Yesterday":
		y := today.AddDate(0, 0, -1)
		periods = []period{{start: y, end: y, key: "d:" + y.Format(dateLayout)}}
	case "ThisMonth":
		first := today.AddDate(0, 0, 1-today.Day())
		periods = []period{{start: first, end: today, key: "m:" + today.Format("2006-01")}}
	case "LastMonth":
		first := today.AddDate(0, 0, 1-today.Day()).AddDate(0, -1, 0)
		periods = []period{{start: first, end: first.AddDate(0, 1, -1), key: "m:" + first.Format("2006-01")}}
	case "Daily":
		if !hasStart {
			start = end.AddDate(0, 0, -30)
			if created.After(start) && !created.After(end) {
				start = created
			}
		}
		for d := start; !d.After(end) && len(periods) <= maxRecordDays; d = d.AddDate(0, 0, 1) {
			periods = append(periods, period{start: d, end: d, key: "d:" + d.Format(dateLayout)})
		}
	case "Monthly":
		if !hasStart {
			start = created
		}
		for m := start.AddDate(0, 0, 1-start.Day()); !m.After(end) && len(periods) <= maxRecordDays; m = m.AddDate(0, 1, 0) {
			periods = append(periods, period{start: m, end: minTime(m.AddDate(0, 1, -1), today), key: "m:" + m.Format("2006-01")})
		}
	case "Yearly":
		if !hasStart {
			start = created
		}
		for y := start.Year(); y <= end.Year() && len(periods) <= maxRecordDays; y++ {
			first := time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC)
			periods = append(periods, period{start: first, end: minTime(time.Date(y, 12, 31, 0, 0, 0, 0, time.UTC), today),
				key: "y:" + strconv.Itoa(y)})
		}
	}
	if end.Before(start) && (hasStart || hasEnd) {
		s.mu.Unlock()
		writeError(w, errParam("EndDate is before StartDate"))
		return
	}
	if len(periods) > maxRecordDays || (len(periods) == 1 && periods[0].key == "" && periods[0].end.Sub(periods[0].start) > maxRecordDays*24*time.Hour) {
		s.mu.Unlock()
		writeError(w, errParam("the date range is too long"))
		return
	}
	cats := []string{q.Get("Category")}
	if cats[0] == "" {
		cats = book.categories()
	}
	// Records are positional (period, then category): paged by Page only.
	total := len(periods) * len(cats)
	from := min(p.page*p.size, total)
	to := min(from+p.size, total)
	list := make([]recordJSON, 0, to-from)
	for i := from; i < to; i++ {
		per, cat := periods[i/len(cats)], cats[i%len(cats)]
		list = append(list, renderRecord(a.SID, rt.kind, cat, book.read(cat, per),
			per.start.Format(dateLayout), per.end.Format(dateLayout), now))
	}
	s.mu.Unlock()
	path := "/2010-04-01/Accounts/" + rt.acct + "/Usage/Records.json"
	if rt.kind != "" {
		path = "/2010-04-01/Accounts/" + rt.acct + "/Usage/Records/" + rt.kind + ".json"
	}
	l := listURI{path: path, filters: [][2]string{{"Category", q.Get("Category")}, {"StartDate", q.Get("StartDate")},
		{"EndDate", q.Get("EndDate")}, {"IncludeSubaccounts", q.Get("IncludeSubaccounts")}}}
	p.token = ""
	writeJSON(w, http.StatusOK, envelope("usage_records", list, len(list), l, p, to < total, from > 0, "", ""))
}
