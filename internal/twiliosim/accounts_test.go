package twiliosim

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twilio/twilio-go/client"
	openapi "github.com/twilio/twilio-go/rest/api/v2010"
)

func TestListAccountsWithTwilioGoOver2500Subaccounts(t *testing.T) {
	e := newEnv(t)
	want := map[string]bool{e.parent.SID: true}
	for i := range 2500 {
		want[e.sim.CreateSubaccount(fmt.Sprintf("tenant-%04d", i)).SID] = true
	}
	api := e.parentAPI()
	for _, size := range []int{0, 1000, 333} {
		params := &openapi.ListAccountParams{}
		if size > 0 {
			params.SetPageSize(size)
		}
		before := e.sim.Requests()[OpAccountsList]
		got, err := api.ListAccount(params)
		if err != nil {
			t.Fatalf("PageSize %d: %v", size, err)
		}
		if len(got) != len(want) {
			t.Fatalf("PageSize %d: %d accounts, want %d", size, len(got), len(want))
		}
		seen := map[string]bool{}
		for _, a := range got {
			if !want[*a.Sid] || seen[*a.Sid] {
				t.Fatalf("PageSize %d: unexpected or repeated account %s", size, *a.Sid)
			}
			seen[*a.Sid] = true
			if a.AuthToken == nil || *a.AuthToken == "" || *a.OwnerAccountSid != e.parent.SID {
				t.Fatalf("account %s lacks auth_token or owner", *a.Sid)
			}
		}
		pageSize := max(size, 0)
		if pageSize == 0 {
			pageSize = 50
		}
		wantPages := (len(want) + pageSize - 1) / pageSize
		if n := e.sim.Requests()[OpAccountsList] - before; n != wantPages {
			t.Errorf("PageSize %d: %d list requests, want %d", size, n, wantPages)
		}
	}
	if got := *mustList(t, api)[0].Sid; got != e.parent.SID {
		t.Errorf("the parent is not listed first: %s", got)
	}
}

func mustList(t *testing.T, api *openapi.ApiService) []openapi.ApiV2010Account {
	t.Helper()
	p := &openapi.ListAccountParams{}
	p.SetPageSize(5)
	p.SetLimit(5)
	got, err := api.ListAccount(p)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

type accountsPage struct {
	Accounts        []struct{ Sid, Status, FriendlyName string }
	NextPageURI     *string `json:"next_page_uri"`
	PreviousPageURI *string `json:"previous_page_uri"`
	FirstPageURI    string  `json:"first_page_uri"`
	URI             string  `json:"uri"`
	Page            int     `json:"page"`
	PageSize        int     `json:"page_size"`
	Start           int     `json:"start"`
	End             int     `json:"end"`
}

func (e *env) accountsPage(uri string) accountsPage {
	e.t.Helper()
	a := e.asParent(http.MethodGet, uri, nil)
	wantStatus(e.t, a, http.StatusOK)
	var p accountsPage
	if err := jsonUnmarshal(a.body, &p); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func TestAccountsRawPagingIsStableWhileAccountsAreAdded(t *testing.T) {
	e := newEnv(t)
	for i := range 2500 {
		e.sim.CreateSubaccount(fmt.Sprintf("tenant-%d", i))
	}
	p := e.accountsPage("/2010-04-01/Accounts.json?PageSize=1000")
	if p.Page != 0 || p.PageSize != 1000 || p.Start != 0 || p.End != 999 || len(p.Accounts) != 1000 ||
		p.PreviousPageURI != nil || p.NextPageURI == nil || p.FirstPageURI != "/2010-04-01/Accounts.json?PageSize=1000&Page=0" {
		t.Fatalf("first page envelope: %+v", p)
	}
	if !strings.Contains(*p.NextPageURI, "Page=1&PageToken=PA"+p.Accounts[999].Sid) {
		t.Fatalf("next_page_uri %q does not carry a PA token of the last SID", *p.NextPageURI)
	}
	seen := map[string]int{}
	for _, a := range p.Accounts {
		seen[a.Sid]++
	}
	// Accounts created between pages show up at the end, without shifting anything.
	added := map[string]bool{}
	for i := range 7 {
		added[e.sim.CreateSubaccount(fmt.Sprintf("late-%d", i)).SID] = true
	}
	page1 := p
	pages := 1
	for p.NextPageURI != nil {
		p = e.accountsPage(*p.NextPageURI)
		pages++
		for _, a := range p.Accounts {
			seen[a.Sid]++
		}
		if pages == 2 {
			if p.Start != 1000 || p.End != 1999 || p.PreviousPageURI == nil {
				t.Fatalf("second page envelope: %+v", p)
			}
			back := e.accountsPage(*p.PreviousPageURI)
			if len(back.Accounts) != 1000 || back.Accounts[0].Sid != page1.Accounts[0].Sid ||
				back.Accounts[999].Sid != page1.Accounts[999].Sid {
				t.Fatalf("previous_page_uri does not lead back to the first page")
			}
		}
	}
	if pages != 3 || len(seen) != 2501+7 {
		t.Fatalf("%d pages, %d accounts; want 3 pages, %d accounts", pages, len(seen), 2501+7)
	}
	for sid, n := range seen {
		if n != 1 {
			t.Fatalf("account %s listed %d times", sid, n)
		}
	}
	for sid := range added {
		if seen[sid] != 1 {
			t.Fatalf("account %s created while paging was not listed", sid)
		}
	}
	if a := e.asParent(http.MethodGet, "/2010-04-01/Accounts.json", url.Values{"PageToken": {"PAnope"}}); a.status != http.StatusBadRequest {
		t.Fatalf("bad PageToken: status %d", a.status)
	}
}

func TestAccountFiltersAndFetch(t *testing.T) {
	e := newEnv(t)
	var dups []Account
	for range 3 {
		dups = append(dups, e.sim.CreateSubaccount("dup"))
	}
	other := e.sim.CreateSubaccount("other")
	api := e.parentAPI()

	p := &openapi.ListAccountParams{}
	p.SetFriendlyName("dup")
	got, err := api.ListAccount(p)
	if err != nil || len(got) != 3 || *got[0].Sid != dups[0].SID || *got[2].Sid != dups[2].SID {
		t.Fatalf("FriendlyName filter: %d accounts, %v", len(got), err)
	}
	upd := &openapi.UpdateAccountParams{}
	upd.SetStatus("suspended")
	if _, err := api.UpdateAccount(dups[1].SID, upd); err != nil {
		t.Fatal(err)
	}
	p = &openapi.ListAccountParams{}
	p.SetStatus("suspended")
	got, err = api.ListAccount(p)
	if err != nil || len(got) != 1 || *got[0].Sid != dups[1].SID {
		t.Fatalf("Status filter: %d accounts, %v", len(got), err)
	}
	// Renaming moves an account between FriendlyName filters.
	ren := &openapi.UpdateAccountParams{}
	ren.SetFriendlyName("dup")
	if _, err := api.UpdateAccount(other.SID, ren); err != nil {
		t.Fatal(err)
	}
	p = &openapi.ListAccountParams{}
	p.SetFriendlyName("dup")
	if got, _ = api.ListAccount(p); len(got) != 4 || *got[3].Sid != other.SID {
		t.Fatalf("after rename, FriendlyName=dup lists %d accounts", len(got))
	}

	a, err := api.FetchAccount(dups[0].SID)
	if err != nil {
		t.Fatal(err)
	}
	if *a.Sid != dups[0].SID || *a.AuthToken != dups[0].AuthToken || *a.Status != "active" ||
		*a.OwnerAccountSid != e.parent.SID || *a.Type != "Full" || *a.FriendlyName != "dup" ||
		*a.Uri != "/2010-04-01/Accounts/"+dups[0].SID+".json" || *a.DateCreated != "Tue, 21 Apr 2026 09:14:35 +0000" {
		t.Fatalf("fetched account: %+v", a)
	}
	if (*a.SubresourceUris)["usage"] != "/2010-04-01/Accounts/"+dups[0].SID+"/Usage.json" {
		t.Fatalf("subresource_uris: %v", *a.SubresourceUris)
	}
	parent, err := api.FetchAccount(e.parent.SID)
	if err != nil || *parent.OwnerAccountSid != e.parent.SID {
		t.Fatalf("parent fetch: %v %v", parent, err)
	}
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("a")
	other := e.sim.CreateSubaccount("b")
	path := "/2010-04-01/Accounts/" + sub.SID + ".json"

	a := e.do(http.MethodGet, path, nil, "", "")
	wantError(t, a, http.StatusUnauthorized, 20003)
	if a.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	wantError(t, e.do(http.MethodGet, path, nil, e.parent.SID, "wrong"), http.StatusUnauthorized, 20003)
	wantError(t, e.do(http.MethodGet, path, nil, "AC0000000000000000000000000000dead", e.parent.AuthToken), http.StatusUnauthorized, 20003)
	// A subaccount sees itself only.
	wantStatus(t, e.do(http.MethodGet, path, nil, sub.SID, sub.AuthToken), http.StatusOK)
	wantError(t, e.do(http.MethodGet, "/2010-04-01/Accounts/"+other.SID+".json", nil, sub.SID, sub.AuthToken), http.StatusUnauthorized, 20003)
	wantError(t, e.do(http.MethodGet, "/2010-04-01/Accounts/"+other.SID+"/Usage/Triggers.json", nil, sub.SID, sub.AuthToken), http.StatusUnauthorized, 20003)
	wantError(t, e.do(http.MethodGet, "/2010-04-01/Accounts/"+e.parent.SID+".json", nil, sub.SID, sub.AuthToken), http.StatusUnauthorized, 20003)
	list := e.do(http.MethodGet, "/2010-04-01/Accounts.json", nil, sub.SID, sub.AuthToken)
	wantStatus(t, list, http.StatusOK)
	if accts := list.json(t)["accounts"].([]any); len(accts) != 1 || accts[0].(map[string]any)["sid"] != sub.SID {
		t.Fatalf("a subaccount lists %v", accts)
	}
	// twilio-go sees the 401 as a TwilioRestError.
	_, err := e.api(e.parent.SID, "wrongtoken").FetchAccount(sub.SID)
	var tre *client.TwilioRestError
	if !errors.As(err, &tre) || tre.Status != 401 || tre.Code != 20003 {
		t.Fatalf("twilio-go error %v", err)
	}
	// The parent reading an account that does not exist: 404.
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/AC0000000000000000000000000000beef.json", nil), http.StatusNotFound, 20404)
	// Unknown paths and methods.
	wantError(t, e.asParent(http.MethodGet, "/2010-04-01/Accounts/"+sub.SID+"/Nope.json", nil), http.StatusNotFound, 20404)
	wantError(t, e.asParent(http.MethodDelete, path, nil), http.StatusMethodNotAllowed, 20004)
	// A closed or suspended account's own credentials stop working.
	if err := e.sim.SetStatus(sub.SID, StatusSuspended); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(http.MethodGet, path, nil, sub.SID, sub.AuthToken), http.StatusUnauthorized, 20003)
	// ...while the parent still reaches it.
	wantStatus(t, e.asParent(http.MethodGet, path, nil), http.StatusOK)
	if n := e.sim.Requests()[OpUnknown]; n != 2 {
		t.Errorf("unknown requests counted %d, want 2", n)
	}
}

func TestAccountStatusRules(t *testing.T) {
	e := newEnv(t)
	sub := e.sim.CreateSubaccount("victim")
	path := "/2010-04-01/Accounts/" + sub.SID + ".json"
	parentPath := "/2010-04-01/Accounts/" + e.parent.SID + ".json"

	wantError(t, e.asParent(http.MethodPost, parentPath, url.Values{"Status": {"suspended"}}), http.StatusBadRequest, 21477)
	wantError(t, e.asParent(http.MethodPost, parentPath, url.Values{"Status": {"closed"}}), http.StatusBadRequest, 21477)
	wantError(t, e.asParent(http.MethodPost, path, url.Values{"Status": {"paused"}}), http.StatusBadRequest, 70002)
	// A subaccount cannot change its own status.
	wantError(t, e.do(http.MethodPost, path, url.Values{"Status": {"suspended"}}, sub.SID, sub.AuthToken), http.StatusUnauthorized, 20003)

	steps := []string{"suspended", "suspended", "active", "closed"}
	for i, st := range steps {
		e.sim.Advance(time.Minute)
		a := e.asParent(http.MethodPost, path, url.Values{"Status": {st}})
		wantStatus(t, a, http.StatusOK)
		if got := a.json(t)["status"]; got != st {
			t.Fatalf("step %d: status %v", i, got)
		}
	}
	// Closed is final.
	for _, st := range []string{"active", "suspended"} {
		wantError(t, e.asParent(http.MethodPost, path, url.Values{"Status": {st}}), http.StatusBadRequest, 21479)
	}
	if err := e.sim.SetStatus(sub.SID, StatusActive); err == nil {
		t.Fatal("SetStatus reopened a closed account")
	}
	acct, _ := e.sim.Account(sub.SID)
	if acct.Status != StatusClosed {
		t.Fatalf("status %s", acct.Status)
	}
	var hist []string
	for _, h := range e.sim.State().Accounts[0].StatusHistory {
		hist = append(hist, h.Status+"@"+h.At.Format("15:04"))
	}
	if got := strings.Join(hist, ","); got != "active@09:14,suspended@09:15,suspended@09:16,active@09:17,closed@09:18" {
		t.Fatalf("status history %s", got)
	}
	// Subaccounts are created by the parent only.
	other := e.sim.CreateSubaccount("other")
	wantError(t, e.do(http.MethodPost, "/2010-04-01/Accounts.json", url.Values{"FriendlyName": {"x"}}, other.SID, other.AuthToken), http.StatusBadRequest, 21101)
	created := e.asParent(http.MethodPost, "/2010-04-01/Accounts.json", url.Values{"FriendlyName": {"by api"}})
	wantStatus(t, created, http.StatusCreated)
	if m := created.json(t); m["friendly_name"] != "by api" || m["owner_account_sid"] != e.parent.SID || len(m["auth_token"].(string)) != 32 {
		t.Fatalf("created account %v", m)
	}
}
