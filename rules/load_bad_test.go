package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// badRules maps each file in testdata/bad to the exact error LoadFiles gives
// for it. Every file there must be listed; each has one problem.
var badRules = map[string]string{
	"velocity-amount-missing.yaml":     `testdata/bad/velocity-amount-missing.yaml:8: rule "sms-velocity": velocity.amount is required`,
	"velocity-amount-zero.yaml":        `testdata/bad/velocity-amount-zero.yaml:9: rule "sms-velocity": velocity.amount: "0" must be greater than 0`,
	"velocity-null.yaml":               `testdata/bad/velocity-null.yaml:8: rule "sms-velocity": velocity: must be a mapping with amount and within, not null`,
	"velocity-rearm-allowance.yaml":    `testdata/bad/velocity-rearm-allowance.yaml:11: rule "sms-velocity": rearm_allowance: a velocity rule re-arms its own steps; remove rearm_allowance`,
	"velocity-recurring.yaml":          `testdata/bad/velocity-recurring.yaml:8: rule "sms-velocity": recurring: a velocity rule has no recurring (its triggers are non-recurring and re-armed after each step); remove it`,
	"velocity-steps-big.yaml":          `testdata/bad/velocity-steps-big.yaml:11: rule "sms-velocity": velocity.steps: 50 must be from 1 to 20`,
	"velocity-steps-indivisible.yaml":  `testdata/bad/velocity-steps-indivisible.yaml:11: rule "sms-velocity": velocity.steps: amount 100 / steps 3 is not a decimal of at most 6 places (Twilio keeps 6); choose an amount divisible by steps`,
	"velocity-threshold.yaml":          `testdata/bad/velocity-threshold.yaml:8: rule "sms-velocity": threshold: a velocity rule has no threshold (it trips on growth of velocity.amount within velocity.within); remove it`,
	"velocity-unknown-key.yaml":        `testdata/bad/velocity-unknown-key.yaml:11: rule "sms-velocity": unknown key "stepz" in velocity (did you mean "steps"?)`,
	"velocity-within-missing.yaml":     `testdata/bad/velocity-within-missing.yaml:8: rule "sms-velocity": velocity.within is required`,
	"velocity-within-short.yaml":       `testdata/bad/velocity-within-short.yaml:10: rule "sms-velocity": velocity.within: 5m0s is too short for 4 steps: must be at least 8m0s (Twilio evaluates a trigger about once a minute, so 5 step firings take at least 4 minutes)`,
	"velocity-within-zero.yaml":        `testdata/bad/velocity-within-zero.yaml:10: rule "sms-velocity": velocity.within: must be greater than 0`,
	"yaml-syntax.yaml":                 `testdata/bad/yaml-syntax.yaml:4: invalid YAML: did not find expected ',' or ']'`,
	"empty.yaml":                       "testdata/bad/empty.yaml:1: rules is required",
	"rules-not-list.yaml":              "testdata/bad/rules-not-list.yaml:2: rules: must be a list, not a mapping",
	"rule-not-mapping.yaml":            "testdata/bad/rule-not-mapping.yaml:2: rules[0]: must be a mapping, not a string",
	"rule-null.yaml":                   "testdata/bad/rule-null.yaml:2: rules[0]: must be a mapping, not null",
	"unknown-top-key.yaml":             `testdata/bad/unknown-top-key.yaml:10: unknown key "rule" (did you mean "rules"?)`,
	"name-missing.yaml":                "testdata/bad/name-missing.yaml:2: rules[0]: name is required",
	"name-bad.yaml":                    `testdata/bad/name-bad.yaml:2: rules[0]: name: "SMS_Daily" must be 1 to 32 characters of a-z, 0-9 and "-"`,
	"name-long.yaml":                   `testdata/bad/name-long.yaml:2: rules[0]: name: "abcdefghijklmnopqrstuvwxyz0123456" must be 1 to 32 characters of a-z, 0-9 and "-"`,
	"duplicate-name.yaml":              `testdata/bad/duplicate-name.yaml:10: rule "sms-spend-daily": duplicate name; first defined at testdata/bad/duplicate-name.yaml:2`,
	"duplicate-key.yaml":               `testdata/bad/duplicate-key.yaml:10: rule "sms-spend-daily": duplicate key "name" (first at line 2)`,
	"unknown-key.yaml":                 `testdata/bad/unknown-key.yaml:10: rule "sms-spend-daily": unknown key "descripton" (did you mean "description"?)`,
	"accounts-missing.yaml":            `testdata/bad/accounts-missing.yaml:2: rule "sms-spend-daily": accounts is required`,
	"accounts-not-mapping.yaml":        `testdata/bad/accounts-not-mapping.yaml:3: rule "sms-spend-daily": accounts: must be a mapping, not a list`,
	"accounts-unknown-key.yaml":        `testdata/bad/accounts-unknown-key.yaml:5: rule "sms-spend-daily": unknown key "excludes" in accounts (did you mean "exclude"?)`,
	"include-missing.yaml":             `testdata/bad/include-missing.yaml:3: rule "sms-spend-daily": accounts.include is required`,
	"include-empty.yaml":               `testdata/bad/include-empty.yaml:4: rule "sms-spend-daily": accounts.include: at least one entry is required`,
	"include-scalar.yaml":              `testdata/bad/include-scalar.yaml:4: rule "sms-spend-daily": accounts.include: must be a list, not a string`,
	"include-null-entry.yaml":          `testdata/bad/include-null-entry.yaml:6: rule "sms-spend-daily": accounts.include[1]: must be a string, not null`,
	"include-empty-entry.yaml":         `testdata/bad/include-empty-entry.yaml:4: rule "sms-spend-daily": accounts.include[0]: must not be empty`,
	"include-not-string.yaml":          `testdata/bad/include-not-string.yaml:4: rule "sms-spend-daily": accounts.include[0]: must be a string, not a mapping`,
	"include-bad-class.yaml":           `testdata/bad/include-bad-class.yaml:6: rule "sms-spend-daily": accounts.include[1]: bad pattern "tenant-[abc": "[" without a closing "]"`,
	"include-empty-class.yaml":         `testdata/bad/include-empty-class.yaml:4: rule "sms-spend-daily": accounts.include[0]: bad pattern "tenant-[]": empty character class "[]"`,
	"include-bad-escape.yaml":          `testdata/bad/include-bad-escape.yaml:4: rule "sms-spend-daily": accounts.include[0]: bad pattern "tenant\\": ends with a lone "\"`,
	"exclude-bad-range.yaml":           `testdata/bad/exclude-bad-range.yaml:5: rule "sms-spend-daily": accounts.exclude[0]: bad pattern "tenant-[z-a]": bad range "z-a" in character class`,
	"include-bad-sid.yaml":             `testdata/bad/include-bad-sid.yaml:4: rule "sms-spend-daily": accounts.include[0]: "AC0123456789abcdef" looks like an account SID but is not AC followed by 32 hex digits`,
	"exclude-bad-sid.yaml":             `testdata/bad/exclude-bad-sid.yaml:7: rule "sms-spend-daily": accounts.exclude[1]: "AC0123456789abcdef0123456789abcdef0" looks like an account SID but is not AC followed by 32 hex digits`,
	"category-missing.yaml":            `testdata/bad/category-missing.yaml:2: rule "sms-spend-daily": usage_category is required`,
	"category-typo.yaml":               `testdata/bad/category-typo.yaml:5: rule "sms-spend-daily": unknown usage_category "totalprices" (did you mean "totalprice"?)`,
	"category-unknown.yaml":            `testdata/bad/category-unknown.yaml:5: rule "sms-spend-daily": unknown usage_category "frobnication": not in usagebreaker's list of Twilio's categories; if Twilio added it since, set unlisted_category: true on the rule`,
	"category-syntax.yaml":             `testdata/bad/category-syntax.yaml:5: rule "sms-spend-daily": usage_category: "SMS_Outbound" is not a usage category name (lower-case letters, digits and "-") (did you mean "sms-outbound"?)`,
	"trigger-by-bad.yaml":              `testdata/bad/trigger-by-bad.yaml:6: rule "sms-spend-daily": trigger_by: "cost" must be one of count, usage, price`,
	"trigger-by-count-totalprice.yaml": `testdata/bad/trigger-by-count-totalprice.yaml:6: rule "sms-spend-daily": trigger_by: count never fires for usage_category totalprice (it has no count); use price`,
	"recurring-missing.yaml":           `testdata/bad/recurring-missing.yaml:2: rule "sms-spend-daily": recurring is required`,
	"recurring-bad.yaml":               `testdata/bad/recurring-bad.yaml:7: rule "sms-spend-daily": recurring: "weekly" must be one of daily, monthly, yearly, alltime`,
	"threshold-missing.yaml":           `testdata/bad/threshold-missing.yaml:2: rule "sms-spend-daily": threshold is required`,
	"threshold-null.yaml":              `testdata/bad/threshold-null.yaml:8: rule "sms-spend-daily": threshold is required`,
	"threshold-zero.yaml":              `testdata/bad/threshold-zero.yaml:8: rule "sms-spend-daily": threshold: "0" must be greater than 0`,
	"threshold-negative.yaml":          `testdata/bad/threshold-negative.yaml:8: rule "sms-spend-daily": threshold: "-5" must be greater than 0`,
	"threshold-words.yaml":             `testdata/bad/threshold-words.yaml:8: rule "sms-spend-daily": threshold: "fifty" is not a decimal number`,
	"threshold-exponent.yaml":          `testdata/bad/threshold-exponent.yaml:8: rule "sms-spend-daily": threshold: "1e3" is not a decimal number`,
	"threshold-offset.yaml":            `testdata/bad/threshold-offset.yaml:8: rule "sms-spend-daily": threshold: "+50" starts with "+", which Twilio reads as an offset above current usage; write the threshold itself`,
	"threshold-precision.yaml":         `testdata/bad/threshold-precision.yaml:8: rule "sms-spend-daily": threshold: "0.1234567" has more than 6 decimal places (Twilio keeps 6)`,
	"threshold-list.yaml":              `testdata/bad/threshold-list.yaml:8: rule "sms-spend-daily": threshold: must be a decimal number, not a list`,
	"action-missing.yaml":              `testdata/bad/action-missing.yaml:2: rule "sms-spend-daily": action is required`,
	"action-bad.yaml":                  `testdata/bad/action-bad.yaml:9: rule "sms-spend-daily": action: "kill" must be one of suspend, notify`,
	"dry-run-bad.yaml":                 `testdata/bad/dry-run-bad.yaml:10: rule "sms-spend-daily": dry_run: "yes" is not a boolean (true or false)`,
	"end-calls-bad.yaml":               `testdata/bad/end-calls-bad.yaml:10: rule "sms-spend-daily": end_calls: "yes" is not a boolean (true or false)`,
	"end-calls-notify.yaml":            `testdata/bad/end-calls-notify.yaml:10: rule "sms-spend-daily": end_calls: needs action suspend (a rule that only notifies suspends nothing, so no calls are ended)`,
	"notify-bad-name.yaml":             `testdata/bad/notify-bad-name.yaml:10: rule "sms-spend-daily": notify[0]: "Ops Slack" is not a notifier name (1 to 32 characters of a-z, 0-9 and "-")`,
	"notify-not-list.yaml":             `testdata/bad/notify-not-list.yaml:10: rule "sms-spend-daily": notify: must be a list, not a string`,
	"notify-null-entry.yaml":           `testdata/bad/notify-null-entry.yaml:12: rule "sms-spend-daily": notify[1]: must be a notifier name, not null`,
	"notify-null.yaml":                 `testdata/bad/notify-null.yaml:10: rule "sms-spend-daily": notify: must be a list of notifier names (use [] for none)`,
	"notify-twice.yaml":                `testdata/bad/notify-twice.yaml:10: rule "sms-spend-daily": notify[2]: "ops" is listed twice`,
	"reactivate-after-bad.yaml":        `testdata/bad/reactivate-after-bad.yaml:11: rule "sms-spend-daily": reactivate.after: "1 day" is not a duration (like "10s" or "1m")`,
	"reactivate-after-zero.yaml":       `testdata/bad/reactivate-after-zero.yaml:11: rule "sms-spend-daily": reactivate.after: must be greater than 0`,
	"reactivate-at-bad.yaml":           `testdata/bad/reactivate-at-bad.yaml:11: rule "sms-spend-daily": reactivate.at: "6am" is not a valid cron spec (5 fields, UTC): expected exactly 5 fields, found 1: [6am]`,
	"reactivate-at-every.yaml":         `testdata/bad/reactivate-at-every.yaml:11: rule "sms-spend-daily": reactivate.at: "@every 6h": use after for an interval`,
	"reactivate-at-tz.yaml":            `testdata/bad/reactivate-at-tz.yaml:11: rule "sms-spend-daily": reactivate.at: "TZ=Europe/Paris 0 6 * * *": the time zone is always UTC; remove the TZ= prefix`,
	"reactivate-empty.yaml":            `testdata/bad/reactivate-empty.yaml:10: rule "sms-spend-daily": reactivate: set one of after, at, next_period`,
	"reactivate-next-alltime.yaml":     `testdata/bad/reactivate-next-alltime.yaml:11: rule "sms-spend-daily": reactivate.next_period: recurring alltime has no next period; use after or at`,
	"reactivate-next-false.yaml":       `testdata/bad/reactivate-next-false.yaml:11: rule "sms-spend-daily": reactivate.next_period: must be true (to leave the account suspended until a person acts, leave reactivate out)`,
	"reactivate-not-mapping.yaml":      `testdata/bad/reactivate-not-mapping.yaml:10: rule "sms-spend-daily": reactivate: must be a mapping, not a string`,
	"approval-null.yaml":               `testdata/bad/approval-null.yaml:10: rule "sms-spend-daily": approval: must be a mapping with mode (veto or approve) and window, not null`,
	"approval-mode-bad.yaml":           `testdata/bad/approval-mode-bad.yaml:10: rule "sms-spend-daily": approval.mode: "maybe" is not a mode: veto (act when the window ends unless vetoed) or approve (act once approved)`,
	"approval-mode-missing.yaml":       `testdata/bad/approval-mode-missing.yaml:10: rule "sms-spend-daily": approval: mode is required (veto or approve)`,
	"approval-veto-no-window.yaml":     `testdata/bad/approval-veto-no-window.yaml:10: rule "sms-spend-daily": approval: mode veto needs a window: how long a person has to veto`,
	"approval-window-zero.yaml":        `testdata/bad/approval-window-zero.yaml:10: rule "sms-spend-daily": approval.window: must be greater than 0`,
	"approval-notify.yaml":             `testdata/bad/approval-notify.yaml:10: rule "sms-spend-daily": approval: needs action suspend (a rule that only notifies has no suspension to hold)`,
	"approval-unknown-key.yaml":        `testdata/bad/approval-unknown-key.yaml:10: rule "sms-spend-daily": unknown key "after" in approval`,
	"reactivate-notify.yaml":           `testdata/bad/reactivate-notify.yaml:11: rule "sms-spend-daily": reactivate: needs action suspend (a rule that only notifies suspends nothing to reactivate)`,
	"reactivate-null.yaml":             `testdata/bad/reactivate-null.yaml:10: rule "sms-spend-daily": reactivate: must be a mapping with one of after, at, next_period, not null`,
	"reactivate-two.yaml":              `testdata/bad/reactivate-two.yaml:11: rule "sms-spend-daily": reactivate: set only one of after, at, next_period`,
	"reactivate-unknown-key.yaml":      `testdata/bad/reactivate-unknown-key.yaml:11: rule "sms-spend-daily": unknown key "aftr" in reactivate (did you mean "after"?)`,
	"rearm-list.yaml":                  `testdata/bad/rearm-list.yaml:10: rule "sms-spend-daily": rearm_allowance: must be a decimal number, not a list`,
	"rearm-null.yaml":                  `testdata/bad/rearm-null.yaml:10: rule "sms-spend-daily": rearm_allowance: must be a decimal number, not null (leave it out to use the threshold)`,
	"rearm-plus.yaml":                  `testdata/bad/rearm-plus.yaml:10: rule "sms-spend-daily": rearm_allowance: "+50": write the allowance without "+" (the re-armed trigger is always an offset above current usage)`,
	"rearm-precision.yaml":             `testdata/bad/rearm-precision.yaml:10: rule "sms-spend-daily": rearm_allowance: "0.1234567" has more than 6 decimal places (Twilio keeps 6)`,
	"rearm-words.yaml":                 `testdata/bad/rearm-words.yaml:10: rule "sms-spend-daily": rearm_allowance: "lots" is not a decimal number`,
	"rearm-zero.yaml":                  `testdata/bad/rearm-zero.yaml:10: rule "sms-spend-daily": rearm_allowance: "0" must be greater than 0`,
}

func TestLoadBadRuleFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := badRules[filepath.Base(f)]; !ok {
			t.Errorf("%s has no expected error in badRules", f)
		}
	}
	for name, want := range badRules {
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			path := "testdata/bad/" + name
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("fixture missing: %v", err)
			}
			set, err := LoadFiles([]string{path})
			if err == nil {
				t.Fatalf("LoadFiles(%s) succeeded with %d rules, want error %q", path, set.Len(), want)
			}
			if set != nil {
				t.Errorf("LoadFiles returned a Set with its error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			if got := err.Error(); got != want {
				t.Errorf("LoadFiles(%s) error\n got: %s\nwant: %s", path, got, want)
			}
			// Parse on the same bytes says the same.
			data, _ := os.ReadFile(path)
			if _, perr := Parse(path, data); perr == nil || perr.Error() != want {
				t.Errorf("Parse(%s) error = %v, want %q", path, perr, want)
			}
		})
	}
}
