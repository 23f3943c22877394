package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// StepFiring is one firing of a velocity rule's step trigger: a verified
// callback. It opens no incident by itself; the breaker reads an account's
// latest steps to decide whether the rule trips (breaker/velocity.go), and
// the step's rearm_step action arms the next step.
type StepFiring struct {
	IdempotencyToken string // Twilio's token for this firing
	Rule             string
	AccountSID       string
	AccountName      string
	UsageTriggerSID  string
	UsageCategory    string
	TriggerBy        string
	TriggerValue     string
	CurrentValue     string
	DateFired        string    // as Twilio sent it (RFC 2822)
	FiredAt          time.Time // DateFired parsed (else the receipt)
	ReceivedAt       time.Time
	// Stale: the trigger that fired was not the rule's step as the rule is
	// now (another category or trigger_by, a recurring trigger left from a
	// threshold rule). It is recorded, so that its rearm_step action arms a
	// real step at once, but Steps never returns it.
	Stale bool
}

// StepResult says what RecordStep did.
type StepResult struct {
	// Duplicate: this token was recorded before; nothing changed.
	Duplicate bool
	// Rearm is the rearm_step action created with the step (zero ID for a duplicate).
	Rearm Action
}

// VelocityStore keeps the step firings of velocity rules.
type VelocityStore interface {
	// RecordStep records a step firing and, in the same transaction, its
	// rearm_step action (available, due at the firing's receipt). A token
	// recorded before changes nothing.
	RecordStep(ctx context.Context, f StepFiring) (StepResult, error)
	// Step returns one step firing, or ErrNotFound.
	Step(ctx context.Context, token string) (StepFiring, error)
	// Steps returns up to limit of the latest step firings of rule on the
	// account fired after after, oldest first; stale ones are left out.
	Steps(ctx context.Context, rule, accountSID string, after time.Time, limit int) ([]StepFiring, error)
}

const stepCols = `idempotency_token, rule, account_sid, account_name, usage_trigger_sid, usage_category,
	trigger_by, trigger_value, current_value, date_fired, fired_at, received_at, stale`

// RecordStep implements VelocityStore.
func (s *SQLite) RecordStep(ctx context.Context, f StepFiring) (StepResult, error) {
	if err := s.check("record step"); err != nil {
		return StepResult{}, err
	}
	if f.IdempotencyToken == "" || f.Rule == "" || f.AccountSID == "" {
		return StepResult{}, errors.New("store: record step: token, rule and account are required")
	}
	f.AccountName = displayText(f.AccountName)
	fired, err := unixNano(f.FiredAt)
	if err != nil {
		return StepResult{}, fmt.Errorf("store: record step: fired at: %w", err)
	}
	recv, err := unixNano(f.ReceivedAt)
	if err != nil {
		return StepResult{}, fmt.Errorf("store: record step: received at: %w", err)
	}
	res, err := submitAs(ctx, s, func(ctx context.Context, tx *sql.Tx) (StepResult, error) {
		r, err := tx.ExecContext(ctx, s.q(`INSERT INTO velocity_steps (`+stepCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (idempotency_token) DO NOTHING`),
			f.IdempotencyToken, f.Rule, f.AccountSID, f.AccountName, f.UsageTriggerSID, f.UsageCategory,
			f.TriggerBy, f.TriggerValue, f.CurrentValue, f.DateFired, fired, recv, boolInt(f.Stale))
		if err != nil {
			return StepResult{}, fmt.Errorf("insert step: %w", err)
		}
		if n, err := r.RowsAffected(); err != nil {
			return StepResult{}, err
		} else if n == 0 {
			return StepResult{Duplicate: true}, nil
		}
		rows, err := tx.QueryContext(ctx, s.q(`INSERT INTO actions (step_token, kind, account_sid, state, attempts,
				next_attempt_at, created_at, updated_at)
			VALUES (?, ?, '', 'available', 0, ?, ?, ?)
			RETURNING `+actionCols), f.IdempotencyToken, ActionRearmStep, recv, recv, recv)
		if err != nil {
			return StepResult{}, fmt.Errorf("insert rearm action: %w", err)
		}
		acts, err := scanActions(rows)
		if err != nil || len(acts) != 1 {
			return StepResult{}, fmt.Errorf("insert rearm action: %d rows, %v", len(acts), err)
		}
		return StepResult{Rearm: acts[0]}, nil
	})
	if err != nil {
		return StepResult{}, fmt.Errorf("store: record step %s: %w", f.IdempotencyToken, err)
	}
	return res, nil
}

// Step implements VelocityStore.
func (s *SQLite) Step(ctx context.Context, token string) (StepFiring, error) {
	if err := s.check("step"); err != nil {
		return StepFiring{}, err
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+stepCols+` FROM velocity_steps WHERE idempotency_token = ?`), token)
	if err != nil {
		return StepFiring{}, fmt.Errorf("store: step %s: %w", token, err)
	}
	steps, err := scanSteps(rows)
	if err != nil {
		return StepFiring{}, fmt.Errorf("store: step %s: %w", token, err)
	}
	if len(steps) == 0 {
		return StepFiring{}, fmt.Errorf("store: step %s: %w", token, ErrNotFound)
	}
	return steps[0], nil
}

// Steps implements VelocityStore. A limit of 0 or less means 100.
func (s *SQLite) Steps(ctx context.Context, rule, accountSID string, after time.Time, limit int) ([]StepFiring, error) {
	if err := s.check("steps"); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	since := int64(-1 << 63)
	if !after.IsZero() {
		var err error
		if since, err = unixNano(after); err != nil {
			return nil, fmt.Errorf("store: steps: %w", err)
		}
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+stepCols+` FROM velocity_steps
		WHERE rule = ? AND account_sid = ? AND fired_at > ? AND stale = 0
		ORDER BY fired_at DESC, idempotency_token DESC LIMIT ?`), rule, accountSID, since, limit)
	if err != nil {
		return nil, fmt.Errorf("store: steps: %w", err)
	}
	steps, err := scanSteps(rows)
	if err != nil {
		return nil, fmt.Errorf("store: steps: %w", err)
	}
	for i, j := 0, len(steps)-1; i < j; i, j = i+1, j-1 {
		steps[i], steps[j] = steps[j], steps[i]
	}
	return steps, nil
}

func scanSteps(rows *sql.Rows) ([]StepFiring, error) {
	defer rows.Close()
	var out []StepFiring
	for rows.Next() {
		var (
			f                     StepFiring
			fired, receivd, stale int64
		)
		if err := rows.Scan(&f.IdempotencyToken, &f.Rule, &f.AccountSID, &f.AccountName, &f.UsageTriggerSID,
			&f.UsageCategory, &f.TriggerBy, &f.TriggerValue, &f.CurrentValue, &f.DateFired, &fired, &receivd, &stale); err != nil {
			return nil, err
		}
		f.FiredAt, f.ReceivedAt, f.Stale = fromUnixNano(fired), fromUnixNano(receivd), stale != 0
		out = append(out, f)
	}
	return out, rows.Err()
}
