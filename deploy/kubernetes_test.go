package deploy_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config"
)

var update = flag.Bool("update", false, "rewrite generated files (deploy/kubernetes/prometheusrule.yaml)")

const k8sDir = "deploy/kubernetes"

// object is one Kubernetes object, decoded loosely.
type object struct {
	File string
	Raw  map[string]any
}

func (o object) kind() string { s, _ := o.Raw["kind"].(string); return s }
func (o object) name() string { return str(o.Raw, "metadata", "name") }

// get walks maps and list indexes ("spec", "template", 0, ...).
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string { s, _ := get(v, path...).(string); return s }

func list(v any, path ...any) []any { l, _ := get(v, path...).([]any); return l }

// loadManifests parses every YAML document of every file in deploy/kubernetes.
func loadManifests(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoFile(t, k8sDir), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	var out []object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var m map[string]any
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", filepath.Base(f), i, err)
			}
			if m == nil {
				continue
			}
			o := object{File: filepath.Base(f), Raw: m}
			if str(m, "apiVersion") == "" || o.kind() == "" {
				t.Errorf("%s document %d: no apiVersion or kind", o.File, i)
			}
			if o.kind() != "Kustomization" && o.name() == "" {
				t.Errorf("%s document %d: no metadata.name", o.File, i)
			}
			out = append(out, o)
		}
	}
	return out
}

func find(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	for _, o := range objs {
		if o.kind() == kind && (name == "" || o.name() == name) {
			return o
		}
	}
	t.Fatalf("no %s %s in %s", kind, name, k8sDir)
	return object{}
}

// TestKubernetesManifests checks what the issue demands of the manifests,
// by parsing every document: one replica with Recreate; non-root, read-only
// root filesystem, no privilege escalation; probes on /-/healthy and
// /-/ready; the ConfigMaps mounted as directories (no subPath anywhere); the
// Secret referenced; the PVC mounted where state.path points; a Service per
// listener, with only the callback one behind the Ingress; the
// ServiceMonitor on the admin port; and the kustomization listing them all.
func TestKubernetesManifests(t *testing.T) {
	objs := loadManifests(t)
	dep := find(t, objs, "Deployment", "usagebreaker")
	spec := dep.Raw["spec"]
	if r, _ := get(spec, "replicas").(int); r != 1 {
		t.Errorf("replicas %v, want 1 (one SQLite writer)", get(spec, "replicas"))
	}
	if s := str(spec, "strategy", "type"); s != "Recreate" {
		t.Errorf("strategy %q, want Recreate (never two pods on one state file)", s)
	}
	pod := get(spec, "template", "spec")
	podLabels := get(spec, "template", "metadata", "labels")
	if !reflect.DeepEqual(get(spec, "selector", "matchLabels"), podLabels) {
		t.Errorf("selector %v does not match the pod labels %v", get(spec, "selector", "matchLabels"), podLabels)
	}
	if get(pod, "securityContext", "runAsNonRoot") != true {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if uid, _ := get(pod, "securityContext", "runAsUser").(int); uid == 0 {
		t.Error("pod securityContext.runAsUser is missing or 0")
	}
	if str(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}
	ctrs := list(pod, "containers")
	if len(ctrs) != 1 {
		t.Fatalf("%d containers, want 1", len(ctrs))
	}
	c := ctrs[0]
	sc := get(c, "securityContext")
	for key, want := range map[string]any{"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false} {
		if get(sc, key) != want {
			t.Errorf("container securityContext.%s = %v, want %v", key, get(sc, key), want)
		}
	}
	if drop := list(sc, "capabilities", "drop"); !slices.Contains(drop, any("ALL")) {
		t.Errorf("capabilities.drop %v lacks ALL", drop)
	}
	ports := map[string]int{}
	for _, p := range list(c, "ports") {
		n, _ := get(p, "containerPort").(int)
		ports[str(p, "name")] = n
	}
	if ports["callbacks"] != 8080 || ports["admin"] != 9111 {
		t.Errorf("container ports %v: want callbacks 8080 and admin 9111", ports)
	}
	for probe, path := range map[string]string{"livenessProbe": "/-/healthy", "readinessProbe": "/-/ready", "startupProbe": "/-/healthy"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %s", probe, got, path)
		}
		if got := get(c, probe, "httpGet", "port"); got != "admin" && got != 9111 {
			t.Errorf("%s port %v, want the admin port", probe, got)
		}
	}
	args := list(c, "args")
	var argv []string
	for _, a := range args {
		argv = append(argv, fmt.Sprint(a))
	}
	cfgPath := flagValue(argv, "--config")
	if len(argv) == 0 || argv[0] != "run" || cfgPath != "/etc/usagebreaker/config.yaml" {
		t.Errorf("args %q: want run --config /etc/usagebreaker/config.yaml", argv)
	}

	// Volumes: what each mount is, and no subPath anywhere.
	volumes := map[string]any{}
	for _, v := range list(pod, "volumes") {
		volumes[str(v, "name")] = v
	}
	mounts := map[string]string{} // mount path -> volume name
	for _, m := range list(c, "volumeMounts") {
		if get(m, "subPath") != nil || get(m, "subPathExpr") != nil {
			t.Errorf("volumeMount %s uses subPath: a ConfigMap mounted by subPath never sees updates", str(m, "name"))
		}
		if volumes[str(m, "name")] == nil {
			t.Errorf("volumeMount %s has no volume", str(m, "name"))
		}
		mounts[str(m, "mountPath")] = str(m, "name")
	}
	volumeAt := func(path string) (string, any) { // the volume holding path
		best := ""
		for mp := range mounts {
			if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
				best = mp
			}
		}
		if best == "" {
			return "", nil
		}
		return best, volumes[mounts[best]]
	}
	cmName := func(v any) string { return str(v, "configMap", "name") }
	if mp, v := volumeAt(cfgPath); cmName(v) == "" || mp != filepath.Dir(cfgPath) {
		t.Errorf("the config file %s is not in a ConfigMap mounted as its directory (mount %q, volume %v)", cfgPath, mp, v)
	}

	// The config in the ConfigMap: valid, and every path it names is on
	// the right volume.
	cfgCM := find(t, objs, "ConfigMap", cmName(volumes[mounts[filepath.Dir(cfgPath)]]))
	cfgText := str(cfgCM.Raw, "data", filepath.Base(cfgPath))
	if cfgText == "" {
		t.Fatalf("ConfigMap %s has no %s", cfgCM.name(), filepath.Base(cfgPath))
	}
	cfgDoc := parseYAML(t, []byte(cfgText))
	secretVol := func(p string) any {
		_, v := volumeAt(p)
		return get(v, "secret", "secretName")
	}
	for _, key := range []string{"twilio.auth_token_file", "admin.token_file"} {
		p := getYAML(cfgDoc, key)
		if secretVol(p) != "usagebreaker" {
			t.Errorf("%s %q is not on the usagebreaker Secret's volume", key, p)
		}
		if !strings.Contains(string(readRepoFile(t, k8sDir+"/secret.example.yaml")), "\n  "+filepath.Base(p)+":") {
			t.Errorf("secret.example.yaml has no key %s (for %s)", filepath.Base(p), key)
		}
	}
	statePath := getYAML(cfgDoc, "state.path")
	_, stateVol := volumeAt(statePath)
	claim := str(stateVol, "persistentVolumeClaim", "claimName")
	if claim == "" {
		t.Errorf("state.path %s is not on a PersistentVolumeClaim", statePath)
	} else {
		find(t, objs, "PersistentVolumeClaim", claim)
	}
	if _, tmp := volumeAt("/tmp/x"); get(tmp, "emptyDir") == nil {
		t.Error("no emptyDir at /tmp (the root filesystem is read-only)")
	}
	var rulePatterns []string
	if err := cfgDoc.Content[0].Decode(&struct {
		RuleFiles *[]string `yaml:"rule_files"`
	}{&rulePatterns}); err != nil {
		t.Fatal(err)
	}
	rulesCM := object{}
	for _, p := range rulePatterns {
		if _, v := volumeAt(p); cmName(v) != "" {
			rulesCM = find(t, objs, "ConfigMap", cmName(v))
		} else {
			t.Errorf("rule_files %q is not on a ConfigMap volume", p)
		}
	}
	envFromSecret := map[string]string{}
	for _, e := range list(c, "env") {
		if k := str(e, "valueFrom", "secretKeyRef", "key"); k != "" {
			envFromSecret[str(e, "name")] = str(e, "valueFrom", "secretKeyRef", "name") + "/" + k
		}
	}
	if envFromSecret["TWILIO_ACCOUNT_SID"] != "usagebreaker/twilio-account-sid" {
		t.Errorf("TWILIO_ACCOUNT_SID is not read from the Secret: %v", envFromSecret)
	}

	// Load it for real: the files in a temp dir where the pod has its mounts.
	tmp := t.TempDir()
	os.MkdirAll(filepath.Join(tmp, "secrets"), 0o700)
	os.MkdirAll(filepath.Join(tmp, "rules"), 0o700)
	os.WriteFile(filepath.Join(tmp, "secrets", "twilio-auth-token"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	os.WriteFile(filepath.Join(tmp, "secrets", "admin-token"), []byte("adminTokenForTheTest\n"), 0o600)
	rulesData, _ := get(rulesCM.Raw, "data").(map[string]any)
	for name, content := range rulesData {
		os.WriteFile(filepath.Join(tmp, "rules", name), []byte(fmt.Sprint(content)), 0o600)
	}
	text := strings.NewReplacer("/run/secrets/usagebreaker/", tmp+"/secrets/", "/etc/usagebreaker-rules/", tmp+"/rules/",
		"/var/lib/usagebreaker/", tmp+"/state/").Replace(cfgText)
	os.WriteFile(filepath.Join(tmp, "config.yaml"), []byte(text), 0o600)
	t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
	cfg, err := config.Load(filepath.Join(tmp, "config.yaml"))
	if err != nil {
		t.Fatalf("the ConfigMap's config does not load:\n%v", err)
	}
	if cfg.Rules.Len() != len(rulesData) || cfg.Server.AdminListen != ":9111" || cfg.Server.Listen != ":8080" {
		t.Errorf("loaded %d rules (want %d), listen %q, admin %q", cfg.Rules.Len(), len(rulesData), cfg.Server.Listen, cfg.Server.AdminListen)
	}

	// Services: one per listener; the Ingress routes only to the callbacks one.
	svcPort := map[string]string{} // service name -> target port name
	for _, o := range objs {
		if o.kind() != "Service" {
			continue
		}
		if !reflect.DeepEqual(get(o.Raw, "spec", "selector"), podLabels) {
			t.Errorf("Service %s selects %v, not the pod", o.name(), get(o.Raw, "spec", "selector"))
		}
		ps := list(o.Raw, "spec", "ports")
		if len(ps) != 1 {
			t.Errorf("Service %s has %d ports, want one listener each", o.name(), len(ps))
			continue
		}
		svcPort[o.name()] = fmt.Sprint(get(ps[0], "targetPort"))
	}
	if svcPort["usagebreaker-callbacks"] != "callbacks" || svcPort["usagebreaker-admin"] != "admin" {
		t.Errorf("Services %v: want usagebreaker-callbacks -> callbacks and usagebreaker-admin -> admin", svcPort)
	}
	ing := find(t, objs, "Ingress", "")
	for _, r := range list(ing.Raw, "spec", "rules") {
		for _, p := range list(r, "http", "paths") {
			if svc := str(p, "backend", "service", "name"); svcPort[svc] != "callbacks" {
				t.Errorf("the Ingress routes %s to %s: only the callback listener may be exposed", str(p, "path"), svc)
			}
			if !strings.HasPrefix(str(p, "path"), "/twilio/usage-triggers") {
				t.Errorf("the Ingress routes %q: only the callback path is needed", str(p, "path"))
			}
		}
	}
	if host := str(ing.Raw, "spec", "rules", 0, "host"); "https://"+host != getYAML(cfgDoc, "server.public_url") {
		t.Errorf("the Ingress host %q and server.public_url %q differ: signatures would fail", host, getYAML(cfgDoc, "server.public_url"))
	}

	sm := find(t, objs, "ServiceMonitor", "")
	if str(sm.Raw, "spec", "endpoints", 0, "port") != "admin" || str(sm.Raw, "spec", "endpoints", 0, "path") != "/metrics" {
		t.Errorf("the ServiceMonitor must scrape /metrics on the admin port: %v", get(sm.Raw, "spec", "endpoints"))
	}
	if str(sm.Raw, "spec", "selector", "matchLabels", "app.kubernetes.io/component") != "admin" {
		t.Errorf("the ServiceMonitor selects %v, not the admin Service", get(sm.Raw, "spec", "selector"))
	}
	if jl := str(sm.Raw, "spec", "jobLabel"); str(find(t, objs, "Service", "usagebreaker-admin").Raw, "metadata", "labels", jl) != "usagebreaker" {
		t.Errorf("jobLabel %q does not make the job \"usagebreaker\" that the alerts expect", jl)
	}
	find(t, objs, "PrometheusRule", "")
	find(t, objs, "NetworkPolicy", "")

	// The kustomization lists every manifest but the Secret example.
	kust := find(t, objs, "Kustomization", "")
	var listed []string
	for _, r := range list(kust.Raw, "resources") {
		listed = append(listed, fmt.Sprint(r))
	}
	var files []string
	for _, o := range objs {
		if o.File != "kustomization.yaml" && o.File != "secret.example.yaml" && !slices.Contains(files, o.File) {
			files = append(files, o.File)
		}
	}
	sort.Strings(files)
	sort.Strings(listed)
	if !slices.Equal(files, listed) {
		t.Errorf("kustomization resources %v, manifests %v", listed, files)
	}
	if str(kust.Raw, "images", 0, "name") != str(c, "image") {
		t.Errorf("kustomization images[0].name %q is not the container image %q", str(kust.Raw, "images", 0, "name"), str(c, "image"))
	}
}

// prometheusRuleFor builds the PrometheusRule manifest from alerts.yaml.
func prometheusRuleFor(t *testing.T) []byte {
	t.Helper()
	doc := parseYAML(t, readRepoFile(t, alertsFile))
	top := doc.Content[0]
	var groups *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == "groups" {
			groups = top.Content[i+1]
		}
	}
	if groups == nil {
		t.Fatal("alerts.yaml has no groups")
	}
	scalar := func(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }
	mapping := func(kv ...*yaml.Node) *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Content: kv} }
	out := mapping(
		scalar("apiVersion"), scalar("monitoring.coreos.com/v1"),
		scalar("kind"), scalar("PrometheusRule"),
		scalar("metadata"), mapping(scalar("name"), scalar("usagebreaker"),
			scalar("labels"), mapping(scalar("app.kubernetes.io/name"), scalar("usagebreaker"))),
		scalar("spec"), mapping(scalar("groups"), groups),
	)
	var b bytes.Buffer
	b.WriteString("# GENERATED from deploy/prometheus/alerts.yaml; do not edit. Regenerate with\n" +
		"#   go test ./deploy -run TestPrometheusRuleMatchesAlerts -update\n" +
		"# The Prometheus Operator loads these rules (your Prometheus's ruleSelector\n" +
		"# may need a label here, e.g. release: <kube-prometheus-stack release>).\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(out); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPrometheusRuleMatchesAlerts: the PrometheusRule holds exactly the
// rules of deploy/prometheus/alerts.yaml.
func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	want := prometheusRuleFor(t)
	path := repoFile(t, k8sDir+"/prometheusrule.yaml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var a, p struct {
		Groups any `yaml:"groups"`
		Spec   struct {
			Groups any `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, alertsFile), &a); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(got, &p); err != nil {
		t.Fatal(err)
	}
	if a.Groups == nil || !reflect.DeepEqual(a.Groups, p.Spec.Groups) {
		t.Errorf("%s/prometheusrule.yaml differs from %s; regenerate: go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", k8sDir, alertsFile)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s/prometheusrule.yaml is not what the generator writes; regenerate: go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", k8sDir)
	}
}
