package injecttoken

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsumerModuleGraphIsLean builds the module graph a user gets: a
// module in a temp dir that requires only this one (as xcaddy's build does)
// must not pull in what only our tests, interop/ and the benchmarks need.
// Those live in the nested interop module; a require of theirs slipping
// back into the root go.mod fails here.
func TestConsumerModuleGraphIsLean(t *testing.T) {
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module example.com/consumer\n\ngo 1.26.0\n\n" +
		"require github.com/tokenwarden/caddy-inject-token v0.0.0\n\n" +
		"replace github.com/tokenwarden/caddy-inject-token => " + root + "\n"
	main := "package main\n\nimport _ \"github.com/tokenwarden/caddy-inject-token\"\n\nfunc main() {}\n"
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{"go.mod": []byte(gomod), "main.go": []byte(main), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/caddyserver/caddy/v2 ") {
		t.Fatalf("the consumer's graph lacks Caddy, so it proves nothing:\n%s", out)
	}
	for _, banned := range []string{"github.com/chromedp/", "github.com/bsm/redislock"} {
		if strings.Contains(string(out), banned) {
			t.Errorf("a module requiring only caddy-inject-token gets %s; it belongs in the interop module", banned)
		}
	}
}
