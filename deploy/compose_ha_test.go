package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config"
)

const composeHADir = composeDir + "/ha"

// The HA compose variant: Postgres, a balancer and three replicas with
// different names and listeners, each config loading with its state in
// Postgres, the balancer sending callbacks to every replica.
func TestComposeHAFile(t *testing.T) {
	var c composeFile
	if err := yaml.Unmarshal(readRepoFile(t, composeHADir+"/compose.yaml"), &c); err != nil {
		t.Fatalf("ha/compose.yaml: %v", err)
	}
	dir := repoFile(t, composeHADir)
	for _, name := range []string{"sim", "postgres", "balancer", "replica-a", "replica-b", "replica-c"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("ha/compose.yaml has no service %s", name)
		}
	}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q on every interface; use 127.0.0.1", name, p)
			}
		}
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %s is not declared", name, src)
			}
		}
	}
	for name, s := range c.Secrets {
		if _, err := os.Stat(filepath.Join(dir, s.File)); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}
	nginx := string(readRepoFile(t, composeHADir+"/nginx.conf"))
	upstreams := regexp.MustCompile(`server 127\.0\.0\.1:(\d+)`).FindAllStringSubmatch(nginx, -1)
	if !strings.Contains(nginx, "listen 8080;") || len(upstreams) != 3 {
		t.Fatalf("nginx.conf: want a listener on 8080 and 3 upstreams, got %v", upstreams)
	}
	dsn := strings.TrimSpace(string(readRepoFile(t, composeHADir+"/postgres-dsn")))
	names := map[string]bool{}
	for _, name := range []string{"replica-a", "replica-b", "replica-c"} {
		s := c.Services[name]
		if s.NetworkMode != "service:sim" || s.Image != c.Services["sim"].Image {
			t.Errorf("%s: network_mode %q, image %q: want the simulator's namespace and image", name, s.NetworkMode, s.Image)
		}
		if s.DependsOn["postgres"].Condition != "service_healthy" {
			t.Errorf("%s does not wait for Postgres to be healthy", name)
		}
		replica, cfgPath := flagValue(s.Command, "--replica"), flagValue(s.Command, "--config")
		if replica == "" || names[replica] {
			t.Errorf("%s: --replica %q missing or shared", name, replica)
		}
		names[replica] = true
		if !slices.Contains(s.Secrets, "postgres-dsn") {
			t.Errorf("%s lacks the postgres-dsn secret", name)
		}
		// The config loads, with the state in Postgres, and listens where the balancer sends.
		tmp := t.TempDir()
		os.MkdirAll(filepath.Join(tmp, "secrets"), 0o700)
		os.MkdirAll(filepath.Join(tmp, "rules"), 0o700)
		os.WriteFile(filepath.Join(tmp, "secrets", "twilio-auth-token"), []byte(simParentToken+"\n"), 0o600)
		os.WriteFile(filepath.Join(tmp, "secrets", "usagebreaker-admin-token"), []byte("adminTokenForTheTest\n"), 0o600)
		os.WriteFile(filepath.Join(tmp, "secrets", "postgres-dsn"), []byte(dsn+"\n"), 0o600)
		if err := os.CopyFS(filepath.Join(tmp, "rules"), os.DirFS(repoFile(t, composeDir+"/usagebreaker/rules"))); err != nil {
			t.Fatal(err)
		}
		text := strings.NewReplacer("/run/secrets/", tmp+"/secrets/", "/etc/usagebreaker-rules/", tmp+"/rules/").
			Replace(string(readRepoFile(t, composeHADir+"/usagebreaker/"+filepath.Base(cfgPath))))
		os.WriteFile(filepath.Join(tmp, "config.yaml"), []byte(text), 0o600)
		t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
		cfg, err := config.Load(filepath.Join(tmp, "config.yaml"))
		if err != nil {
			t.Fatalf("%s: %s does not load:\n%v", name, cfgPath, err)
		}
		if cfg.State.Postgres == nil || cfg.State.Postgres.DSN.Reveal() != dsn {
			t.Errorf("%s: state %+v, want Postgres from the postgres-dsn secret", name, cfg.State)
		}
		if cfg.Server.PublicURL != "http://127.0.0.1:8080" {
			t.Errorf("%s: public_url %q, want the balancer", name, cfg.Server.PublicURL)
		}
		port := strings.TrimPrefix(cfg.Server.Listen, ":")
		found := false
		for _, u := range upstreams {
			found = found || u[1] == port
		}
		if !found {
			t.Errorf("%s listens on %s, which the balancer does not send to", name, cfg.Server.Listen)
		}
	}
}
