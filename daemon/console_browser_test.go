package daemon_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
)

// The operator console, driven in headless Chromium against the real daemon
// and the simulator.
//
// Without a browser these tests skip, saying why;
// USAGEBREAKER_REQUIRE_BROWSER_TESTS=1 (CI) turns the skip into a failure.
// USAGEBREAKER_UPDATE_SCREENSHOTS=1 writes the screenshots the docs show
// (docs/img/console-*.png).

const consoleRules = `rules:
  - name: spend-daily
    description: Stop tenants that spend more than $50 a day
    accounts:
      include: ["tenant-*"]
    usage_category: totalprice
    trigger_by: price
    recurring: daily
    threshold: "50"
    action: suspend
  - name: sms-monthly
    description: Report tenants over 10,000 SMS a month
    accounts:
      include: ["tenant-0*", "internal-*"]
    usage_category: sms
    trigger_by: count
    recurring: monthly
    threshold: 10000
    action: suspend
    dry_run: true
`

// browser starts a fresh headless Chromium for t, or skips t without one.
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		why := "no Chromium on PATH (Debian: apt-get install chromium), so the console's browser tests cannot run"
		if os.Getenv("USAGEBREAKER_REQUIRE_BROWSER_TESTS") == "1" {
			t.Fatal(why + "; USAGEBREAKER_REQUIRE_BROWSER_TESTS=1 requires them")
		}
		t.Skip(why)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), // a fresh profile
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	// The browser's log goes to the test's, but not once the test ends
	// (registered last, this cleanup runs first).
	var ended atomic.Bool
	logf := func(format string, args ...any) {
		if !ended.Load() {
			t.Logf(format, args...)
		}
	}
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(logf), chromedp.WithErrorf(logf))
	t.Cleanup(cancelCtx)
	t.Cleanup(func() { ended.Store(true) })
	// The first run starts the browser, which lives as long as ctx: no
	// timeout on it (each step gets its own, in do).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// stepTimeout bounds one browser step. Generous: CI is a loaded 2-core
// machine. Every step waits for an element; none sleeps.
const stepTimeout = time.Minute

// do runs browser steps in order.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one browser step that returns a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// screenshot takes the whole page; USAGEBREAKER_UPDATE_SCREENSHOTS=1 saves it
// as docs/img/{name}.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	do(t, ctx, "viewport", chromedp.EmulateViewport(1280, 800))
	png := get(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if os.Getenv("USAGEBREAKER_UPDATE_SCREENSHOTS") != "1" {
		return
	}
	path := filepath.Join("..", "docs", "img", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// rowText is the text of the coverage row of the subaccount named name.
func rowText(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	s := get(t, ctx, "row "+name, chromedp.Text(chromedp.Search(`//table[contains(@class,"coverage")]//tr[td/a[text()="`+name+`"]]`)))
	return strings.Join(strings.Fields(s), " ")
}

func TestConsoleInBrowser(t *testing.T) {
	ctx := browser(t)
	names := []string{"tenant-01", "tenant-02", "tenant-03", "tenant-04", "tenant-05", "internal-qa", "other-corp", "tenant-suspended"}
	e := startEnvOpts(t, names, consoleRules, envOpts{
		extraConfig: "guard:\n  max_suspensions: 1\n  window: 1h\n",
		setup: func(e *env) {
			// tenant-suspended is suspended before the daemon starts.
			if code, body := e.twilioPost("/2010-04-01/Accounts/"+e.accounts["tenant-suspended"].SID+".json",
				url.Values{"Status": {"suspended"}}); code != 200 {
				t.Fatalf("suspend: %d %s", code, body)
			}
			// tenant-04's triggers cannot be created: both rules are missing.
			sid4 := e.accounts["tenant-04"].SID
			if _, err := e.sim.AddFault(twiliosim.Fault{Path: "^/2010-04-01/Accounts/" + sid4 + "/Usage/Triggers\\.json$",
				Method: "POST", Status: 400, Times: -1, Message: "simulated: cannot create triggers on this account"}); err != nil {
				t.Fatal(err)
			}
			// tenant-05 has spend-daily's trigger at the wrong threshold, and
			// its replacement fails once: drifted.
			sid5 := e.accounts["tenant-05"].SID
			if code, body := e.twilioPost("/2010-04-01/Accounts/"+sid5+"/Usage/Triggers.json", url.Values{
				"FriendlyName": {"usagebreaker:rel:spend-daily"}, "UsageCategory": {"totalprice"}, "TriggerBy": {"price"},
				"Recurring": {"daily"}, "TriggerValue": {"40"}, "CallbackUrl": {e.public + "/twilio/usage-triggers/spend-daily"},
				"CallbackMethod": {"POST"}}); code != 201 {
				t.Fatalf("create drifted trigger: %d %s", code, body)
			}
			if _, err := e.sim.AddFault(twiliosim.Fault{Path: "^/2010-04-01/Accounts/" + sid5 + "/Usage/Triggers\\.json$",
				Method: "POST", Status: 400, Times: 1, Message: "simulated: one failed create"}); err != nil {
				t.Fatal(err)
			}
		},
	})
	ui := e.admin + "/ui/"

	t.Run("sign in; a wrong token is refused", func(t *testing.T) {
		do(t, ctx, "open the console",
			chromedp.Navigate(ui+"coverage"), // no session: sent to sign in
			chromedp.WaitVisible(chromedp.CSS(`#token`)))
		loc := get(t, ctx, "location", chromedp.Location())
		do(t, ctx, "wrong token",
			chromedp.SendKeys(chromedp.CSS(`#token`), "not-the-token"),
			chromedp.Click(chromedp.CSS(`form[action="/ui/signin"] button`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(@class,"flash-error")][contains(., "Wrong token")]`)))
		if !strings.HasSuffix(loc, "/ui/signin") {
			t.Errorf("without a session the console went to %s, want /ui/signin", loc)
		}
		body := get(t, ctx, "nothing shown", chromedp.Text(chromedp.CSS(`body`)))
		if strings.Contains(body, "tenant-") || strings.Contains(body, "Coverage") {
			t.Fatalf("the sign-in page shows data:\n%s", body)
		}
		do(t, ctx, "right token",
			chromedp.SendKeys(chromedp.CSS(`#token`), "s3cretAdminToken"),
			chromedp.Click(chromedp.CSS(`form[action="/ui/signin"] button`)),
			chromedp.WaitVisible(chromedp.Search(`//h1[starts-with(., "Overview")]`)))
		body = get(t, ctx, "overview", chromedp.Text(chromedp.CSS(`main`)))
		for _, want := range []string{"Last reconcile", "8 subaccounts", "Twilio errors", "Pending actions", "of at most 1 suspensions"} {
			if !strings.Contains(body, want) {
				t.Errorf("the overview lacks %q:\n%s", want, body)
			}
		}
	})

	t.Run("coverage shows each subaccount's state", func(t *testing.T) {
		do(t, ctx, "coverage",
			chromedp.Navigate(ui+"coverage"),
			chromedp.WaitVisible(chromedp.CSS(`table.coverage`)))
		want := map[string]string{ // columns: spend-daily, sms-monthly
			"tenant-04":        "active unguarded missing missing",
			"tenant-05":        "active unguarded drifted guarded",
			"other-corp":       "active unguarded: no rule matches not matched not matched",
			"tenant-suspended": "suspended not active suspended not matched",
			"internal-qa":      "active guarded not matched guarded",
			"tenant-01":        "active guarded guarded guarded",
			"tenant-02":        "active guarded guarded guarded",
			"tenant-03":        "active guarded guarded guarded",
		}
		for name, states := range want {
			row := rowText(t, ctx, name)
			if !strings.Contains(row, states) {
				t.Errorf("%s: row %q, want %q", name, row, states)
			}
		}
		first := get(t, ctx, "first row", chromedp.Text(chromedp.CSS(`table.coverage tbody tr td a`)))
		if first != "tenant-04" {
			t.Errorf("first row %q: unguarded subaccounts come first", first)
		}
		if row := rowText(t, ctx, "tenant-04"); !strings.Contains(row, "simulated: cannot create triggers") {
			t.Errorf("tenant-04 does not say why: %q", row)
		}
		screenshot(t, ctx, "console-coverage.png")

		do(t, ctx, "filter",
			chromedp.SetValue(chromedp.CSS(`select[name=state]`), "unguarded"),
			chromedp.Click(chromedp.CSS(`form.filter button`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(., "of 3 matching")]`)))
		body := get(t, ctx, "filtered", chromedp.Text(chromedp.CSS(`table.coverage tbody`)))
		if strings.Contains(body, "tenant-01") || !strings.Contains(body, "other-corp") {
			t.Errorf("state=unguarded shows:\n%s", body)
		}
	})

	// tenant-01 is suspended; tenant-02 is then held by the guard (at most 1).
	e.addUsage("tenant-01", "totalprice", "", "60")
	e.waitFor("tenant-01's suspension recorded", func() bool {
		incs := e.incidents("?account=" + e.accounts["tenant-01"].SID)
		return len(incs) == 1 && incs[0].Outcome == "suspended"
	})
	e.addUsage("tenant-02", "totalprice", "", "75")
	e.waitFor("tenant-02 held", func() bool {
		incs := e.incidents("?account=" + e.accounts["tenant-02"].SID)
		return len(incs) == 1 && incs[0].Held
	})

	t.Run("a held suspension is released by clicking Release", func(t *testing.T) {
		do(t, ctx, "guard",
			chromedp.Navigate(ui+"guard"),
			chromedp.WaitVisible(chromedp.Search(`//td[contains(., "tenant-02")]`)),
			chromedp.Click(chromedp.Search(`//button[text()="Release"]`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(@class,"flash")][contains(., "Released 1 held suspension")]`)))
		body := get(t, ctx, "guard page", chromedp.Text(chromedp.CSS(`main`)))
		if strings.Contains(body, "tenant-02") {
			t.Errorf("tenant-02 still listed as held:\n%s", body)
		}
		e.waitFor("tenant-02 suspended", func() bool { return e.account("tenant-02").Status == "suspended" })
		if !strings.Contains(e.logs.String(), `"msg":"guard released: held suspensions run now","released":1,"by":"console from 127.0.0.1:`) {
			t.Error("the release is not recorded with who did it")
		}
	})

	incident := func() string {
		incs := e.incidents("?account=" + e.accounts["tenant-01"].SID)
		if len(incs) != 1 {
			t.Fatalf("tenant-01 incidents: %+v", incs)
		}
		return ui + "incidents/" + strconv.FormatInt(incs[0].ID, 10)
	}()

	t.Run("a POST without the CSRF token is refused", func(t *testing.T) {
		do(t, ctx, "forged form",
			chromedp.Navigate(incident),
			chromedp.WaitVisible(chromedp.CSS(`#reason`)),
			// What a forged form lacks: this session's token.
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				_, err := chromedp.Evaluate[bool](`document.querySelector('form[action$="/reactivate"] input[name=csrf]').remove() === undefined`)(ctx, tg)
				return err
			}),
			chromedp.SendKeys(chromedp.CSS(`#reason`), "forged"),
			chromedp.Click(chromedp.Search(`//button[text()="Reactivate"]`)),
			chromedp.WaitVisible(chromedp.Search(`//h1[text()="403 Forbidden"]`)))
		body := get(t, ctx, "refusal", chromedp.Text(chromedp.CSS(`main`)))
		if !strings.Contains(body, "CSRF") {
			t.Errorf("refusal page: %s", body)
		}
		if st := e.account("tenant-01").Status; st != "suspended" {
			t.Fatalf("tenant-01 is %s after a refused form", st)
		}
		if incs := e.incidents("?account=" + e.accounts["tenant-01"].SID); incs[0].Reactivation != nil {
			t.Fatalf("a refused form recorded a reactivation: %+v", incs[0].Reactivation)
		}
	})

	t.Run("a suspended subaccount is reactivated with a reason by clicking Reactivate", func(t *testing.T) {
		do(t, ctx, "reactivate",
			chromedp.Navigate(ui+"incidents"),
			chromedp.WaitVisible(chromedp.Search(`//a[text()="tenant-01"]`)),
			chromedp.Click(chromedp.Search(`//a[text()="tenant-01"]`)),
			chromedp.WaitVisible(chromedp.CSS(`#reason`)),
			chromedp.SendKeys(chromedp.CSS(`#reason`), "customer paid the invoice"),
			chromedp.Click(chromedp.Search(`//button[text()="Reactivate"]`)),
			chromedp.WaitVisible(chromedp.Search(`//p[contains(@class,"flash")][contains(., "Reactivated tenant-01")]`)))
		body := get(t, ctx, "timeline", chromedp.Text(chromedp.CSS(`ol.timeline`)))
		for _, want := range []string{"Firing: totalprice at 60", "Action trip done: suspended", "Reactivated (manual)",
			"by console from 127.0.0.1:", "reason: customer paid the invoice"} {
			if !strings.Contains(body, want) {
				t.Errorf("the timeline lacks %q:\n%s", want, body)
			}
		}
		if st := e.account("tenant-01").Status; st != "active" {
			t.Fatalf("tenant-01 is %s", st)
		}
		incs := e.incidents("?account=" + e.accounts["tenant-01"].SID)
		r := incs[0].Reactivation
		if r == nil || r.Reason != "customer paid the invoice" || !strings.HasPrefix(r.Actor, "console from 127.0.0.1:") {
			t.Fatalf("audit: %+v", r)
		}
		if n := get(t, ctx, "no second reactivation", chromedp.Evaluate[int](`document.querySelectorAll('form[action$="/reactivate"]').length`)); n != 0 {
			t.Error("Reactivate still offered")
		}
		screenshot(t, ctx, "console-incident.png")
	})
}
