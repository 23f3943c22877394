// Command ceiling is the fastest honest breaker on this stack, the ceiling that
// `ubbench sidebyside` measures usagebreaker against: it checks a Usage Trigger
// callback's X-Twilio-Signature with the subaccount's auth token (twilio-go's
// RequestValidator) and writes Status=suspended with the parent's credentials
// (twilio-go's UpdateAccount) before answering, like the Node script in
// bench/node. No store and no read before the write: what is left is HTTP,
// the signature and one Twilio request per firing.
//
// It reads the same environment as bench/node/breaker.js: TWILIO_ACCOUNT_SID,
// TWILIO_AUTH_TOKEN (the parent), TWILIO_API_BASE (e.g. the simulator's
// http://127.0.0.1:PORT), PUBLIC_URL (the base URL callbacks are signed
// against), PORT, and TOKENS_FILE (JSON: subaccount SID -> auth token).
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"

	"github.com/twilio/twilio-go/client"
	openapi "github.com/twilio/twilio-go/rest/api/v2010"
)

// rewrite sends twilio-go's requests for https://api.twilio.com to base.
type rewrite struct {
	base *url.URL
	next http.RoundTripper
}

func (rw rewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = rw.base.Scheme, rw.base.Host, rw.base.Host
	return rw.next.RoundTrip(r)
}

func main() {
	var tokens map[string]string
	b, err := os.ReadFile(os.Getenv("TOKENS_FILE"))
	if err == nil {
		err = json.Unmarshal(b, &tokens)
	}
	if err != nil {
		log.Fatal("TOKENS_FILE: ", err)
	}
	validators := make(map[string]*client.RequestValidator, len(tokens))
	for sid, tok := range tokens {
		rv := client.NewRequestValidator(tok)
		validators[sid] = &rv
	}

	var rt http.RoundTripper = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}
	if base := os.Getenv("TWILIO_API_BASE"); base != "" {
		u, err := url.Parse(base)
		if err != nil {
			log.Fatal("TWILIO_API_BASE: ", err)
		}
		rt = rewrite{u, rt}
	}
	c := &client.Client{
		Credentials: client.NewCredentials(os.Getenv("TWILIO_ACCOUNT_SID"), os.Getenv("TWILIO_AUTH_TOKEN")),
		HTTPClient:  &http.Client{Transport: rt},
	}
	c.SetAccountSid(os.Getenv("TWILIO_ACCOUNT_SID"))
	api := openapi.NewApiServiceWithClient(c)
	public := os.Getenv("PUBLIC_URL")

	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		sid := form.Get("AccountSid")
		rv := validators[sid]
		if rv == nil || !rv.ValidateBody(public+r.URL.RequestURI(), body, r.Header.Get("X-Twilio-Signature")) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if _, err := api.UpdateAccount(sid, (&openapi.UpdateAccountParams{}).SetStatus("suspended")); err != nil {
			log.Printf("suspending %s: %v", sid, err)
			w.WriteHeader(http.StatusInternalServerError) // Twilio retries a 5xx
			return
		}
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
