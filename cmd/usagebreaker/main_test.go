package main

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestDemoOnceSuspendsAndExitsZero(t *testing.T) {
	var out, errb bytes.Buffer
	code := dispatch([]string{"demo", "--once", "--quiet"}, &out, &errb)
	if code != 0 {
		t.Fatalf("demo --once exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"usagebreaker:demo:spend-daily",
		"-> HTTP 200",
		"usagebreaker suspended tenant-acme",
		"tenant-acme    suspended",
		"tenant-globex  active",
		"is suspended; its usage is refused",
		`usagebreaker_suspensions_total{outcome="suspended",rule="spend-daily"} 1`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q\n%s", want, out.String())
		}
	}
}

func TestVersionAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := dispatch([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "usagebreaker ") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	out.Reset()
	if code := dispatch(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage: usagebreaker") {
		t.Fatalf("no args: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := dispatch([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown: %d %q", code, errb.String())
	}
}

func TestHealthcheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	var healthy atomic.Bool
	healthy.Store(true)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(503)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	var out, errb bytes.Buffer
	url := "http://" + ln.Addr().String()
	if code := dispatch([]string{"healthcheck", "--url", url}, &out, &errb); code != 0 {
		t.Fatalf("healthy: %d %s", code, errb.String())
	}
	healthy.Store(false)
	if code := dispatch([]string{"healthcheck", "--url=" + url}, &out, &errb); code != 1 {
		t.Fatalf("unhealthy: %d", code)
	}
	if code := dispatch([]string{"healthcheck", "--url", "http://127.0.0.1:1"}, &out, &errb); code != 1 {
		t.Fatalf("nothing listening: %d", code)
	}
}

func TestRunBadConfig(t *testing.T) {
	var out, errb bytes.Buffer
	if code := dispatch([]string{"run", "--config", "testdata/does-not-exist.yaml"}, &out, &errb); code != 1 || errb.Len() == 0 {
		t.Fatalf("run with a missing config: %d %q", code, errb.String())
	}
	if code := dispatch([]string{"run"}, &out, &errb); code != 2 {
		t.Fatalf("run without --config: %d", code)
	}
}

// JSON logs gave durations as raw nanoseconds.
func TestLogDurationsReadable(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var b strings.Builder
		log, err := newLogger(&b, format, "info")
		if err != nil {
			t.Fatal(err)
		}
		log.Info("guard", "window", time.Hour, slog.Group("g", "took", 250*time.Millisecond))
		out := b.String()
		want := map[string][]string{
			"json": {`"window":"1h0m0s"`, `"took":"250ms"`},
			"text": {`window=1h0m0s`, `g.took=250ms`},
		}[format]
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s log %q lacks %s", format, out, w)
			}
		}
	}
}
