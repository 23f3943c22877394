package daemon_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// consoleClient is a signed-in console session over plain HTTP.
type consoleClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (cc *consoleClient) do(method, path string, form url.Values) (int, string) {
	cc.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, cc.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := cc.c.Do(req)
	if err != nil {
		cc.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (cc *consoleClient) csrf(page string) string {
	cc.t.Helper()
	m := csrfInput.FindStringSubmatch(page)
	if m == nil {
		cc.t.Fatalf("no CSRF token on:\n%s", page)
	}
	return m[1]
}

func signInConsole(t *testing.T, e *env, token string) (*consoleClient, int) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	cc := &consoleClient{t: t, base: e.admin, c: &http.Client{Jar: jar}}
	_, page := cc.do("GET", "/ui/signin", nil)
	code, _ := cc.do("POST", "/ui/signin", url.Values{"csrf": {cc.csrf(page)}, "token": {token}})
	return cc, code
}

// The console's pages over the real daemon, without a browser: what the
// adapter (daemon/console.go) reads from the store, the breaker and the
// metrics reaches the pages, and its actions take the admin API's paths.
func TestConsoleOverTheDaemon(t *testing.T) {
	e := startEnv(t, []string{"tenant-01", "tenant-02", "internal-qa"}, e2eRules, nil)

	if _, code := signInConsole(t, e, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	cc, code := signInConsole(t, e, "s3cretAdminToken")
	if code != 200 { // followed the redirect to the overview
		t.Fatalf("sign in: %d", code)
	}

	_, page := cc.do("GET", "/ui/", nil)
	for _, want := range []string{"3 subaccounts, 3 active", "attempts at Twilio", "Pending actions", "this process"} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	_, page = cc.do("GET", "/ui/coverage?q=internal-qa", nil)
	row := regexp.MustCompile(`(?s)<tr><td><a[^>]*>internal-qa</a>.*?</tr>`).FindString(page)
	// e2eRules: spend-daily excludes internal-*, sms-monthly is tenant-0*, calls-notify includes internal-*.
	if strings.Count(row, ">not matched</span>") != 2 || strings.Count(row, ">guarded</span>") != 1 {
		t.Errorf("internal-qa's row: %s", row)
	}

	e.wait(e.addUsage("tenant-01", "totalprice", "", "60"))
	e.waitFor("tenant-01's suspension recorded", func() bool {
		incs := e.incidents("?account=" + e.accounts["tenant-01"].SID)
		return len(incs) == 1 && incs[0].Outcome == "suspended"
	})
	_, page = cc.do("GET", "/ui/rules", nil)
	if !regexp.MustCompile(`(?s)spend-daily.*?<a href="/ui/incidents\?rule=spend-daily">1</a>`).MatchString(page) {
		t.Errorf("rules page: spend-daily has no trip this period:\n%s", page)
	}
	_, page = cc.do("GET", "/ui/incidents", nil)
	id := regexp.MustCompile(`href="/ui/incidents/(\d+)"`).FindStringSubmatch(page)
	if id == nil {
		t.Fatalf("no incident listed:\n%s", page)
	}
	_, page = cc.do("GET", "/ui/incidents/"+id[1], nil)
	if !strings.Contains(page, ">Reactivate</button>") {
		t.Fatalf("no Reactivate on the suspended incident:\n%s", page)
	}

	// The admin API and the console refuse the same way.
	_, body := cc.do("POST", "/ui/incidents/"+id[1]+"/reactivate", url.Values{"csrf": {cc.csrf(page)}, "reason": {strings.Repeat("x", 1001)}})
	if !strings.Contains(body, "Reactivation refused: the reason is longer than 1000 bytes") &&
		!strings.Contains(body, "The reason is longer than 1000 bytes") {
		t.Errorf("long reason:\n%s", body)
	}
	code, _ = cc.do("POST", "/ui/incidents/"+id[1]+"/reactivate", url.Values{"csrf": {cc.csrf(page)}, "reason": {"paid"}})
	if code != 200 {
		t.Fatalf("reactivate: %d", code)
	}
	if st := e.account("tenant-01").Status; st != "active" {
		t.Fatalf("tenant-01 is %s", st)
	}
	r := e.incidents("?account=" + e.accounts["tenant-01"].SID)[0].Reactivation
	if r == nil || r.Reason != "paid" || !strings.HasPrefix(r.Actor, "console from 127.0.0.1:") {
		t.Fatalf("audit: %+v", r)
	}
	if !strings.Contains(e.logs.String(), `"msg":"subaccount reactivated"`) {
		t.Error("the reactivation is not logged as through the admin API")
	}
}
