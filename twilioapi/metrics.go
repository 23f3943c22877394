package twilioapi

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are counted per HTTP attempt. Labels are the operation name and the
// HTTP status (or "error"); never an account SID.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	authOK   prometheus.Gauge // 0 after a 401 (parent credentials refused), 1 after a 2xx
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "usagebreaker_twilio_requests_total",
			Help: "HTTP attempts at the Twilio REST API, by operation and HTTP status (\"error\" for transport errors and timeouts).",
		}, []string{"operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "usagebreaker_twilio_request_duration_seconds",
			Help:    "Duration of HTTP attempts at the Twilio REST API until the response headers arrived, by operation.",
			Buckets: prometheus.DefBuckets,
		}, []string{"operation"}),
		authOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "usagebreaker_twilio_auth_ok",
			Help: "1 while Twilio accepts the parent credentials (twilio.account_sid, twilio.auth_token); 0 since an answer was 401, until one succeeds.",
		}),
	}
	m.authOK.Set(1)
	if reg == nil {
		return m, nil
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.authOK, err = register(reg, m.authOK); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or reuses an identical collector that is already
// registered (a second Client on the same registry shares the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *metrics) observe(op, code string, d time.Duration) {
	m.requests.WithLabelValues(op, code).Inc()
	m.duration.WithLabelValues(op).Observe(d.Seconds())
	switch {
	case code == "401":
		m.authOK.Set(0)
	case len(code) == 3 && code[0] == '2':
		m.authOK.Set(1)
	}
}
