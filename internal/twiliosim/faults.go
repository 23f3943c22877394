package twiliosim

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Fault targets.
const (
	TargetAPI       = "api"       // Twilio API requests (never /sim/*)
	TargetCallbacks = "callbacks" // Usage Trigger callback deliveries
)

// Fault makes matching requests fail or slow down.
//
// For TargetAPI: a matching request waits Delay, then is answered with Status
// and a Twilio JSON error body (or an HTML page when HTML is set); Status 0
// answers normally after the delay. With After, the request is processed first
// and only its answer is replaced (the client never learns it succeeded); with
// Drop, the connection is closed without an answer.
//
// For TargetCallbacks: a matching delivery attempt waits Delay, then counts as
// answered with Status without sending anything; Status 0 with no Delay (or
// Drop) means the attempt is lost as if the network failed. Status 0 with a
// Delay sends the callback normally, late. Retries after a 5xx or a loss are
// matched again, each consuming one of Times.
type Fault struct {
	ID     int    `json:"id"`
	Target string `json:"target"` // TargetAPI (default) or TargetCallbacks
	// Path is a regular expression matched against the URL path ("" matches all).
	Path   string `json:"path"`
	Method string `json:"method,omitempty"` // "" matches any method
	Status int    `json:"status"`
	// Times is how many matching requests the fault applies to: 0 means 1, -1
	// unlimited. In State it is the number left (-1 unlimited).
	Times int           `json:"times"`
	Delay time.Duration `json:"-"`
	// Probability (0..1; 0 means 1) that a matching request is affected; a
	// request it spares does not consume Times.
	Probability float64 `json:"probability"`
	RetryAfter  int     `json:"retry_after,omitempty"` // seconds, sent as Retry-After
	HTML        bool    `json:"html,omitempty"`        // non-JSON HTML error body
	After       bool    `json:"after,omitempty"`       // API: process, then replace the answer
	Drop        bool    `json:"drop,omitempty"`        // close the connection / lose the callback
	Code        int     `json:"code,omitempty"`        // Twilio error code (default 20000+Status)
	Message     string  `json:"message,omitempty"`     // error message (default the status text)

	re *regexp.Regexp
}

// MarshalJSON adds delay_ms.
func (f Fault) MarshalJSON() ([]byte, error) {
	type plain Fault
	return json.Marshal(struct {
		plain
		DelayMs int64 `json:"delay_ms"`
	}{plain(f), f.Delay.Milliseconds()})
}

// AddFault installs a fault and returns it with its ID.
func (s *Sim) AddFault(f Fault) (Fault, error) {
	if f.Target == "" {
		f.Target = TargetAPI
	}
	if f.Target != TargetAPI && f.Target != TargetCallbacks {
		return Fault{}, fmt.Errorf("twiliosim: fault target must be %q or %q", TargetAPI, TargetCallbacks)
	}
	re, err := regexp.Compile(f.Path)
	if err != nil {
		return Fault{}, fmt.Errorf("twiliosim: fault path: %w", err)
	}
	f.re = re
	f.Method = strings.ToUpper(f.Method)
	if f.Times == 0 {
		f.Times = 1
	}
	if f.Times < -1 {
		return Fault{}, fmt.Errorf("twiliosim: fault times must be >= -1")
	}
	if f.Probability == 0 {
		f.Probability = 1
	}
	if f.Probability < 0 || f.Probability > 1 {
		return Fault{}, fmt.Errorf("twiliosim: fault probability must be within 0..1")
	}
	if f.Status != 0 && (f.Status < 100 || f.Status > 599) {
		return Fault{}, fmt.Errorf("twiliosim: fault status %d is not an HTTP status", f.Status)
	}
	if f.Delay < 0 || f.RetryAfter < 0 {
		return Fault{}, fmt.Errorf("twiliosim: fault delay and retry-after cannot be negative")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultSeq++
	f.ID = s.faultSeq
	s.faults = append(s.faults, &f)
	return f, nil
}

// ClearFaults removes every fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

func isSimPath(p string) bool { return p == "/sim" || strings.HasPrefix(p, "/sim/") }

// takeFault returns the first fault that applies to this request (consuming
// one of its Times), or nil.
func (s *Sim) takeFault(target, method, path string) *Fault {
	if target == TargetAPI && isSimPath(path) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.Target != target || (f.Method != "" && f.Method != method) || !f.re.MatchString(path) {
			continue
		}
		if f.Probability < 1 && s.rng.Float64() >= f.Probability {
			continue
		}
		out := *f
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return &out
	}
	return nil
}

// applyAPIFault carries out an API fault. It reports whether the request
// should still be answered normally.
func (s *Sim) applyAPIFault(w http.ResponseWriter, r *http.Request, f *Fault, rt route) bool {
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return false
		}
	}
	if f.Status == 0 && !f.Drop {
		return true
	}
	if f.After {
		s.dispatch(discardWriter{h: http.Header{}}, r, rt)
	}
	if f.Drop {
		dropConnection(w)
		return false
	}
	writeFaultAnswer(w, f)
	return false
}

func writeFaultAnswer(w http.ResponseWriter, f *Fault) {
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	msg := f.Message
	if msg == "" {
		msg = http.StatusText(f.Status)
	}
	if f.HTML {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(f.Status)
		fmt.Fprintf(w, "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1></center>\r\n</body>\r\n</html>\r\n",
			f.Status, msg, f.Status, msg)
		return
	}
	code := f.Code
	if code == 0 {
		// Twilio's generic HTTP-status codes: 20403, 20404, 20429, 20500, 20503...
		code = 20000 + f.Status
	}
	writeError(w, &apiError{status: f.Status, code: code, msg: msg})
}

// dropConnection closes the client's connection without an answer.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d discardWriter) WriteHeader(int)             {}
