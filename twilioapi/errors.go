package twilioapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/twilio/twilio-go/client"
)

// ErrInvalidArgument is wrapped by the *Error (Status 400, like twilio-go's
// own credential checks, so IsPermanent holds) returned when a call is
// rejected before anything is sent: a malformed SID, an unknown period, a
// missing message field, an account status other than active/suspended.
var ErrInvalidArgument = errors.New("invalid argument")

func invalidArg(op, format string, args ...any) *Error {
	return &Error{
		Operation: op,
		Status:    http.StatusBadRequest,
		Message:   fmt.Sprintf(format, args...),
		Err:       ErrInvalidArgument,
	}
}

// toError turns what twilio-go returned into an *Error, using the callState
// the transport filled (twilio-go hides the HTTP status of non-JSON error
// bodies in a string). It never includes credentials: twilio-go's errors do
// not, the auth header is never recorded, and redact scrubs the token from
// anything that came from the server.
func (c *Client) toError(ctx context.Context, st *callState, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	last := st.last()
	err = c.effectiveURL(err)
	e = &Error{Operation: st.op, Err: err}
	var tre *client.TwilioRestError
	switch {
	case errors.As(err, &tre):
		e.Status = last.status
		if e.Status == 0 {
			e.Status = tre.Status
		}
		e.Code, e.Message, e.MoreInfo = tre.Code, tre.Message, tre.MoreInfo
	case ctx.Err() != nil:
		// The caller cancelled (or its deadline passed), possibly during a
		// backoff wait after an HTTP error: report the cancellation.
		e.Message = ctx.Err().Error()
	case last.status >= 400:
		// An error status whose body was not JSON (an HTML 502 from a proxy,
		// an XML TwilioResponse...): recover what we can from the snippet.
		e.Status = last.status
		e.Code, e.Message, e.MoreInfo = parseErrorBody(last.body)
		if e.Message == "" {
			e.Message = http.StatusText(last.status)
		}
		e.Err = fmt.Errorf("HTTP %d with a non-JSON error body", last.status)
	case last.err != nil || last.status == 0:
		// Transport error or timeout (Status 0).
		e.Message = err.Error()
	default:
		// A success status whose body could not be decoded.
		e.Status = last.status
		e.Message = "decoding the response: " + err.Error()
	}
	e.Message = c.redact(e.Message)
	return e
}

// effectiveURL shows, in net/http's *url.Error, the URL the request was
// really sent to rather than twilio-go's hard-coded https://api.twilio.com.
func (c *Client) effectiveURL(err error) error {
	ue, ok := err.(*url.Error)
	if !ok || c.baseURL == twilioBase || !strings.HasPrefix(ue.URL, twilioBase) {
		return err
	}
	cp := *ue
	cp.URL = c.baseURL + strings.TrimPrefix(ue.URL, twilioBase)
	return &cp
}

// redact removes the auth token from text that may have come from a server.
func (c *Client) redact(s string) string {
	if c.secret.token != "" && strings.Contains(s, c.secret.token) {
		s = strings.ReplaceAll(s, c.secret.token, "<redacted>")
	}
	if c.secret.basic != "" && strings.Contains(s, c.secret.basic) {
		s = strings.ReplaceAll(s, c.secret.basic, "<redacted>")
	}
	return redactUserinfo(s)
}

var (
	jsonCodeRe  = regexp.MustCompile(`"code"\s*:\s*"?(\d+)`)
	xmlCodeRe   = regexp.MustCompile(`(?is)<Code>\s*(\d+)\s*</Code>`)
	xmlMsgRe    = regexp.MustCompile(`(?is)<Message>(.*?)</Message>`)
	xmlMoreRe   = regexp.MustCompile(`(?is)<MoreInfo>(.*?)</MoreInfo>`)
	tagRe       = regexp.MustCompile(`(?s)<[^>]*>`)
	htmlSkipRe  = regexp.MustCompile(`(?is)<(script|style|head)[^>]*>.*?</(script|style|head)>`)
	htmlTitleRe = regexp.MustCompile(`(?is)<title[^>]*>(.*?)</title>`)
	spaceRe     = regexp.MustCompile(`\s+`)
)

// parseErrorBody extracts Twilio's code, message and more_info from an error
// body that twilio-go could not decode as its JSON error: a JSON body of an
// unexpected shape, Twilio's XML <RestException>, or anything else (HTML, text).
func parseErrorBody(b []byte) (code int, msg, moreInfo string) {
	var j struct {
		Code     json.RawMessage `json:"code"`
		Message  string          `json:"message"`
		MoreInfo string          `json:"more_info"`
	}
	if json.Unmarshal(b, &j) == nil {
		code, _ = strconv.Atoi(strings.Trim(string(j.Code), `"`))
		return code, j.Message, j.MoreInfo
	}
	s := string(b)
	if m := xmlCodeRe.FindStringSubmatch(s); m != nil {
		code, _ = strconv.Atoi(m[1])
		if mm := xmlMsgRe.FindStringSubmatch(s); mm != nil {
			msg = html.UnescapeString(strings.TrimSpace(mm[1]))
		}
		if mm := xmlMoreRe.FindStringSubmatch(s); mm != nil {
			moreInfo = html.UnescapeString(strings.TrimSpace(mm[1]))
		}
		return code, msg, moreInfo
	}
	if m := jsonCodeRe.FindStringSubmatch(s); m != nil {
		code, _ = strconv.Atoi(m[1])
	}
	return code, snippet(s), ""
}

// snippet makes a short one-line text of a body: the HTML title if there is
// one, else the text without tags.
func snippet(s string) string {
	if m := htmlTitleRe.FindStringSubmatch(s); m != nil && strings.TrimSpace(m[1]) != "" {
		s = m[1]
	} else {
		s = htmlSkipRe.ReplaceAllString(s, " ")
		s = tagRe.ReplaceAllString(s, " ")
	}
	s = strings.TrimSpace(spaceRe.ReplaceAllString(html.UnescapeString(s), " "))
	const maxRunes = 200
	if r := []rune(s); len(r) > maxRunes {
		s = string(r[:maxRunes]) + "…"
	}
	return s
}
