package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/testenv"
)

// TestSimCommand runs `usagebreaker sim` as a process and uses it the way the
// curl examples in docs/SIMULATOR.md do: a subaccount through /sim/accounts, the Twilio
// API with the parent's Basic auth (and 401 without it), usage, the state;
// SIGTERM ends it with exit status 0.
func TestSimCommand(t *testing.T) {
	bin := testenv.BuildBinary(t, t.TempDir(), ".", raceBuild)
	addr := testenv.FreeAddr(t)
	const sid, token = "AC00000000000000000000000000000001", "0123456789abcdef0123456789abcdef"
	cmd := exec.Command(bin, "sim", "--listen", addr, "--account-sid", sid, "--auth-token", token)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := "http://" + addr
	c := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(base + "/sim/state")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sim did not answer: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err := c.PostForm(base+"/sim/accounts", url.Values{"FriendlyName": {"tenant-a"}})
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		Sid       string `json:"sid"`
		AuthToken string `json:"auth_token"`
	}
	json.NewDecoder(resp.Body).Decode(&sub)
	resp.Body.Close()
	if resp.StatusCode != 201 && resp.StatusCode != 200 || !strings.HasPrefix(sub.Sid, "AC") || sub.AuthToken == "" {
		t.Fatalf("/sim/accounts: %d %+v", resp.StatusCode, sub)
	}

	get := func(user, pass string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/2010-04-01/Accounts.json", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(sid, token); code != 200 || !strings.Contains(body, sub.Sid) || !strings.Contains(body, `"accounts"`) {
		t.Fatalf("Accounts.json as the parent: %d %s", code, body)
	}
	if code, body := get("", ""); code != 401 || !strings.Contains(body, "20003") {
		t.Fatalf("Accounts.json without auth: %d %s", code, body)
	}
	resp, err = c.PostForm(base+"/sim/usage", url.Values{"AccountSid": {sub.Sid}, "UsageCategory": {"sms"}, "Count": {"3"}, "Price": {"0.25"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/sim/usage: %v %v", err, resp)
	}
	resp.Body.Close()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sim exited with %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sim did not stop on SIGTERM")
	}
	if !strings.Contains(out.String(), sid) || !strings.Contains(out.String(), base) {
		t.Errorf("the start banner should name the parent SID and the base URL:\n%s", out.String())
	}
}
