package pkcs11

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tokenwarden/caddy-inject-token"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// TestCaddyfileDPoPKeyInToken: a real Caddy loads a Caddyfile whose
// session names its key in the token; the session logs in at the sandbox
// with proofs signed there, serves a request, and storage holds no key —
// only the record bound to the token key's thumbprint.
func TestCaddyfileDPoPKeyInToken(t *testing.T) {
	needHSM(t)
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	src, err := source(t, nil) // for the thumbprint; also sets IT_HSM_PIN
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("IT_DEMO_PASSWORD", sandbox.DemoPassword)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := fmt.Sprintf(`{
	admin off
	http_port %d
	storage file_system %s
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	inject_token {
		session hsm-caddy
		prelude %s
		login password %s {env.IT_DEMO_PASSWORD}
		dpop_key pkcs11 {
			module %s
			token_label %s
			pin {env.IT_HSM_PIN}
			key_label %s
		}
	}
	rewrite * /whoami
	reverse_proxy %s
}
`, port, dir, port, srv.URL, sandbox.DemoEmail, softhsm, tokLabel, keyLabel, srv.URL)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"sub"`) {
		t.Fatalf("through the gateway: %d %s", resp.StatusCode, body)
	}
	var stored string
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if strings.Contains(string(data), "PRIVATE KEY") {
			t.Errorf("storage holds a private key: %s", path)
		}
		stored += string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stored, src.key.Thumbprint()) {
		t.Fatalf("no stored record is bound to the token's key %s", src.key.Thumbprint())
	}
}
