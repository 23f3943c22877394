package replay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/usagebreaker/usagebreaker/breaker"
	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/rules"
	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// The backtest replays the daily Usage Records Twilio kept against the rules
// in force and lists the trips they would have made. How the rules map onto
// daily history:
//
//   - daily rules compare each day's value with the threshold;
//   - monthly rules add up the days of each month (GMT) and trip on the
//     first day the month's total reaches the threshold; yearly rules the
//     same by year. Days before --from in the first month (year) are read
//     too, so the totals are whole; a trip before --from is not listed, and
//     its period then has no trip in the range (one trip per period);
//   - alltime rules add up from --from only (the history before it is not
//     read), and trip at most once.
//
// Each trip then goes through breaker.Decide, the live path's decision:
// dry run (the rule's or the global one), notify, and, for a suspension,
// the guard. The replay takes every matched subaccount as active each day
// (its status then is not known, and the history shows it kept using
// Twilio): a subaccount one rule suspends is already_suspended for the
// other rules that trip it the same day. Within a day, trips are taken in
// the order of the subaccount listing, then of the rules. The guard counts
// the suspensions (and holds) of the days its window spans: a window of a
// day or less spans the trip's day (the records have no time of day, so the
// day's trips may all have come within one window: the worst case); a longer
// window spans as many whole days, counting back from the trip's day. Held
// suspensions stay held for the window; nobody releases them in a replay.

// Source is what the backtest reads from Twilio: reads only.
type Source interface {
	ListSubaccounts(ctx context.Context) ([]twilioapi.Account, error)
	twilioapi.DailyUsageReader
}

// BacktestOptions say what to replay.
type BacktestOptions struct {
	Rules    *rules.Set
	From, To time.Time // days (GMT), both included
	DryRun   bool      // the global dry run
	Guard    breaker.GuardSettings
	// Concurrency is how many subaccounts are read at once (the Twilio
	// client caps the requests in flight on its own); default 8.
	Concurrency int
	// Progress, when set, is called after each subaccount's history is
	// read, with how many are done, of how many, and the calls made so far.
	Progress func(done, total, calls int)
}

// BacktestTrip is one trip the rules would have made.
type BacktestTrip struct {
	Rule        string
	AccountSID  string
	AccountName string
	Day         string // YYYY-MM-DD
	Value       decimal.Decimal
	Threshold   decimal.Decimal
	Outcome     string
	Detail      string
}

// BacktestResult is the trips, in order of day, subaccount and rule, and
// what it took to find them.
type BacktestResult struct {
	Trips       []BacktestTrip
	Subaccounts int // listed
	Matched     int // matched by at least one rule, and read
	Calls       int // daily usage record listings (each may be several pages)
}

// candidate is a trip before the decision: the value reached the limit.
type candidate struct {
	day   time.Time
	acct  int // index in the listing
	rule  int // index in the rule set
	value decimal.Decimal
}

// Backtest reads each matched subaccount's daily usage from o.From to o.To
// and returns the trips the rules would have made. It writes nothing.
func Backtest(ctx context.Context, src Source, o BacktestOptions) (BacktestResult, error) {
	var res BacktestResult
	from, to := dayOf(o.From), dayOf(o.To)
	if to.Before(from) {
		return res, fmt.Errorf("backtest: --to %s is before --from %s", to.Format(time.DateOnly), from.Format(time.DateOnly))
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	subs, err := src.ListSubaccounts(ctx)
	if err != nil {
		return res, fmt.Errorf("backtest: list subaccounts: %w", err)
	}
	res.Subaccounts = len(subs)
	type job struct {
		i     int
		rules []int
	}
	var jobs []job
	for i, a := range subs {
		var rs []int
		for j, r := range o.Rules.Rules {
			if r.Matches(a.SID, a.FriendlyName) {
				rs = append(rs, j)
			}
		}
		if len(rs) > 0 {
			jobs = append(jobs, job{i, rs})
		}
	}
	res.Matched = len(jobs)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
		cands    []candidate
		done     int
		next     = make(chan job)
	)
	for range min(o.Concurrency, max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				cs, calls, err := accountCandidates(ctx, src, o, subs[j.i], j.i, j.rules, from, to)
				mu.Lock()
				res.Calls += calls
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				cands = append(cands, cs...)
				done++
				if o.Progress != nil && err == nil {
					o.Progress(done, len(jobs), res.Calls)
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		select {
		case next <- j:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("backtest: %w", err)
	}
	res.Trips = decideAll(cands, subs, o)
	return res, nil
}

// accountCandidates reads one subaccount's daily history of the categories
// its rules watch and returns the days each rule's value reached its limit.
func accountCandidates(ctx context.Context, src Source, o BacktestOptions, acct twilioapi.Account, ai int, ruleIdx []int,
	from, to time.Time) ([]candidate, int, error) {
	start := from
	var cats []string
	for _, j := range ruleIdx {
		r := o.Rules.Rules[j]
		if !slices.Contains(cats, r.UsageCategory) {
			cats = append(cats, r.UsageCategory)
		}
		start = minDay(start, periodStart(r.Recurring, from))
	}
	days := int(to.Sub(start).Hours()/24) + 1
	byCat := map[string]map[string]twilioapi.UsageRecord{}
	for _, c := range cats {
		byCat[c] = map[string]twilioapi.UsageRecord{}
	}
	calls := 0
	add := func(recs []twilioapi.UsageRecord) {
		for _, r := range recs {
			if m := byCat[r.Category]; m != nil {
				rec := m[r.StartDate]
				rec.Count, rec.Usage, rec.Price = rec.Count.Add(r.Count), rec.Usage.Add(r.Usage), rec.Price.Add(r.Price)
				m[r.StartDate] = rec
			}
		}
	}
	s, e := start.Format(time.DateOnly), to.Format(time.DateOnly)
	if oneListing(len(cats), days) {
		calls++
		recs, err := src.DailyUsageRecords(ctx, acct.SID, "", s, e)
		if err != nil {
			return nil, calls, fmt.Errorf("backtest: %s (%s) daily usage: %w", acct.SID, acct.FriendlyName, err)
		}
		add(recs)
	} else {
		for _, c := range cats {
			calls++
			recs, err := src.DailyUsageRecords(ctx, acct.SID, c, s, e)
			if err != nil {
				return nil, calls, fmt.Errorf("backtest: %s (%s) daily %s usage: %w", acct.SID, acct.FriendlyName, c, err)
			}
			add(recs)
		}
	}

	active := acct
	active.Status = twilioapi.StatusActive
	var out []candidate
	for _, j := range ruleIdx {
		r := o.Rules.Rules[j]
		recs := byCat[r.UsageCategory]
		var (
			total   decimal.Decimal
			period  string
			tripped bool
		)
		first := start
		if r.Recurring == "alltime" {
			first = from
		}
		for d := first; !d.After(to); d = d.AddDate(0, 0, 1) {
			if p := breaker.PeriodKey(r.Recurring, d); p != period {
				period, total, tripped = p, decimal.Zero, false
			}
			total = total.Add(recs[d.Format(time.DateOnly)].Value(r.TriggerBy))
			if tripped {
				continue // one trip per period
			}
			if !breaker.Decide(breaker.Trip{Rule: r, Account: active, Value: total}).Tripped() {
				continue
			}
			tripped = true
			if !d.Before(from) {
				out = append(out, candidate{day: d, acct: ai, rule: j, value: total})
			}
		}
	}
	return out, calls, nil
}

// oneListing reports whether one listing of every category costs fewer
// calls than one listing per category. Without Category, Twilio lists a
// record per day for each of its usage categories (hundreds), in pages of
// 1000; with one, a page holds 1000 days. So per category is cheaper unless
// the rules watch many categories over few days.
func oneListing(categories, days int) bool {
	perCategory := categories * ceilDiv(days, 1000)
	all := ceilDiv(days*len(rules.UsageCategories()), 1000)
	return all < perCategory
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// decideAll takes the candidates in order of day, subaccount and rule
// through the decision and the guard.
func decideAll(cands []candidate, subs []twilioapi.Account, o BacktestOptions) []BacktestTrip {
	slices.SortFunc(cands, func(a, b candidate) int {
		if c := a.day.Compare(b.day); c != 0 {
			return c
		}
		if a.acct != b.acct {
			return a.acct - b.acct
		}
		return a.rule - b.rule
	})
	span := 1 // days the guard's window covers
	if w := o.Guard.Window; w > 24*time.Hour {
		span = int((w + 24*time.Hour - 1) / (24 * time.Hour))
	}
	type dayCount struct {
		day             time.Time
		suspended, held int
	}
	var history []dayCount // one per day with trips, in order
	var out []BacktestTrip
	var status map[int]*twilioapi.Account
	for i := 0; i < len(cands); {
		d := cands[i].day
		// The guard's ledger: the days of the window before this one.
		gl := &guardLedger{g: o.Guard}
		for _, h := range history {
			if d.Sub(h.day) < time.Duration(span)*24*time.Hour {
				gl.suspended += h.suspended
				gl.held += h.held
			}
		}
		before := *gl
		status = map[int]*twilioapi.Account{} // every subaccount starts the day active
		for ; i < len(cands) && cands[i].day.Equal(d); i++ {
			c := cands[i]
			a := status[c.acct]
			if a == nil {
				acct := subs[c.acct]
				acct.Status = twilioapi.StatusActive
				a = &acct
				status[c.acct] = a
			}
			r := o.Rules.Rules[c.rule]
			dec := decide(breaker.Trip{Rule: r, Value: c.value, DryRun: o.DryRun}, a, gl)
			out = append(out, BacktestTrip{Rule: r.Name, AccountSID: a.SID, AccountName: a.FriendlyName,
				Day: d.Format(time.DateOnly), Value: c.value, Threshold: r.Threshold, Outcome: string(dec.Outcome), Detail: dec.Detail})
		}
		history = append(history, dayCount{day: d, suspended: gl.suspended - before.suspended, held: gl.held - before.held})
	}
	return out
}

// periodStart is the first day of the period of a rule's recurring that day
// d falls in (alltime: d itself; its history before --from is not read).
func periodStart(recurring string, d time.Time) time.Time {
	switch recurring {
	case "monthly":
		return time.Date(d.Year(), d.Month(), 1, 0, 0, 0, 0, time.UTC)
	case "yearly":
		return time.Date(d.Year(), 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return d
}

func dayOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func minDay(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
