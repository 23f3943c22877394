package deploy_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config"
)

const composeDir = "deploy/compose"

type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	NetworkMode string            `yaml:"network_mode"`
	Environment map[string]string `yaml:"environment"`
	Secrets     []string          `yaml:"secrets"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal(readRepoFile(t, composeDir+"/compose.yaml"), &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

func (s composeService) env(name string) string { return s.Environment[name] }

// TestComposeFile checks that the compose setup hangs together, since no
// Docker engine runs here to try it: the services; every file it mounts
// exists; usagebreaker runs the image's command with the demo config, in the
// simulator's network namespace, with the simulator's credentials; its
// Twilio API and callback URLs are loopback; Prometheus scrapes its admin
// port as job "usagebreaker" and loads the alerts; Grafana gets the
// provisioning and the dashboard; everything is published on loopback only.
func TestComposeFile(t *testing.T) {
	c := loadCompose(t)
	dir := repoFile(t, composeDir)
	for _, name := range []string{"sim", "usagebreaker", "traffic", "prometheus", "grafana"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("compose.yaml has no service %s", name)
		}
	}
	sim, ub, traffic, prom := c.Services["sim"], c.Services["usagebreaker"], c.Services["traffic"], c.Services["prometheus"]
	if sim.Build == nil || sim.Build.Context == "" {
		t.Fatal("the sim service does not build the image")
	}
	if _, err := os.Stat(filepath.Join(dir, sim.Build.Context, sim.Build.Dockerfile)); err != nil {
		t.Errorf("build context %s: %v", sim.Build.Context, err)
	}
	if ub.Image != sim.Image {
		t.Errorf("usagebreaker runs image %q, the sim builds %q", ub.Image, sim.Image)
	}
	if ub.NetworkMode != "service:sim" {
		t.Errorf("usagebreaker network_mode %q: want service:sim (loopback to the simulator)", ub.NetworkMode)
	}
	if traffic.DependsOn["usagebreaker"].Condition != "service_healthy" {
		t.Error("traffic should wait for usagebreaker to be healthy (the image's HEALTHCHECK)")
	}

	// Every bind mount's source exists; named volumes are declared.
	mounts := map[string]map[string]string{} // service -> target -> source
	for name, s := range c.Services {
		mounts[name] = map[string]string{}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("%s: volume %q", name, v)
				continue
			}
			src, dst := parts[0], parts[1]
			mounts[name][dst] = src
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %s is not declared", name, src)
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q on every interface; use 127.0.0.1", name, p)
			}
		}
	}
	for name, s := range c.Secrets {
		if _, err := os.Stat(filepath.Join(dir, s.File)); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}

	// usagebreaker: the image's CMD reads /etc/usagebreaker/config.yaml.
	img := readDockerfile(t, "dev", "unknown")
	cfgPath := flagValue(append(img.Entrypoint, img.Cmd...), "--config")
	src := mounts["usagebreaker"][path.Dir(cfgPath)]
	if src == "" {
		t.Fatalf("usagebreaker does not mount a config directory at %s", path.Dir(cfgPath))
	}
	cfgDoc := parseYAML(t, readRepoFileAbs(t, filepath.Join(dir, src, path.Base(cfgPath))))
	if getYAML(cfgDoc, "state.path") == "" || !strings.HasPrefix(getYAML(cfgDoc, "state.path"), img.Volumes[0]+"/") ||
		mounts["usagebreaker"][img.Volumes[0]] == "" {
		t.Errorf("state.path %q is not on a volume mounted at %s", getYAML(cfgDoc, "state.path"), img.Volumes[0])
	}
	// Credentials: the simulator's parent.
	simSID, simToken := flagValue(sim.Command, "--account-sid"), flagValue(sim.Command, "--auth-token")
	if ub.env("TWILIO_ACCOUNT_SID") != simSID || getYAML(cfgDoc, "twilio.account_sid") != "${TWILIO_ACCOUNT_SID}" {
		t.Errorf("usagebreaker's account SID is not the simulator's %s", simSID)
	}
	tokenFile := getYAML(cfgDoc, "twilio.auth_token_file")
	secretName := strings.TrimPrefix(tokenFile, "/run/secrets/")
	if tok, err := os.ReadFile(filepath.Join(dir, c.Secrets[secretName].File)); err != nil || strings.TrimSpace(string(tok)) != simToken {
		t.Errorf("twilio.auth_token_file %s is not the simulator's token (%v)", tokenFile, err)
	}
	for _, s := range []string{secretName, strings.TrimPrefix(getYAML(cfgDoc, "admin.token_file"), "/run/secrets/")} {
		if !contains(ub.Secrets, s) {
			t.Errorf("usagebreaker does not get the secret %s", s)
		}
	}
	if traffic.env("TWILIO_ACCOUNT_SID") != simSID || traffic.env("TWILIO_AUTH_TOKEN") != simToken {
		t.Error("traffic does not use the simulator's parent credentials")
	}
	// Loopback URLs that stay valid when the API must be https except on loopback.
	_, simPort, _ := net.SplitHostPort(flagValue(sim.Command, "--listen"))
	api, err := url.Parse(getYAML(cfgDoc, "twilio.api_base_url"))
	if err != nil || api.Hostname() != "127.0.0.1" || api.Port() != simPort {
		t.Errorf("api_base_url %q: want http://127.0.0.1:%s (the simulator, over loopback)", getYAML(cfgDoc, "twilio.api_base_url"), simPort)
	}
	pub, _ := url.Parse(getYAML(cfgDoc, "server.public_url"))
	_, cbPort, _ := net.SplitHostPort(getYAML(cfgDoc, "server.listen"))
	if pub == nil || pub.Hostname() != "127.0.0.1" || pub.Port() != cbPort {
		t.Errorf("public_url %q: want http://127.0.0.1:%s (the callback listener, over loopback)", getYAML(cfgDoc, "server.public_url"), cbPort)
	}
	_, adminPort, _ := net.SplitHostPort(getYAML(cfgDoc, "server.admin_listen"))
	if !strings.HasSuffix(traffic.env("ADMIN_URL"), "sim:"+adminPort) || !strings.HasSuffix(traffic.env("SIM_URL"), "sim:"+simPort) {
		t.Errorf("traffic's SIM_URL %q / ADMIN_URL %q do not point at the sim's namespace", traffic.env("SIM_URL"), traffic.env("ADMIN_URL"))
	}

	// Prometheus: the job the alerts expect, the admin port, the alerts loaded.
	var pcfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, composeDir+"/prometheus.yml"), &pcfg); err != nil {
		t.Fatal(err)
	}
	if len(pcfg.ScrapeConfigs) != 1 || pcfg.ScrapeConfigs[0].JobName != "usagebreaker" ||
		len(pcfg.ScrapeConfigs[0].StaticConfigs) != 1 || !contains(pcfg.ScrapeConfigs[0].StaticConfigs[0].Targets, "sim:"+adminPort) {
		t.Errorf("prometheus.yml should scrape job usagebreaker at sim:%s: %+v", adminPort, pcfg.ScrapeConfigs)
	}
	for _, rf := range pcfg.RuleFiles {
		if src := mounts["prometheus"][rf]; filepath.Clean(filepath.Join(dir, src)) != repoFile(t, alertsFile) {
			t.Errorf("rule file %s is not deploy/prometheus/alerts.yaml (mounted from %q)", rf, src)
		}
	}
	if len(pcfg.RuleFiles) != 1 {
		t.Errorf("rule_files %v: want the alerts", pcfg.RuleFiles)
	}
	for _, cmd := range prom.Command {
		if v, ok := strings.CutPrefix(cmd, "--config.file="); ok && mounts["prometheus"][v] != "./prometheus.yml" {
			t.Errorf("prometheus reads %s, which is not ./prometheus.yml", v)
		}
	}
	if mounts["grafana"]["/etc/grafana/provisioning"] != "../grafana/provisioning" {
		t.Error("grafana does not get deploy/grafana/provisioning")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestComposeTrafficTrips runs the compose demo's traffic script, as the
// traffic service would, against the simulator and a daemon with the compose
// config and rules (addresses and secret paths changed for the test): a
// tenant is created, gets its triggers, ramps up and is suspended, and the
// notify rule trips on the way.
func TestComposeTrafficTrips(t *testing.T) {
	sh := tool(t, "sh", "a POSIX shell")
	tool(t, "curl", "Debian: apt-get install curl")
	c := loadCompose(t)
	sim := c.Services["sim"]
	sid, token := flagValue(sim.Command, "--account-sid"), flagValue(sim.Command, "--auth-token")
	t.Setenv("TWILIO_ACCOUNT_SID", sid)
	tmp := t.TempDir()
	tokenFile, adminFile := filepath.Join(tmp, "twilio-auth-token"), filepath.Join(tmp, "admin-token")
	os.WriteFile(tokenFile, readRepoFile(t, composeDir+"/twilio-auth-token"), 0o600)
	os.WriteFile(adminFile, readRepoFile(t, composeDir+"/admin-token"), 0o600)
	files := map[string]string{}
	ruleFiles, _ := filepath.Glob(repoFile(t, composeDir+"/usagebreaker/rules/*.yaml"))
	for _, f := range ruleFiles {
		files["rules/"+filepath.Base(f)] = string(readRepoFileAbs(t, f))
	}
	s := startStack(t, stackOptions{
		Config:      readRepoFile(t, composeDir+"/usagebreaker/config.yaml"),
		Set:         map[string]string{"twilio.auth_token_file": tokenFile, "admin.token_file": adminFile},
		Files:       files,
		ParentSID:   sid,
		ParentToken: token,
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh, repoFile(t, composeDir+"/traffic.sh"))
	cmd.Env = append(os.Environ(),
		"SIM_URL="+s.simURL, "ADMIN_URL="+s.admin, "ADMIN_TOKEN_FILE="+adminFile,
		"TWILIO_ACCOUNT_SID="+c.Services["traffic"].env("TWILIO_ACCOUNT_SID"),
		"TWILIO_AUTH_TOKEN="+c.Services["traffic"].env("TWILIO_AUTH_TOKEN"),
		"ROUNDS=1", "STEP_SECONDS=0.1", "TRIP_TIMEOUT_SECONDS=120")
	out, err := cmd.CombinedOutput()
	t.Logf("traffic.sh:\n%s", out)
	if err != nil {
		t.Fatalf("traffic.sh: %v", err)
	}
	if !strings.Contains(string(out), "is suspended: usagebreaker stopped it") {
		t.Error("traffic.sh did not report a suspension")
	}
	st := s.sim.State()
	if len(st.Accounts) != 1 || st.Accounts[0].Status != "suspended" {
		t.Fatalf("simulator accounts after the script: %+v", st.Accounts)
	}
	_, metrics, err := httpGet(s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`usagebreaker_suspensions_total{outcome="suspended",rule="spend-daily"} 1`,
		`usagebreaker_incidents_total{rule="sms-daily-watch",source="callback"} 1`,
		`usagebreaker_incidents_total{rule="spend-daily",source="callback"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestShippedConfigsLoad loads the container and compose configs with
// config.Load (what `usagebreaker check` runs), their absolute paths (secrets,
// rules, state) mapped into a temp dir laid out like the container. The
// chroot test and the Kubernetes test load theirs in place.
func TestShippedConfigsLoad(t *testing.T) {
	for _, tc := range []struct {
		dir       string
		wantRules int
	}{
		{"deploy/container", 2},
		{composeDir + "/usagebreaker", 2},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
			t.Setenv("USAGEBREAKER_PUBLIC_URL", "https://breaker.example.com")
			tmp := t.TempDir()
			etc := filepath.Join(tmp, "etc")
			if err := os.CopyFS(etc, os.DirFS(repoFile(t, tc.dir))); err != nil {
				t.Fatal(err)
			}
			secrets := filepath.Join(tmp, "secrets")
			os.MkdirAll(secrets, 0o700)
			os.WriteFile(filepath.Join(secrets, "twilio-auth-token"), []byte(simParentToken+"\n"), 0o600)
			os.WriteFile(filepath.Join(secrets, "usagebreaker-admin-token"), []byte("adminTokenForTheTest\n"), 0o600)
			text := strings.NewReplacer("/run/secrets/", secrets+"/", "/var/lib/usagebreaker/", tmp+"/state/").
				Replace(string(readRepoFile(t, tc.dir+"/config.yaml")))
			if err := os.WriteFile(filepath.Join(etc, "config.yaml"), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(filepath.Join(etc, "config.yaml"))
			if err != nil {
				t.Fatalf("%s/config.yaml does not load:\n%v", tc.dir, err)
			}
			if cfg.Rules.Len() != tc.wantRules {
				t.Errorf("%d rules, want %d", cfg.Rules.Len(), tc.wantRules)
			}
		})
	}
}
