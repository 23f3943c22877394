package rules

import (
	"fmt"
	"time"

	"github.com/usagebreaker/usagebreaker/config/strict"
)

// Approval modes.
const (
	// ApprovalVeto acts when the window ends unless a person vetoes.
	ApprovalVeto = "veto"
	// ApprovalApprove acts only once a person approves (or, with a window,
	// when it ends with nobody answering).
	ApprovalApprove = "approve"
)

// Approval holds a rule's suspension for a person: the incident waits as
// awaiting_approval until a person approves or vetoes it, or the window
// ends.
type Approval struct {
	Mode   string        // ApprovalVeto | ApprovalApprove
	Window time.Duration // veto: required; approve: 0 waits for a person however long
}

// String is the policy as written.
func (a *Approval) String() string {
	if a == nil {
		return ""
	}
	if a.Window == 0 {
		return a.Mode
	}
	return fmt.Sprintf("%s within %s", a.Mode, a.Window)
}

var approvalKeys = []string{"mode", "window"}

func parseApproval(d *strict.Decoder, v strict.Value, r *Rule) {
	if !v.Present() {
		d.Errorf(v, "must be a mapping with mode (veto or approve) and window, not null")
		return
	}
	m := d.Map(v, approvalKeys)
	if m.Bad() {
		return
	}
	a := &Approval{}
	ok := true
	modeV := m.Get("mode")
	switch mode, good := d.String(modeV); {
	case !modeV.Written():
		d.Errorf(v, "mode is required (veto or approve)")
		ok = false
	case !good:
		ok = false
	case mode != ApprovalVeto && mode != ApprovalApprove:
		d.Errorf(modeV, "%q is not a mode: veto (act when the window ends unless vetoed) or approve (act once approved)", mode)
		ok = false
	default:
		a.Mode = mode
	}
	if wV := m.Get("window"); wV.Written() {
		switch dur, good := d.Duration(wV); {
		case !good:
			if !wV.Present() {
				d.Errorf(wV, "must be a duration (like \"15m\"), not null")
			}
			ok = false
		case dur <= 0:
			d.Errorf(wV, "must be greater than 0")
			ok = false
		default:
			a.Window = dur
		}
	} else if a.Mode == ApprovalVeto {
		d.Errorf(v, "mode veto needs a window: how long a person has to veto")
		ok = false
	}
	if !ok {
		return
	}
	if r.Action == ActionNotify {
		d.Errorf(v, "needs action suspend (a rule that only notifies has no suspension to hold)")
		return
	}
	r.Approval = a
}
