package notify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/usagebreaker/usagebreaker/twilioapi"
)

// MaxSMSBody is the longest body Twilio's Messages API accepts (characters).
const MaxSMSBody = 1600

// sms sends one message per recipient through the parent account's Messages
// API. Each recipient that got its message is recorded in the Progress, so a
// retry after a partial failure does not text the others twice.
type sms struct {
	base
	api        MessageSender
	from, msid string
	to         []string
}

func newSMS(b base, s Spec, deps Deps) (Notifier, error) {
	switch {
	case deps.API == nil:
		return nil, fmt.Errorf("notify: %s: twilio_sms needs the Twilio client", s.Name)
	case len(s.To) == 0:
		return nil, fmt.Errorf("notify: %s: twilio_sms needs at least one recipient", s.Name)
	case (s.From == "") == (s.MessagingServiceSID == ""):
		return nil, fmt.Errorf("notify: %s: twilio_sms needs from or messaging_service_sid (one of them)", s.Name)
	}
	return &sms{base: b, api: deps.API, from: s.From, msid: s.MessagingServiceSID, to: s.To}, nil
}

func (n *sms) Send(ctx context.Context, ev *Event, p *Progress) error {
	body, err := n.text(ev)
	if err != nil {
		return err
	}
	if r := []rune(body); len(r) > MaxSMSBody {
		body = string(r[:MaxSMSBody-1]) + "…"
	}
	var refused []string
	for _, to := range n.to {
		if p.Done(to) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, n.timeout)
		_, err := n.api.SendMessage(sctx, twilioapi.Message{To: to, From: n.from, MessagingServiceSID: n.msid, Body: body})
		cancel()
		switch {
		case err == nil:
			p.Mark(to)
		case twilioapi.IsPermanent(err) && ctx.Err() == nil:
			// This recipient can never get it (invalid number, unsubscribed):
			// record it as done so the others are not held up, and report it.
			p.Mark(to)
			refused = append(refused, fmt.Sprintf("%s: %v", to, err))
		default:
			// 429, 5xx, timeouts: the message may or may not have been
			// created; sending again risks a duplicate, which beats no alert.
			return fmt.Errorf("sms to %s: %w", to, err)
		}
	}
	if len(refused) > 0 {
		return Permanent(errors.New("twilio refused: " + strings.Join(refused, "; ")))
	}
	return nil
}
