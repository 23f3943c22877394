package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/usagebreaker/usagebreaker/config"
)

const haDir = k8sDir + "/ha"

func loadYAMLDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	data := readRepoFile(t, path)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []map[string]any
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
}

// The HA overlay (deploy/kubernetes/ha): the base with 3 replicas on
// Postgres, rolling updates, a PodDisruptionBudget, topology spread and the
// DSN from a Secret.
func TestKubernetesHAOverlay(t *testing.T) {
	base := loadManifests(t)
	dep := find(t, base, "Deployment", "usagebreaker")
	podLabels := get(dep.Raw, "spec", "template", "metadata", "labels")

	kust := loadYAMLDocs(t, haDir+"/kustomization.yaml")[0]
	res := list(kust, "resources")
	if !slices.Contains(res, any("..")) || !slices.Contains(res, any("pdb.yaml")) {
		t.Errorf("resources %v: want the base (..) and pdb.yaml", res)
	}
	patches := map[string]map[string]any{}
	for _, p := range list(kust, "patches") {
		path := str(p, "path")
		docs := loadYAMLDocs(t, haDir+"/"+path)
		if len(docs) != 1 {
			t.Fatalf("patch %s: %d documents", path, len(docs))
		}
		d := docs[0]
		kind, name := str(d, "kind"), str(d, "metadata", "name")
		find(t, base, kind, name) // a patch of something the base has
		patches[kind] = d
	}
	if !strings.Contains(string(readRepoFile(t, haDir+"/kustomization.yaml")), "sslmode=verify-full") {
		t.Error("kustomization.yaml does not document sslmode=verify-full")
	}

	// The Deployment: 3 replicas, rolling, spread, --replica from the pod name.
	d := patches["Deployment"]
	if d == nil {
		t.Fatal("no Deployment patch")
	}
	spec := get(d, "spec")
	replicas, _ := get(spec, "replicas").(int)
	if replicas != 3 {
		t.Errorf("replicas %v, want 3", get(spec, "replicas"))
	}
	if s := str(spec, "strategy", "type"); s != "RollingUpdate" {
		t.Errorf("strategy %q, want RollingUpdate", s)
	}
	if u, _ := get(spec, "strategy", "rollingUpdate", "maxUnavailable").(int); u != 1 {
		t.Errorf("maxUnavailable %v, want 1", get(spec, "strategy", "rollingUpdate", "maxUnavailable"))
	}
	pod := get(spec, "template", "spec")
	keys := map[string]bool{}
	for _, c := range list(pod, "topologySpreadConstraints") {
		keys[str(c, "topologyKey")] = true
		if !reflect.DeepEqual(get(c, "labelSelector", "matchLabels"), podLabels) {
			t.Errorf("topology spread selects %v, not the pods %v", get(c, "labelSelector", "matchLabels"), podLabels)
		}
	}
	if !keys["kubernetes.io/hostname"] || !keys["topology.kubernetes.io/zone"] {
		t.Errorf("topology spread over %v, want hostname and zone", keys)
	}
	c := get(list(pod, "containers"), 0)
	var argv []string
	for _, a := range list(c, "args") {
		argv = append(argv, fmt.Sprint(a))
	}
	if flagValue(argv, "--replica") != "$(POD_NAME)" || flagValue(argv, "--config") != "/etc/usagebreaker/config.yaml" {
		t.Errorf("args %q: want --config /etc/usagebreaker/config.yaml --replica $(POD_NAME)", argv)
	}
	podName := false
	for _, e := range list(c, "env") {
		if str(e, "name") == "POD_NAME" && str(e, "valueFrom", "fieldRef", "fieldPath") == "metadata.name" {
			podName = true
		}
	}
	if !podName {
		t.Error("no POD_NAME env from metadata.name")
	}
	deleted := map[string]bool{}
	secretAt := ""
	for _, m := range list(c, "volumeMounts") {
		if str(m, "$patch") == "delete" {
			deleted["mount "+str(m, "name")] = true
		}
		if str(m, "name") == "postgres" {
			secretAt = str(m, "mountPath")
		}
	}
	postgresSecret := ""
	for _, v := range list(pod, "volumes") {
		if str(v, "$patch") == "delete" {
			deleted["volume "+str(v, "name")] = true
		}
		if str(v, "name") == "postgres" {
			postgresSecret = str(v, "secret", "secretName")
		}
	}
	if !deleted["mount state"] || !deleted["volume state"] {
		t.Errorf("the state volume is not removed (%v)", deleted)
	}
	if postgresSecret == "" || secretAt == "" {
		t.Fatalf("no Secret volume for the DSN (secret %q at %q)", postgresSecret, secretAt)
	}

	// The PVC goes; the budget keeps two of three.
	if p := patches["PersistentVolumeClaim"]; p == nil || str(p, "$patch") != "delete" {
		t.Error("the base's PersistentVolumeClaim is not deleted")
	}
	pdb := loadYAMLDocs(t, haDir+"/pdb.yaml")[0]
	if str(pdb, "kind") != "PodDisruptionBudget" || !reflect.DeepEqual(get(pdb, "spec", "selector", "matchLabels"), podLabels) {
		t.Errorf("pdb %v does not select the pods", pdb)
	}
	if m, _ := get(pdb, "spec", "minAvailable").(int); m < 1 || m >= replicas {
		t.Errorf("minAvailable %v with %d replicas: want at least 1 and fewer than replicas", get(pdb, "spec", "minAvailable"), replicas)
	}

	// The config loads, with the state in Postgres from the Secret's file.
	cm := patches["ConfigMap"]
	cfgText := str(cm, "data", "config.yaml")
	if !strings.Contains(cfgText, secretAt+"/dsn") {
		t.Errorf("the config does not read the DSN from %s/dsn", secretAt)
	}
	tmp := t.TempDir()
	os.MkdirAll(filepath.Join(tmp, "secrets"), 0o700)
	os.MkdirAll(filepath.Join(tmp, "pg"), 0o700)
	os.MkdirAll(filepath.Join(tmp, "rules"), 0o700)
	os.WriteFile(filepath.Join(tmp, "secrets", "twilio-auth-token"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	os.WriteFile(filepath.Join(tmp, "secrets", "admin-token"), []byte("an-admin-token-of-some-length\n"), 0o600)
	os.WriteFile(filepath.Join(tmp, "pg", "dsn"), []byte("postgres://ub@db:5432/ub?sslmode=verify-full\n"), 0o600)
	rulesCM := find(t, base, "ConfigMap", "usagebreaker-rules")
	for name, content := range get(rulesCM.Raw, "data").(map[string]any) {
		os.WriteFile(filepath.Join(tmp, "rules", name), []byte(fmt.Sprint(content)), 0o600)
	}
	text := strings.NewReplacer("/run/secrets/usagebreaker/", tmp+"/secrets/", secretAt+"/", tmp+"/pg/",
		"/etc/usagebreaker-rules/", tmp+"/rules/").Replace(cfgText)
	os.WriteFile(filepath.Join(tmp, "config.yaml"), []byte(text), 0o600)
	t.Setenv("TWILIO_ACCOUNT_SID", simParentSID)
	cfg, err := config.Load(filepath.Join(tmp, "config.yaml"))
	if err != nil {
		t.Fatalf("the HA config does not load:\n%v", err)
	}
	if cfg.State.Postgres == nil || cfg.State.Path != "" || !strings.Contains(cfg.State.Postgres.DSN.Reveal(), "verify-full") {
		t.Errorf("state %+v: want Postgres from the Secret's DSN", cfg.State)
	}
}
