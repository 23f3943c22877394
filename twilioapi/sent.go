package twilioapi

import (
	"context"
	"net/http/httptrace"
)

// OnSent returns ctx with f attached: a call made with that context calls f
// each time one of its requests has been written to the connection (once
// per attempt: a retry after a 429 calls it again), on the HTTP transport's
// goroutine. A caller that must know whether a write may have reached
// Twilio (the action engine records when a status write was sent) uses it;
// a request that failed before it was written never calls f.
//
// Over HTTP/2 the transport may report the write only after the answer has
// arrived, so f may run after the call returned.
func OnSent(ctx context.Context, f func()) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				f()
			}
		},
	})
}

// NotSent reports an error of a call that certainly never reached Twilio:
// the connection could not be established. Any other failure of a write may
// have been applied.
func NotSent(err error) bool { return neverSent(err) }
