package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// badConfigs maps each file in testdata/bad to the exact error Load gives
// for it. Every file there must be listed, and each has one problem (FILE is
// the path as given to Load; rule-file problems name the rule file).
var badConfigs = map[string]string{
	"yaml-syntax.yaml":                    "testdata/bad/yaml-syntax.yaml:5: invalid YAML: mapping values are not allowed in this context",
	"multi-doc.yaml":                      "testdata/bad/multi-doc.yaml:9: only one YAML document is allowed",
	"top-level-list.yaml":                 "testdata/bad/top-level-list.yaml:1: the top level must be a mapping, not a list",
	"key-not-string.yaml":                 "testdata/bad/key-not-string.yaml:8: keys must be plain strings, not a list",
	"unknown-key.yaml":                    `testdata/bad/unknown-key.yaml:8: unknown key "foo"`,
	"unknown-key-server.yaml":             `testdata/bad/unknown-key-server.yaml:6: unknown key "listn" in server (did you mean "listen"?)`,
	"duplicate-key.yaml":                  `testdata/bad/duplicate-key.yaml:8: duplicate key "instance" (first at line 1)`,
	"duplicate-key-nested.yaml":           `testdata/bad/duplicate-key-nested.yaml:5: duplicate key "auth_token" in twilio (first at line 4)`,
	"merge-key.yaml":                      `testdata/bad/merge-key.yaml:3: merge keys ("<<") are not supported in twilio`,
	"twilio-not-mapping.yaml":             "testdata/bad/twilio-not-mapping.yaml:2: twilio: must be a mapping, not a string",
	"max-concurrency-type.yaml":           `testdata/bad/max-concurrency-type.yaml:5: twilio.max_concurrency: "ten" is not an integer`,
	"max-concurrency-range.yaml":          "testdata/bad/max-concurrency-range.yaml:5: twilio.max_concurrency: 0 is out of range (1 to 1000)",
	"timeout-no-unit.yaml":                `testdata/bad/timeout-no-unit.yaml:5: twilio.timeout: "10" is not a duration (like "10s" or "1m")`,
	"timeout-zero.yaml":                   "testdata/bad/timeout-zero.yaml:5: twilio.timeout: must be greater than 0",
	"instance-missing.yaml":               "testdata/bad/instance-missing.yaml:1: instance is required",
	"instance-bad.yaml":                   `testdata/bad/instance-bad.yaml:1: instance: "Prod" must be 1 to 16 characters of a-z, 0-9 and "-"`,
	"instance-long.yaml":                  `testdata/bad/instance-long.yaml:1: instance: "abcdefghijklmnopq" must be 1 to 16 characters of a-z, 0-9 and "-"`,
	"account-sid-missing.yaml":            "testdata/bad/account-sid-missing.yaml:2: twilio.account_sid is required",
	"account-sid-bad.yaml":                `testdata/bad/account-sid-bad.yaml:3: twilio.account_sid: "AC0123" is not AC followed by 32 hex digits`,
	"auth-token-missing.yaml":             "testdata/bad/auth-token-missing.yaml:2: twilio.auth_token is required (or twilio.auth_token_file)",
	"auth-token-both.yaml":                "testdata/bad/auth-token-both.yaml:5: twilio.auth_token and twilio.auth_token_file are both set; use one",
	"auth-token-chars.yaml":               "testdata/bad/auth-token-chars.yaml:4: twilio.auth_token: must contain only letters and digits",
	"auth-token-empty.yaml":               "testdata/bad/auth-token-empty.yaml:4: twilio.auth_token: must not be empty",
	"auth-token-file-missing.yaml":        `testdata/bad/auth-token-file-missing.yaml:4: twilio.auth_token_file: cannot read "no-such-token": no such file or directory`,
	"auth-token-file-empty.yaml":          `testdata/bad/auth-token-file-empty.yaml:4: twilio.auth_token_file: "../secrets/empty" is empty`,
	"env-unset.yaml":                      "testdata/bad/env-unset.yaml:4: twilio.auth_token: environment variable USAGEBREAKER_TEST_UNSET is not set",
	"env-unterminated.yaml":               `testdata/bad/env-unterminated.yaml:1: instance: "${" without a closing "}"`,
	"env-bad-name.yaml":                   `testdata/bad/env-bad-name.yaml:1: instance: invalid environment variable name "1X"`,
	"api-base-url-scheme.yaml":            `testdata/bad/api-base-url-scheme.yaml:5: twilio.api_base_url: "ftp://api.example.com" is not an absolute http or https URL`,
	"api-base-url-query.yaml":             `testdata/bad/api-base-url-query.yaml:5: twilio.api_base_url: "http://127.0.0.1:9000/?x=1" must not have a query`,
	"public-url-missing.yaml":             "testdata/bad/public-url-missing.yaml:5: server.public_url is required",
	"public-url-relative.yaml":            `testdata/bad/public-url-relative.yaml:6: server.public_url: "/twilio" is not an absolute http or https URL`,
	"public-url-fragment.yaml":            `testdata/bad/public-url-fragment.yaml:6: server.public_url: "https://breaker.example.com/#x" must not have a fragment`,
	"public-url-userinfo.yaml":            "testdata/bad/public-url-userinfo.yaml:6: server.public_url: must not contain a user name or password",
	"public-url-path.yaml":                `testdata/bad/public-url-path.yaml:6: server.public_url: "https://breaker.example.com/hooks" has a path ("/hooks"); give the bare base URL Twilio calls, like https://breaker.example.com: callbacks are served at /twilio/usage-triggers/{rule} and signed over public_url plus that path`,
	"public-url-no-host.yaml":             `testdata/bad/public-url-no-host.yaml:6: server.public_url: "https:///callbacks" has no host`,
	"listen-no-port.yaml":                 `testdata/bad/listen-no-port.yaml:6: server.listen: "8080" is not a host:port address (missing port in address)`,
	"listen-bad-port.yaml":                `testdata/bad/listen-bad-port.yaml:6: server.listen: ":99999" has an invalid port (want 0 to 65535)`,
	"listen-overlaps-admin.yaml":          `testdata/bad/listen-overlaps-admin.yaml:6: server.admin_listen "127.0.0.1:9111" overlaps server.listen ":9111"; the admin API needs its own address`,
	"admin-listen-same.yaml":              `testdata/bad/admin-listen-same.yaml:7: server.admin_listen "127.0.0.1:8080" overlaps server.listen "127.0.0.1:8080"; the admin API needs its own address`,
	"reconcile-empty.yaml":                "testdata/bad/reconcile-empty.yaml:9: reconcile.schedule: must not be empty",
	"reconcile-bad.yaml":                  `testdata/bad/reconcile-bad.yaml:9: reconcile.schedule: "every 10m" is not a valid cron spec: expected exactly 5 fields, found 2: [every 10m]`,
	"poll-too-fast.yaml":                  `testdata/bad/poll-too-fast.yaml:9: poll.schedule: "@every 0s": the interval must be at least 1s`,
	"poll-bad-tz.yaml":                    `testdata/bad/poll-bad-tz.yaml:9: poll.schedule: "TZ=UTC" is not a valid cron spec`,
	"rule-files-missing.yaml":             "testdata/bad/rule-files-missing.yaml:1: rule_files is required",
	"rule-files-empty.yaml":               "testdata/bad/rule-files-empty.yaml:7: rule_files: at least one pattern is required",
	"rule-files-scalar.yaml":              "testdata/bad/rule-files-scalar.yaml:7: rule_files: must be a list, not a string",
	"rule-files-no-match.yaml":            `testdata/bad/rule-files-no-match.yaml:9: rule_files[1]: "../rules/*.yml" matches no files`,
	"rule-files-bad-pattern.yaml":         `testdata/bad/rule-files-bad-pattern.yaml:7: rule_files[0]: bad pattern "../rules/[.yaml"`,
	"state-path-empty.yaml":               "testdata/bad/state-path-empty.yaml:9: state.path: must not be empty",
	"admin-token-space.yaml":              "testdata/bad/admin-token-space.yaml:9: admin.token: must not contain spaces or control characters",
	"admin-token-both.yaml":               "testdata/bad/admin-token-both.yaml:10: admin.token and admin.token_file are both set; use one",
	"default-notifiers-none.yaml":         `testdata/bad/default-notifiers-none.yaml:8: default_notifiers[0]: unknown notifier "ops-slack" (no notifiers are configured)`,
	"default-notifiers-twice.yaml":        `testdata/bad/default-notifiers-twice.yaml:12: default_notifiers[1]: "ops-slack" is listed twice`,
	"default-notifiers-unknown.yaml":      `testdata/bad/default-notifiers-unknown.yaml:12: default_notifiers[0]: unknown notifier "ops-slak" (did you mean "ops-slack"?)`,
	"email-ca-missing.yaml":               `testdata/bad/email-ca-missing.yaml:14: notifier "mail": tls_ca_file: cannot read "no-such-ca.pem": no such file or directory`,
	"email-ca-not-pem.yaml":               `testdata/bad/email-ca-not-pem.yaml:14: notifier "mail": tls_ca_file: "../secrets/not-pem" holds no PEM certificate`,
	"email-from-bad.yaml":                 `testdata/bad/email-from-bad.yaml:12: notifier "mail": from: "breaker" is not an e-mail address`,
	"email-password-no-username.yaml":     `testdata/bad/email-password-no-username.yaml:14: notifier "mail": password: needs username`,
	"email-smtp-bad.yaml":                 `testdata/bad/email-smtp-bad.yaml:11: notifier "mail": smtp: "smtp.example.com" is not host:port (like smtp.example.com:587)`,
	"email-smtp-missing.yaml":             `testdata/bad/email-smtp-missing.yaml:9: notifier "mail": smtp is required`,
	"email-subject-bad.yaml":              `testdata/bad/email-subject-bad.yaml:14: notifier "mail": subject: incident:1:8: executing "incident" at <.Guard.Held>: nil pointer evaluating *notify.Guard.Held (.Guard is set only on the guard's page: wrap it in {{with .Guard}}...{{end}})`,
	"email-to-bad.yaml":                   `testdata/bad/email-to-bad.yaml:13: notifier "mail": to[1]: "ops at example" is not an e-mail address`,
	"email-username-no-password.yaml":     `testdata/bad/email-username-no-password.yaml:14: notifier "mail": password (or password_file) is required with username`,
	"guard-max-zero.yaml":                 `testdata/bad/guard-max-zero.yaml:9: guard.max_suspensions: 0 is out of range (1 to 1000000; leave guard out to turn it off)`,
	"guard-not-mapping.yaml":              `testdata/bad/guard-not-mapping.yaml:8: guard: must be a mapping, not a number`,
	"guard-unknown-key.yaml":              `testdata/bad/guard-unknown-key.yaml:9: unknown key "max_suspension" in guard (did you mean "max_suspensions"?)`,
	"guard-window-alone.yaml":             `testdata/bad/guard-window-alone.yaml:9: guard.window needs guard.max_suspensions`,
	"guard-window-short.yaml":             `testdata/bad/guard-window-short.yaml:10: guard.window: 10s is out of range (1m to 744h)`,
	"notifier-name-bad.yaml":              `testdata/bad/notifier-name-bad.yaml:9: notifiers[0]: name: "Ops Slack" must be 1 to 32 characters of a-z, 0-9 and "-"`,
	"notifier-name-dup.yaml":              `testdata/bad/notifier-name-dup.yaml:12: notifier "ops-slack": duplicate name; first defined at line 9`,
	"notifier-name-missing.yaml":          `testdata/bad/notifier-name-missing.yaml:9: notifiers[0]: name is required`,
	"notifier-null-entry.yaml":            `testdata/bad/notifier-null-entry.yaml:9: notifiers[0]: must be a mapping, not null`,
	"notifier-template-bad.yaml":          `testdata/bad/notifier-template-bad.yaml:12: notifier "ops-slack": template: incident:1:11: executing "incident" at <.Incident.Acount>: can't evaluate field Acount in type *notify.Incident`,
	"notifier-template-both.yaml":         `testdata/bad/notifier-template-both.yaml:13: notifier "ops-slack": template and template_file are both set; use one`,
	"notifier-template-empty.yaml":        `testdata/bad/notifier-template-empty.yaml:12: notifier "ops-slack": template: must not be empty`,
	"notifier-template-file-missing.yaml": `testdata/bad/notifier-template-file-missing.yaml:12: notifier "ops-slack": guard_template_file: cannot read "no-such.tmpl": no such file or directory`,
	"notifier-timeout-range.yaml":         `testdata/bad/notifier-timeout-range.yaml:12: notifier "ops-slack": timeout: 10m0s is out of range (more than 0, at most 5m0s)`,
	"notifier-type-bad.yaml":              `testdata/bad/notifier-type-bad.yaml:10: notifier "ops": type: "slak" must be one of twilio_sms, slack, webhook, email (did you mean "slack"?)`,
	"notifier-type-missing.yaml":          `testdata/bad/notifier-type-missing.yaml:9: notifier "ops": type is required`,
	"notifier-unknown-key.yaml":           `testdata/bad/notifier-unknown-key.yaml:12: notifier "ops-slack": unknown key "tmplate" (did you mean "template"?)`,
	"notifier-wrong-type-key.yaml":        `testdata/bad/notifier-wrong-type-key.yaml:12: notifier "ops-slack": url is not a key of type slack (it belongs to webhook)`,
	"notifiers-not-list.yaml":             `testdata/bad/notifiers-not-list.yaml:8: notifiers: must be a list, not a mapping`,
	"notifiers-null.yaml":                 `testdata/bad/notifiers-null.yaml:8: notifiers: must be a list of notifiers, not null`,
	"rule-notify-unknown.yaml":            `testdata/notifyrules/r.yaml:10: rule "sms-spend-daily": notify[0]: unknown notifier "ops-slak" (did you mean "ops-slack"?)`,
	"slack-url-both.yaml":                 `testdata/bad/slack-url-both.yaml:12: notifier "ops": webhook_url and webhook_url_file are both set; use one`,
	"slack-url-http.yaml":                 `testdata/bad/slack-url-http.yaml:11: notifier "ops": webhook_url: must be https (http is allowed only to localhost)`,
	"slack-url-missing.yaml":              `testdata/bad/slack-url-missing.yaml:9: notifier "ops": webhook_url is required (or webhook_url_file)`,
	"sms-from-bad.yaml":                   `testdata/bad/sms-from-bad.yaml:11: notifier "sms": from: "555-0006!" is not an E.164 number (+15005550006), a short code or an alphanumeric sender ID`,
	"sms-from-both.yaml":                  `testdata/bad/sms-from-both.yaml:12: notifier "sms": from and messaging_service_sid are both set; use one`,
	"sms-from-missing.yaml":               `testdata/bad/sms-from-missing.yaml:9: notifier "sms": from is required (or messaging_service_sid)`,
	"sms-msid-bad.yaml":                   `testdata/bad/sms-msid-bad.yaml:11: notifier "sms": messaging_service_sid: "MG123" is not MG followed by 32 hex digits`,
	"sms-to-bad.yaml":                     `testdata/bad/sms-to-bad.yaml:12: notifier "sms": to[0]: "5558675310" is not an E.164 phone number (like +15558675310)`,
	"sms-to-empty.yaml":                   `testdata/bad/sms-to-empty.yaml:12: notifier "sms": to: at least one recipient is required`,
	"sms-to-missing.yaml":                 `testdata/bad/sms-to-missing.yaml:9: notifier "sms": to is required`,
	"sms-to-twice.yaml":                   `testdata/bad/sms-to-twice.yaml:14: notifier "sms": to[1]: "+15558675310" is listed twice`,
	"webhook-secret-missing.yaml":         `testdata/bad/webhook-secret-missing.yaml:9: notifier "siem": secret is required (or secret_file)`,
	"webhook-secret-short.yaml":           `testdata/bad/webhook-secret-short.yaml:12: notifier "siem": secret: must be at least 16 characters (receivers verify signatures with it)`,
	"webhook-url-missing.yaml":            `testdata/bad/webhook-url-missing.yaml:9: notifier "siem": url is required`,
	"webhook-url-userinfo.yaml":           `testdata/bad/webhook-url-userinfo.yaml:11: notifier "siem": url: must not contain a user name or password`,
	"bad-rule-file.yaml":                  `testdata/badrules/bad.yaml:5: rule "sms-spend-daily": unknown usage_category "totalprices" (did you mean "totalprice"?)`,
}

func TestLoadBadConfigs(t *testing.T) {
	unsetEnv(t, "USAGEBREAKER_TEST_UNSET")
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := badConfigs[filepath.Base(f)]; !ok {
			t.Errorf("%s has no expected error in badConfigs", f)
		}
	}
	for name, want := range badConfigs {
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			path := "testdata/bad/" + name
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("fixture missing: %v", err)
			}
			cfg, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) succeeded, want error %q", path, want)
			}
			if cfg != nil {
				t.Errorf("Load returned a Config with its error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			if got := err.Error(); got != want {
				t.Errorf("Load(%s) error\n got: %s\nwant: %s", path, got, want)
			}
		})
	}
}

// unsetEnv unsets a variable for the test, restoring it afterwards.
func unsetEnv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "") // restores the old value at cleanup
	os.Unsetenv(key)
}
