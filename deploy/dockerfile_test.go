package deploy_test

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usagebreaker/usagebreaker/internal/decimal"
	"github.com/usagebreaker/usagebreaker/internal/testenv"
	"github.com/usagebreaker/usagebreaker/internal/twiliosim"
	ubrules "github.com/usagebreaker/usagebreaker/rules"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, ...
	Args string
	Line int
}

// parseDockerfile splits a Dockerfile into instructions: comment lines are
// dropped (also inside continuations, as Docker does) and lines ending in a
// backslash are joined.
func parseDockerfile(text string) ([]instruction, error) {
	var out []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, errors.New("the Dockerfile ends inside a continuation line")
	}
	return out, sc.Err()
}

// shellWords splits a shell command the way sh would for the simple commands
// a Dockerfile RUN holds: quotes, backslashes, ${VAR} and $VAR from vars.
// Control operators and unknown variables are errors, so a build line the
// test cannot reproduce exactly fails loudly.
func shellWords(s string, vars map[string]string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	expand := func(i int) (int, error) { // s[i] == '$'
		j := i + 1
		var name string
		if j < len(s) && s[j] == '{' {
			k := strings.IndexByte(s[j:], '}')
			if k < 0 {
				return 0, fmt.Errorf("unclosed ${ in %q", s)
			}
			name, j = s[j+1:j+k], j+k+1
		} else {
			k := j
			for k < len(s) && (s[k] == '_' || s[k] >= 'A' && s[k] <= 'Z' || s[k] >= 'a' && s[k] <= 'z' || s[k] >= '0' && s[k] <= '9') {
				k++
			}
			name, j = s[j:k], k
		}
		v, ok := vars[name]
		if !ok {
			return 0, fmt.Errorf("variable %q has no value in the test", name)
		}
		w.WriteString(v)
		return j, nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
			i++
		case c == '\'':
			k := strings.IndexByte(s[i+1:], '\'')
			if k < 0 {
				return nil, fmt.Errorf("unclosed ' in %q", s)
			}
			w.WriteString(s[i+1 : i+1+k])
			inWord, i = true, i+k+2
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch s[i] {
				case '\\':
					i++
					if i < len(s) {
						w.WriteByte(s[i])
					}
				case '$':
					j, err := expand(i)
					if err != nil {
						return nil, err
					}
					i = j - 1
				default:
					w.WriteByte(s[i])
				}
			}
			if i >= len(s) {
				return nil, fmt.Errorf(`unclosed " in %q`, s)
			}
			i++
		case c == '\\':
			if i+1 < len(s) {
				w.WriteByte(s[i+1])
			}
			inWord, i = true, i+2
		case c == '$':
			j, err := expand(i)
			if err != nil {
				return nil, err
			}
			inWord, i = true, j
		case strings.IndexByte(";&|<>()`", c) >= 0:
			return nil, fmt.Errorf("shell operator %q in %q: keep the go build a simple command", c, s)
		default:
			w.WriteByte(c)
			inWord, i = true, i+1
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	vars := map[string]string{"V": "1.2 3", "R": "abc"}
	got, err := shellWords(`CGO_ENABLED=0 go build -ldflags="-s -X a.V=${V} -X a.R=$R" -o '/out/x y' ./cmd`, vars)
	want := []string{"CGO_ENABLED=0", "go", "build", "-ldflags=-s -X a.V=1.2 3 -X a.R=abc", "-o", "/out/x y", "./cmd"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("shellWords = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{`go build && rm -rf /`, `go build "x`, `go build ${NOPE}`, `go build; true`} {
		if _, err := shellWords(bad, vars); err == nil {
			t.Errorf("shellWords(%q) accepted it", bad)
		}
	}
}

// image is what the test reads from the Dockerfile.
type image struct {
	Builder, Base string
	Env           []string // NAME=value before "go build"
	BuildArgs     []string // the go build arguments, -o and the package included
	Output        string   // the -o path in the builder
	Entrypoint    []string
	Cmd           []string
	Healthcheck   []string
	User          string
	Expose        []int
	Volumes       []string
}

// readDockerfile parses the repository's Dockerfile. version and revision are
// the build args to stamp in.
func readDockerfile(t *testing.T, version, revision string) image {
	t.Helper()
	insts, err := parseDockerfile(string(readRepoFile(t, "Dockerfile")))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH}
	var img image
	var froms []string
	execForm := func(in instruction) []string {
		var argv []string
		if err := json.Unmarshal([]byte(in.Args), &argv); err != nil || len(argv) == 0 {
			t.Fatalf("Dockerfile:%d: %s must use the exec form [\"...\"] (the image has no shell): %v", in.Line, in.Cmd, err)
		}
		return argv
	}
	for _, in := range insts {
		switch in.Cmd {
		case "FROM":
			f := strings.Fields(in.Args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			froms = append(froms, f[0])
		case "ARG":
			name, def, ok := strings.Cut(in.Args, "=")
			if _, set := vars[name]; !set && ok {
				vars[name] = def
			}
		case "RUN":
			if !strings.Contains(in.Args, "go build") {
				continue
			}
			if img.BuildArgs != nil {
				t.Fatalf("Dockerfile:%d: a second go build", in.Line)
			}
			v := map[string]string{}
			for k, x := range vars {
				v[k] = x
			}
			v["VERSION"], v["REVISION"] = version, revision
			words, err := shellWords(in.Args, v)
			if err != nil {
				t.Fatalf("Dockerfile:%d: %v", in.Line, err)
			}
			for len(words) > 0 && strings.HasPrefix(words[0], "--mount=") {
				words = words[1:]
			}
			for len(words) > 0 && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(words[0]) {
				img.Env = append(img.Env, words[0])
				words = words[1:]
			}
			if len(words) < 2 || words[0] != "go" || words[1] != "build" {
				t.Fatalf("Dockerfile:%d: want [ENV=...] go build ..., got %q", in.Line, words)
			}
			img.BuildArgs = words[2:]
			for i, a := range img.BuildArgs {
				if a == "-o" && i+1 < len(img.BuildArgs) {
					img.Output = img.BuildArgs[i+1]
				}
			}
		case "ENTRYPOINT":
			img.Entrypoint = execForm(in)
		case "CMD":
			img.Cmd = execForm(in)
		case "HEALTHCHECK":
			_, rest, ok := strings.Cut(in.Args, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD", in.Line)
			}
			img.Healthcheck = execForm(instruction{Cmd: in.Cmd, Args: rest, Line: in.Line})
		case "USER":
			img.User = in.Args
		case "EXPOSE":
			for _, p := range strings.Fields(in.Args) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					t.Fatalf("Dockerfile:%d: EXPOSE %q", in.Line, p)
				}
				img.Expose = append(img.Expose, n)
			}
		case "VOLUME":
			img.Volumes = execForm(in)
		}
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage Dockerfile, got FROM %v", froms)
	}
	img.Builder, img.Base = froms[0], froms[len(froms)-1]
	if img.BuildArgs == nil {
		t.Fatal("the Dockerfile has no go build")
	}
	return img
}

// TestDockerfile checks the Dockerfile's promises without a Docker engine:
// a pinned builder at least as new as go.mod wants, a distroless static final
// stage as a numeric non-root user, CGO off, -trimpath, the version stamped,
// both ports, the state volume, a shell-free HEALTHCHECK and a .dockerignore
// that keeps the build inputs. Then it builds the binary with exactly the
// Dockerfile's go build line and shows that it is static and stamped, and (as
// root) runs it from an empty root as the image's user.
func TestDockerfile(t *testing.T) {
	const version, revision = "v9.8.7-test", "0123456789abcdef0123456789abcdef01234567"
	img := readDockerfile(t, version, revision)

	m := regexp.MustCompile(`^golang:(\d+)\.(\d+)\.(\d+)(-[a-z0-9]+)?(@sha256:[0-9a-f]{64})?$`).FindStringSubmatch(img.Builder)
	if m == nil {
		t.Errorf("builder %q: pin an exact Go release (golang:1.N.P[-variant][@sha256:...])", img.Builder)
	} else {
		gomod := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)(?:\.(\d+))?$`).FindStringSubmatch(string(readRepoFile(t, "go.mod")))
		num := func(parts []string) (v int) {
			for _, p := range parts {
				n, _ := strconv.Atoi(p) // "" (no patch) is 0
				v = v*1000 + n
			}
			return v
		}
		if gomod == nil {
			t.Fatal("go.mod has no go line")
		}
		if num(m[1:4]) < num(gomod[1:4]) {
			t.Errorf("builder %s is older than go.mod's go %s.%s.%s", img.Builder, gomod[1], gomod[2], gomod[3])
		}
	}
	if !strings.HasPrefix(img.Base, "gcr.io/distroless/static") && img.Base != "scratch" {
		t.Errorf("final stage %q: want distroless static (or scratch with CA certificates)", img.Base)
	}
	if !slices.Contains(img.Env, "CGO_ENABLED=0") {
		t.Errorf("go build env %q lacks CGO_ENABLED=0", img.Env)
	}
	if !slices.Contains(img.BuildArgs, "-trimpath") {
		t.Errorf("go build %q lacks -trimpath", img.BuildArgs)
	}
	uid, gid := parseUser(t, img.User)
	if uid == 0 {
		t.Errorf("USER %q is root", img.User)
	}
	if len(img.Entrypoint) == 0 || len(img.Cmd) == 0 || len(img.Healthcheck) == 0 {
		t.Fatalf("ENTRYPOINT %q, CMD %q, HEALTHCHECK %q: all three are needed", img.Entrypoint, img.Cmd, img.Healthcheck)
	}
	if img.Entrypoint[0] != img.Healthcheck[0] || !slices.Contains(img.Healthcheck, "healthcheck") {
		t.Errorf("HEALTHCHECK %q should run the binary's healthcheck command", img.Healthcheck)
	}
	cfgPath := flagValue(append(img.Entrypoint, img.Cmd...), "--config")
	if cfgPath != "/etc/usagebreaker/config.yaml" {
		t.Errorf("CMD %q: want run --config /etc/usagebreaker/config.yaml", img.Cmd)
	}
	checkDockerignore(t)

	// The container example config must fit the image: its ports are the
	// exposed ones, its state is in the volume.
	cfg := parseYAML(t, readRepoFile(t, "deploy/container/config.yaml"))
	for _, key := range []string{"server.listen", "server.admin_listen"} {
		_, port, err := net.SplitHostPort(getYAML(cfg, key))
		n, _ := strconv.Atoi(port)
		if err != nil || !slices.Contains(img.Expose, n) {
			t.Errorf("deploy/container/config.yaml %s %q is not an EXPOSEd port %v", key, getYAML(cfg, key), img.Expose)
		}
	}
	state := getYAML(cfg, "state.path")
	if len(img.Volumes) != 1 || !strings.HasPrefix(state, img.Volumes[0]+"/") {
		t.Errorf("state.path %q is not in the VOLUME %q", state, img.Volumes)
	}

	bin := buildLikeDockerfile(t, img)
	checkStatic(t, bin, version, revision)

	t.Run("chroot", func(t *testing.T) {
		if os.Geteuid() != 0 {
			unavailable(t, "running the image's binary in an empty root needs root (chroot); run the tests as root to include it")
		}
		runInEmptyRoot(t, img, bin, uid, gid, version)
	})
}

func parseUser(t *testing.T, user string) (uid, gid int) {
	t.Helper()
	u, g, ok := strings.Cut(user, ":")
	var err1, err2 error
	uid, err1 = strconv.Atoi(u)
	gid, err2 = strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("USER %q: want numeric UID:GID (Kubernetes can only check runAsNonRoot for numeric users)", user)
	}
	return uid, gid
}

func flagValue(argv []string, name string) string {
	for i, a := range argv {
		if a == name && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// checkDockerignore: the build context keeps what go build needs and drops
// the repository metadata and local state.
func checkDockerignore(t *testing.T) {
	t.Helper()
	var patterns []string
	for _, l := range strings.Split(string(readRepoFile(t, ".dockerignore")), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, strings.TrimPrefix(l, "/"))
		}
	}
	ignored := func(p string) bool {
		for _, pat := range patterns {
			for _, cand := range []string{p, path.Dir(p)} {
				if ok, _ := path.Match(strings.TrimSuffix(pat, "/"), cand); ok {
					return true
				}
			}
			if rest, ok := strings.CutPrefix(pat, "**/"); ok {
				if ok, _ := path.Match(rest, path.Base(p)); ok {
					return true
				}
			}
		}
		return false
	}
	for _, need := range []string{"go.mod", "go.sum", "cmd/usagebreaker/main.go", "internal/version/version.go", "daemon/daemon.go"} {
		if ignored(need) {
			t.Errorf(".dockerignore drops %s, which the build needs", need)
		}
	}
	for _, drop := range []string{".git", "data/usagebreaker.db"} {
		if !ignored(drop) {
			t.Errorf(".dockerignore keeps %s in the build context", drop)
		}
	}
}

// buildLikeDockerfile runs the Dockerfile's go build, with its environment
// and arguments, in the repository (the builder's WORKDIR after COPY . .).
func buildLikeDockerfile(t *testing.T, img image) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "usagebreaker")
	args := slices.Clone(img.BuildArgs)
	if i := slices.Index(args, "-o"); i >= 0 {
		args[i+1] = out
	} else {
		t.Fatal("the Dockerfile's go build has no -o")
	}
	gobin := tool(t, "go", "the Go toolchain")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, append([]string{"build"}, args...)...)
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	cmd.Env = append(cmd.Env, img.Env...)
	started := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %q (env %q): %v\n%s", args, img.Env, err, b)
	}
	t.Logf("built the image's binary with env %q and go build %q in %v", img.Env, args, time.Since(started).Round(time.Second))
	return out
}

// checkStatic: no program interpreter, no shared libraries, built with CGO
// off and -trimpath, and the version and revision stamped in.
func checkStatic(t *testing.T, bin, version, revision string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a program interpreter (PT_INTERP): it is dynamically linked")
		}
		if p.Type == elf.PT_DYNAMIC {
			t.Error("the binary has a dynamic section (PT_DYNAMIC)")
		}
	}
	if f.Section(".dynamic") != nil {
		if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
			t.Errorf("the binary needs shared libraries (DT_NEEDED): %v %v", libs, err)
		}
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), version) || !strings.Contains(string(out), revision) {
		t.Errorf("usagebreaker version = %q, %v: the Dockerfile's -ldflags -X did not stamp %s and %s", out, err, version, revision)
	}
	if fi, err := os.Stat(bin); err == nil {
		t.Logf("binary: %.1f MiB, static, %s", float64(fi.Size())/(1<<20), strings.TrimSpace(string(out)))
	}
}

// runInEmptyRoot builds a root that holds what the distroless image holds
// (passwd, group, CA certificates, /tmp) plus the binary, the container
// example config and rules, the secrets and the state volume, then runs the
// image's ENTRYPOINT + CMD there in a chroot as the image's user, against
// the simulator on loopback (the chroot shares the network).
func runInEmptyRoot(t *testing.T, img image, bin string, uid, gid int, version string) {
	rootDir := t.TempDir()
	if err := os.Chmod(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(p string, data []byte, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(rootDir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	binData, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	put(img.Entrypoint[0], binData, 0o755)
	put("/etc/passwd", []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, gid)), 0o644)
	put("/etc/group", []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", gid)), 0o644)
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		put("/etc/ssl/certs/ca-certificates.crt", ca, 0o644)
	}
	if err := os.MkdirAll(filepath.Join(rootDir, "tmp"), 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(rootDir, "tmp"), 0o1777)
	for _, v := range img.Volumes { // as the Dockerfile makes it: owned by the user, 0700
		full := filepath.Join(rootDir, filepath.FromSlash(v))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(full, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(full, uid, gid); err != nil {
			t.Fatal(err)
		}
	}

	// The simulator: a stand-in Twilio on loopback, with a tenant.
	sim := testenv.StartSim(t, twiliosim.Options{RetryDelay: -1})
	tenant := sim.CreateSubaccount("tenant-a")
	parent := sim.Parent()

	// The container example config, with only the addresses changed.
	cbPort, adminPort := freePort(t), freePort(t)
	cfg := parseYAML(t, readRepoFile(t, "deploy/container/config.yaml"))
	setYAML(t, cfg, "server.listen", fmt.Sprintf("127.0.0.1:%d", cbPort))
	setYAML(t, cfg, "server.admin_listen", fmt.Sprintf("127.0.0.1:%d", adminPort))
	setYAML(t, cfg, "twilio.api_base_url", sim.URL)
	cfgPath := flagValue(append(img.Entrypoint, img.Cmd...), "--config")
	put(cfgPath, marshalYAML(t, cfg), 0o644)
	rules, _ := filepath.Glob(repoFile(t, "deploy/container/rules/*.yaml"))
	if len(rules) == 0 {
		t.Fatal("no rule files in deploy/container/rules")
	}
	for _, r := range rules {
		put(path.Join(path.Dir(cfgPath), "rules", filepath.Base(r)), readRepoFileAbs(t, r), 0o644)
	}
	// Secrets as Docker and Kubernetes mount them: root's, readable.
	put(getYAML(cfg, "twilio.auth_token_file"), []byte(parent.AuthToken+"\n"), 0o444)
	put(getYAML(cfg, "admin.token_file"), []byte("containerAdminToken\n"), 0o444)
	env := []string{"TWILIO_ACCOUNT_SID=" + parent.SID, fmt.Sprintf("USAGEBREAKER_PUBLIC_URL=http://127.0.0.1:%d", cbPort)}

	chrooted := func(ctx context.Context, argv ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...) // an absolute path, resolved inside the chroot
		cmd.Dir = "/"
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootDir,
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// check, as the image would run it.
	out, err := chrooted(ctx, img.Entrypoint[0], "check", "--config", cfgPath).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok: ") {
		t.Fatalf("usagebreaker check in the empty root: %v\n%s", err, out)
	}

	// ENTRYPOINT + CMD.
	logs := &testenv.Buffer{}
	run := chrooted(context.Background(), append(slices.Clone(img.Entrypoint), img.Cmd...)...)
	run.Stdout, run.Stderr = logs, logs
	if err := run.Start(); err != nil {
		t.Fatalf("starting %q in the chroot: %v", append(img.Entrypoint, img.Cmd...), err)
	}
	exited := make(chan struct{})
	go func() { run.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			run.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("usagebreaker's log:\n%s", logs.String())
		}
	})
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	waitFor(t, 90*time.Second, "/-/ready from the chrooted daemon", func() bool {
		select {
		case <-exited:
			t.Fatalf("usagebreaker exited early: %v\n%s", run.ProcessState, logs.String())
		default:
		}
		code, _, err := httpGet(admin + "/-/ready")
		return err == nil && code == 200
	})

	// It runs as the image's user, not root.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", run.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	uidLine := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`).FindStringSubmatch(string(status))
	for _, id := range uidLine[1:] {
		if id != strconv.Itoa(uid) {
			t.Errorf("the daemon runs with %s, want uid %d throughout", uidLine[0], uid)
			break
		}
	}

	// The image's HEALTHCHECK, inside the chroot (its default URL is the
	// image's admin port; here the port is a free one).
	hc := append(slices.Clone(img.Healthcheck), "--url", admin)
	if out, err := chrooted(ctx, hc...).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "healthy" {
		t.Errorf("HEALTHCHECK %q in the chroot: %v %s", hc, err, out)
	}
	closed := append(slices.Clone(img.Healthcheck), "--url", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	if err := chrooted(ctx, closed...).Run(); err == nil {
		t.Error("the healthcheck passed against a closed port")
	}

	code, metrics, err := httpGet(admin + "/metrics")
	if err != nil || code != 200 || !strings.Contains(metrics, `usagebreaker_build_info{goversion="`) ||
		!strings.Contains(metrics, `version="`+version+`"`) {
		t.Fatalf("/metrics: %d %v; build_info with version %s missing", code, err, version)
	}

	// A trip, through the simulator: the shipped rules are dry runs, so it is
	// recorded (in the state volume) and counted as a dry run.
	set, err := ubrules.LoadFiles(rules)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, r := range set.Rules {
		if r.Matches(tenant.SID, "tenant-a") {
			want++
		}
	}
	if set.Get("spend-daily") == nil || !set.Get("spend-daily").Matches(tenant.SID, "tenant-a") {
		t.Fatal("the test expects the shipped rules to have spend-daily matching tenant-a")
	}
	waitFor(t, 60*time.Second, "the triggers on tenant-a", func() bool { return len(sim.Triggers(tenant.SID)) == want })
	f, err := sim.AddUsage(twiliosim.UsageInput{AccountSID: tenant.SID, Category: "sms", Count: decimal.MustParse("900"),
		Usage: decimal.MustParse("900"), Price: decimal.MustParse("71.10")})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := sim.Wait(ctx, f...)
	if err != nil || len(ds) != 1 || ds[0].Status != 200 {
		t.Fatalf("callback delivery to the chrooted daemon: %+v %v", ds, err)
	}
	waitFor(t, 60*time.Second, "the dry-run trip in /metrics", func() bool {
		_, m, err := httpGet(admin + "/metrics")
		return err == nil && strings.Contains(m, `usagebreaker_suspensions_total{outcome="dry_run",rule="spend-daily"} 1`)
	})
	db := filepath.Join(rootDir, filepath.FromSlash(getYAML(cfg, "state.path")))
	if fi, err := os.Stat(db); err != nil {
		t.Errorf("no state at %s: %v", getYAML(cfg, "state.path"), err)
	} else if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
		t.Errorf("the state file is owned by uid %d, want %d", st.Uid, uid)
	}

	// SIGTERM: a clean exit 0.
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatal("no exit within 60s of SIGTERM")
	}
	if c := run.ProcessState.ExitCode(); c != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", c)
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no clean shutdown in the log:\n%s", logs.String())
	}
	t.Logf("ran %q in an empty root as %d:%d: ready, healthy, a trip recorded, exit 0 on SIGTERM", append(img.Entrypoint, img.Cmd...), uid, gid)
}

func readRepoFileAbs(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
