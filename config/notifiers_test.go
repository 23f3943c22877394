package config

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/smtptest"
)

func TestLoadNotifiersAndGuard(t *testing.T) {
	srv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	t.Setenv("UB_SLACK", "https://hooks.slack.com/services/T0/B0/secretpart")
	dir := writeTree(t, map[string]string{
		"config.yaml": `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token: abc123
server:
  public_url: https://breaker.example.com
rule_files: ["rules/*.yaml"]
guard:
  max_suspensions: 20
notifiers:
  - name: oncall-sms
    type: twilio_sms
    from: "+15005550006"
    to: ["+15558675310", "+15558675311"]
    template: "{{.Headline}} {{.Incident.Value}}"
  - name: ops-slack
    type: slack
    webhook_url: ${UB_SLACK}
    timeout: 3s
  - name: siem
    type: webhook
    url: http://127.0.0.1:8099/hooks
    secret_file: secrets/hmac
    guard_template_file: templates/guard.tmpl
  - name: ops-mail
    type: email
    smtp: smtp.example.com:587
    username: breaker
    password_file: secrets/smtp
    from: Breaker <breaker@example.com>
    to: [ops@example.com]
    subject: "[{{.Instance}}] {{.Headline}}"
    tls_ca_file: ca.pem
  - name: msg-service
    type: twilio_sms
    messaging_service_sid: MG0123456789abcdef0123456789abcdef
    to: ["+15558675312"]
default_notifiers: [oncall-sms, ops-slack]
`,
		"rules/a.yaml":           fmt.Sprintf(ruleYAML, "a") + "    notify: [siem]\n",
		"rules/b.yaml":           fmt.Sprintf(ruleYAML, "b") + "    notify: []\n",
		"secrets/hmac":           "0123456789abcdef-hmac\n",
		"secrets/smtp":           "smtp-password\n",
		"templates/guard.tmpl":   "guard: {{.Guard.Held}} held\n",
		"ca.pem":                 string(srv.CAPEM),
		"rules/c.yaml.unmatched": "",
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	if cfg.Guard.MaxSuspensions != 20 || cfg.Guard.Window != time.Hour {
		t.Errorf("guard = %+v", cfg.Guard)
	}
	if !slices.Equal(cfg.DefaultNotifiers, []string{"oncall-sms", "ops-slack"}) {
		t.Errorf("default_notifiers = %v", cfg.DefaultNotifiers)
	}
	if len(cfg.Notifiers) != 5 {
		t.Fatalf("notifiers = %+v", cfg.Notifiers)
	}
	sms, slack, siem, mail, msvc := cfg.Notifiers[0], cfg.Notifiers[1], cfg.Notifiers[2], cfg.Notifiers[3], cfg.Notifiers[4]
	if sms.Type != "twilio_sms" || sms.From != "+15005550006" || len(sms.To) != 2 || sms.Template == "" || sms.Timeout != 10*time.Second || sms.Line != 11 {
		t.Errorf("sms = %+v", sms)
	}
	if slack.WebhookURL.Reveal() != "https://hooks.slack.com/services/T0/B0/secretpart" || slack.Timeout != 3*time.Second {
		t.Errorf("slack = %+v", slack)
	}
	if siem.URL != "http://127.0.0.1:8099/hooks" || siem.Secret.Reveal() != "0123456789abcdef-hmac" || siem.GuardTemplate != "guard: {{.Guard.Held}} held" {
		t.Errorf("siem = %+v", siem)
	}
	if mail.SMTP != "smtp.example.com:587" || mail.Username != "breaker" || mail.Password.Reveal() != "smtp-password" ||
		mail.From != "Breaker <breaker@example.com>" || len(mail.CAPEM) == 0 || mail.TLSCAFile != "ca.pem" {
		t.Errorf("mail = %+v", mail)
	}
	if msvc.MessagingServiceSID == "" || msvc.From != "" {
		t.Errorf("messaging service = %+v", msvc)
	}
	if a := cfg.Rules.Get("a"); !a.NotifySet || !slices.Equal(a.Notify, []string{"siem"}) {
		t.Errorf("rule a = %+v", a)
	}
	// Every file read is watched for changes.
	for _, f := range []string{"secrets/hmac", "secrets/smtp", "templates/guard.tmpl", "ca.pem"} {
		if !slices.Contains(cfg.Files, filepath.Join(dir, f)) {
			t.Errorf("Files lacks %s: %v", f, cfg.Files)
		}
	}

	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, secret := range []string{"secretpart", "0123456789abcdef-hmac", "smtp-password"} {
		if strings.Contains(s, secret) {
			t.Errorf("/config shows a secret %q:\n%s", secret, s)
		}
	}
	for _, want := range []string{"name: ops-slack", "webhook_url: <secret>", "max_suspensions: 20", "window: 1h0m0s",
		"default_notifiers:", "timeout: 3s", "tls_ca_file: ca.pem"} {
		if !strings.Contains(s, want) {
			t.Errorf("/config lacks %q:\n%s", want, s)
		}
	}
}

func TestLoadWithoutNotifiers(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"config.yaml": `instance: prod
twilio:
  account_sid: ` + testSID + `
  auth_token: abc123
server:
  public_url: https://breaker.example.com
rule_files: ["rules/*.yaml"]
`,
		"rules/a.yaml": fmt.Sprintf(ruleYAML, "a"),
	})
	cfg := mustLoad(t, filepath.Join(dir, "config.yaml"))
	if cfg.Notifiers != nil || cfg.DefaultNotifiers != nil || cfg.Guard.MaxSuspensions != 0 {
		t.Errorf("defaults: %+v %+v %+v", cfg.Notifiers, cfg.DefaultNotifiers, cfg.Guard)
	}
}
