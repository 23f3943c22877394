package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"
)

var pageNames = []string{"signin", "error", "overview", "coverage", "rules", "incidents", "incident", "guard"}

func (h *Handler) parse() error {
	funcs := template.FuncMap{
		"when":  h.when,
		"since": h.since,
		"dur":   func(d time.Duration) string { return d.Round(time.Millisecond).String() },
		"add": func(xs ...int) int {
			n := 0
			for _, x := range xs {
				n += x
			}
			return n
		},
		"span": span,
		"stateClass": func(s string) string {
			return "s-" + strings.ReplaceAll(s, " ", "-")
		},
		"short": func(s string, n int) string {
			if r := []rune(s); len(r) > n {
				return string(r[:n]) + "…"
			}
			return s
		},
	}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return fmt.Errorf("console: templates: %w", err)
		}
		h.pages[name] = t
	}
	return nil
}

// span formats a duration for people: 1h, not 1h0m0s.
func span(d time.Duration) string {
	s, cut := strings.CutSuffix(d.String(), "m0s")
	switch {
	case !cut:
		return s
	case strings.HasSuffix(s, "h0"):
		return strings.TrimSuffix(s, "0")
	}
	return s + "m"
}

// when formats a time for people: UTC, to the second.
func (h *Handler) when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// since says how long ago t was.
func (h *Handler) since(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := h.o.Now().Sub(t)
	switch {
	case d < 0:
		return "in " + (-d).Round(time.Second).String()
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// page is what every template gets.
type page struct {
	Name     string
	SignedIn bool
	CSRF     string
	Flash    *flash
	Data     any
}

// render writes a whole page, or a 500 if a template fails (nothing half-written).
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, ss *session, data any) {
	p := page{Name: name, Data: data}
	if ss != nil {
		p.SignedIn, p.CSRF, p.Flash = true, ss.csrf, h.ss.takeFlash(ss)
	}
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		h.log.Error("console: rendering failed", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, ss *session, status int, msg string) {
	h.render(w, r, status, "error", ss, map[string]any{"Status": status, "Text": http.StatusText(status), "Message": msg})
}

// Event is one line of an incident's timeline.
type Event struct {
	At     time.Time
	What   string
	Who    string
	Detail string
	Class  string // for the stylesheet: firing, action, notify, guard, approval, reactivation
}

// timeline orders what the store recorded about an incident by time.
func timeline(inc IncidentDetail) []Event {
	var ev []Event
	src := "Twilio's Usage Trigger callback"
	if inc.Source == "poll" {
		src = "the usage poll"
	}
	first := fmt.Sprintf("Firing: %s at %s (threshold %s)", inc.Category, inc.CurrentValue, inc.TriggerValue)
	detail := fmt.Sprintf("period %s; rule %s; action %s", inc.Period, inc.Rule, inc.Action)
	if inc.DryRun {
		detail += " (dry run)"
	}
	if inc.Firings > 1 {
		detail += fmt.Sprintf("; %d firings in all (repeats attach to this incident)", inc.Firings)
	}
	ev = append(ev, Event{At: inc.CreatedAt, What: first, Who: src, Detail: detail, Class: "firing"})
	for _, a := range inc.Actions {
		class := "action"
		switch {
		case strings.HasPrefix(a.Kind, "notify:"):
			class = "notify"
		case strings.HasPrefix(a.Kind, "guard:"):
			class = "guard"
		}
		ev = append(ev, Event{At: a.CreatedAt, What: "Action " + a.Kind + " scheduled", Who: "usagebreaker", Class: class})
		status := a.State
		if a.Outcome != "" {
			status += ": " + a.Outcome
		}
		if a.Held {
			status += " (held by the guard)"
		} else if a.Released {
			status += " (released from the guard)"
		}
		if !a.WriteSentAt.IsZero() {
			ev = append(ev, Event{At: a.WriteSentAt, What: "Suspend write sent to Twilio", Who: "usagebreaker", Class: class})
		}
		pending := a.State != "done" && a.State != "failed"
		d := a.Detail
		if a.Owner != "" {
			d += "; running on " + a.Owner
		}
		switch {
		case pending && a.Attempts > 0:
			d = fmt.Sprintf("%d failed attempt(s) so far; last: %s", a.Attempts, d)
		case a.Attempts > 1:
			d += fmt.Sprintf(" (after %d attempts)", a.Attempts)
		}
		if !a.NextAttemptAt.IsZero() {
			d += "; next attempt " + a.NextAttemptAt.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		if !a.UpdatedAt.Equal(a.CreatedAt) || !pending {
			ev = append(ev, Event{At: a.UpdatedAt, What: "Action " + a.Kind + " " + status, Who: "usagebreaker",
				Detail: strings.TrimPrefix(d, "; "), Class: class})
		}
	}
	for _, ap := range inc.Approvals {
		ev = append(ev, Event{At: ap.At, What: "Decision: " + ap.Decision, Who: ap.Actor, Detail: ap.Reason, Class: "approval"})
	}
	if re := inc.Reactivation; re != nil {
		ev = append(ev, Event{At: re.At, What: fmt.Sprintf("Reactivated (%s); %d trigger(s) re-armed", re.Via, re.Rearmed),
			Who: re.Actor, Detail: "reason: " + re.Reason + detailSuffix(re.Detail), Class: "reactivation"})
	}
	sort.SliceStable(ev, func(i, j int) bool { return ev[i].At.Before(ev[j].At) })
	return ev
}

func detailSuffix(s string) string {
	if s == "" {
		return ""
	}
	return "; " + s
}
