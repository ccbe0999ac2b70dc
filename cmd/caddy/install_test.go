package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// deps lists the packages a build of pkg links.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestBuildsLinkNoTestCode: neither this demo build nor a production
// build (the module alone, as xcaddy adds it) links testing or httptest,
// and a production build does not link the sandbox.
func TestBuildsLinkNoTestCode(t *testing.T) {
	const root = "github.com/tokenwarden/caddy-inject-token"
	for _, pkg := range []string{".", root} {
		d := deps(t, pkg)
		for _, bad := range []string{"testing", "net/http/httptest"} {
			if slices.Contains(d, bad) {
				t.Errorf("%s links %s", pkg, bad)
			}
		}
		if !slices.Contains(d, root) {
			t.Errorf("%s does not link the module", pkg)
		}
	}
	if d := deps(t, root); slices.Contains(d, root+"/sandbox") {
		t.Error("the module (a production build) links the sandbox")
	}
}

// XcaddyCommand is the README's checkout build, as .ci/run runs it.
//
//	go run github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5 build v2.11.9 \
//	    --with github.com/tokenwarden/caddy-inject-token@v0.0.0=$PWD
//
// TestXcaddyCheckoutBuild checks the binary it makes: the module and its
// command, not the sandbox. Compiling Caddy takes minutes, longer than go
// test's default timeout on a busy machine, so .ci/run builds it first and
// passes it in $XCADDY_BIN; with XCADDY_TEST=1 the test builds it itself
// (run it with -timeout 30m). Otherwise it skips loudly, and under $CI it
// fails.
func TestXcaddyCheckoutBuild(t *testing.T) {
	bin := os.Getenv("XCADDY_BIN")
	switch {
	case bin != "":
	case os.Getenv("XCADDY_TEST") != "":
		bin = xcaddyBuild(t)
	case os.Getenv("CI") != "":
		t.Fatal("under CI, .ci/run must build Caddy with xcaddy and set $XCADDY_BIN")
	default:
		t.Skip("\n\n*** SLOW TEST SKIPPED: the xcaddy build from this checkout runs in CI (.ci/run); " +
			"XCADDY_TEST=1 go test -timeout 30m -run TestXcaddyCheckoutBuild ./cmd/caddy runs it here ***\n")
	}
	out, err := exec.Command(bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	mods := strings.Fields(string(out))
	for _, want := range []string{"http.handlers.inject_token", "http.handlers.inject_token_dashboard",
		"admin.api.inject_token", "http.reverse_proxy.transport.inject_token"} {
		if !slices.Contains(mods, want) {
			t.Errorf("module %s missing from the xcaddy build", want)
		}
	}
	if slices.Contains(mods, "http.handlers.prelude_sandbox") {
		t.Error("the xcaddy build includes the sandbox")
	}
	if out, err := exec.Command(bin, "inject-token", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "login") {
		t.Errorf("caddy inject-token --help: %v\n%s", err, out)
	}
}

// xcaddyBuild runs the README's checkout build into a temp dir.
func xcaddyBuild(t *testing.T) string {
	t.Helper()
	checkout, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", "run", "github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5",
		"build", "v2.11.9", "--with", "github.com/tokenwarden/caddy-inject-token@v0.0.0="+checkout, "--output", bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xcaddy build: %v\n%s", err, out)
	}
	return bin
}
