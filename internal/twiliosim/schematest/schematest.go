// Package schematest checks HTTP exchanges with the Twilio API against
// Twilio's official OpenAPI description (twilio_api_v2010.json), for tests
// only: import it from _test.go files, never from non-test code.
//
// The description is not part of this repository. It is found at
// ../shared/twilio/twilio_api_v2010.json relative to the module root (the
// directory holding go.mod), or wherever USAGEBREAKER_TWILIO_OPENAPI points.
// Tests skip when it is absent (SpecPath reports that).
//
// Two in-memory adjustments are made to the loaded description, both
// documented where they are made: "recurring" of a Usage Trigger may be null
// (Twilio's own examples return null for non-recurring triggers, though the
// spec's enum leaves null out), and date-time-rfc-2822 strings are checked to
// be RFC 2822 dates (the spec names the format without defining it).
package schematest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// EnvSpecPath overrides where the OpenAPI description is read from.
const EnvSpecPath = "USAGEBREAKER_TWILIO_OPENAPI"

// SpecPath returns the path of Twilio's OpenAPI description and whether the
// file exists. Without USAGEBREAKER_TWILIO_OPENAPI it walks up from the working
// directory to the module root and looks at ../shared/twilio/twilio_api_v2010.json.
func SpecPath() (string, bool) {
	if p := os.Getenv(EnvSpecPath); p != "" {
		st, err := os.Stat(p)
		return p, err == nil && !st.IsDir()
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && !st.IsDir() {
			p := filepath.Join(dir, "..", "shared", "twilio", "twilio_api_v2010.json")
			st, err := os.Stat(p)
			return p, err == nil && !st.IsDir()
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// Validator checks requests and responses against the description.
type Validator struct {
	router routers.Router
	opts   *openapi3filter.Options
}

var (
	cacheMu sync.Mutex
	cache   = map[string]*Validator{}
)

// Load reads and prepares the description at path (cached per path: loading
// takes a few hundred milliseconds).
func Load(path string) (*Validator, error) {
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if v, ok := cache[path]; ok {
		return v, nil
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	// Examples in the description are illustrative, not all valid; skip them.
	if err := doc.Validate(context.Background(), openapi3.DisableExamplesValidation()); err != nil {
		return nil, fmt.Errorf("validate %s: %w", path, err)
	}
	if doc.Components != nil {
		// Twilio's documented examples return "recurring": null for a
		// non-recurring trigger (UT-DOC), but the enum schema is not nullable.
		if ref := doc.Components.Schemas["usage_trigger_enum_recurring"]; ref != nil && ref.Value != nil {
			ref.Value.Nullable = true
		}
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("router for %s: %w", path, err)
	}
	rfc2822 := openapi3.NewCallbackValidator(func(s string) error {
		if _, err := time.Parse(time.RFC1123Z, s); err != nil {
			return fmt.Errorf("not an RFC 2822 date like %q", "Mon, 21 Apr 2014 09:14:35 +0000")
		}
		return nil
	})
	v := &Validator{
		router: router,
		opts: &openapi3filter.Options{
			// Basic auth is the simulator's business; the spec only names the scheme.
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			IncludeResponseStatus: true,
			MultiError:            true,
			SchemaValidationOptions: []openapi3.SchemaValidationOption{
				openapi3.WithStringFormatValidator("date-time-rfc-2822", rfc2822),
			},
		},
	}
	cache[path] = v
	return v, nil
}

// Check validates one exchange: the request (with its body) against the
// operation's parameters and request body, and, for a status below 400, the
// response against the operation's declared responses. Error answers (which
// the description does not declare) must be Twilio error bodies.
func (v *Validator) Check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) []error {
	ctx := context.Background()
	rq := req.Clone(ctx)
	u := *req.URL
	u.Scheme, u.Host = "https", "api.twilio.com"
	rq.URL, rq.Host, rq.RequestURI = &u, "api.twilio.com", ""
	rq.Body = io.NopCloser(bytes.NewReader(reqBody))
	rq.ContentLength = int64(len(reqBody))
	route, params, err := v.router.FindRoute(rq)
	if err != nil {
		return []error{fmt.Errorf("no operation in the Twilio spec for %s %s: %v", req.Method, req.URL.Path, err)}
	}
	var errs []error
	in := &openapi3filter.RequestValidationInput{Request: rq, PathParams: params, Route: route, Options: v.opts}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		errs = append(errs, fmt.Errorf("request does not conform to %s: %w", route.Operation.OperationID, err))
	}
	if status >= 400 {
		if err := checkErrorBody(header, respBody); err != nil {
			errs = append(errs, fmt.Errorf("%d answer: %w", status, err))
		}
		return errs
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header, Options: v.opts}
	out.SetBodyBytes(respBody)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		errs = append(errs, fmt.Errorf("response does not conform to %s: %w", route.Operation.OperationID, err))
	}
	return errs
}

// checkErrorBody checks that a JSON error answer is a Twilio error body
// (code, message, more_info, status). Non-JSON bodies (an HTML 502 from a
// proxy) are allowed: Twilio's edge sends those too.
func checkErrorBody(header http.Header, body []byte) error {
	if !strings.Contains(header.Get("Content-Type"), "json") {
		return nil
	}
	var e map[string]json.RawMessage
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("error body is not JSON: %v", err)
	}
	for _, k := range []string{"code", "message", "more_info", "status"} {
		if _, ok := e[k]; !ok {
			return fmt.Errorf("error body lacks %q: %s", k, body)
		}
	}
	return nil
}

// Middleware wraps a Twilio API handler (such as the simulator) and reports,
// with t.Errorf, every request or response that does not conform to the
// description. Paths under /sim/ pass unchecked. It calls t.Skip when the
// description is absent, so call it from the test's goroutine.
func Middleware(t testing.TB, next http.Handler) http.Handler {
	t.Helper()
	path, ok := SpecPath()
	if !ok {
		t.Skipf("Twilio OpenAPI description not found (looked for %q; set %s to its path): schema checks skipped", path, EnvSpecPath)
	}
	v, err := Load(path)
	if err != nil {
		t.Fatalf("schematest: %v", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sim" || strings.HasPrefix(r.URL.Path, "/sim/") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("schematest: reading request body: %v", err)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.hijacked {
			return // the connection was dropped on purpose (a fault)
		}
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		for _, err := range v.Check(r, body, rec.status, rec.Header(), rec.body.Bytes()) {
			t.Errorf("Twilio spec: %s %s: %v", r.Method, r.URL.RequestURI(), err)
		}
	})
}

type recorder struct {
	http.ResponseWriter
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("schematest: the underlying ResponseWriter cannot hijack")
	}
	r.hijacked = true
	return hj.Hijack()
}
