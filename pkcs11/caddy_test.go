package pkcs11

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/go-jose/go-jose/v4"

	_ "github.com/tokenwarden/caddy-inject-token"
	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
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
	port := gatewaytest.FreePort(t)
	load(t, fmt.Sprintf(`{
	admin off
	http_port %s
	storage file_system %s
}
http://127.0.0.1:%s {
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
`, port, dir, port, srv.URL, sandbox.DemoEmail, softhsm, tokLabel, keyLabel, srv.URL))
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/", port))
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

// TestCaddyfileClientKeyInToken: an oauth2 session whose private_key_jwt
// key is in the token authenticates with assertions the server verifies
// with the token key's public half.
func TestCaddyfileClientKeyInToken(t *testing.T) {
	needHSM(t)
	src, err := source(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	var verified atomic.Int64
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		jws, err := jose.ParseSigned(r.PostForm.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err == nil {
			_, err = jws.Verify(src.signer.Public())
		}
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		verified.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"hsm-client-token","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(as.Close)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer hsm-client-token" {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(upstream.Close)
	port := gatewaytest.FreePort(t)
	load(t, fmt.Sprintf(`{
	admin off
	http_port %s
	storage file_system %s
}
http://127.0.0.1:%s {
	bind 127.0.0.1
	inject_token {
		session hsm-client
		oauth2 %s/token {
			client_id gw
			client_key_source pkcs11 {
				module %s
				token_label %s
				pin {env.IT_HSM_PIN}
				key_label %s
			}
		}
		dpop off
	}
	reverse_proxy %s
}
`, port, t.TempDir(), port, as.URL, softhsm, tokLabel, keyLabel, upstream.URL))
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || verified.Load() == 0 {
		t.Fatalf("status %d, %d assertions verified", resp.StatusCode, verified.Load())
	}
}

// load adapts a Caddyfile and runs it in this process until the test ends.
func load(t *testing.T, cfg string) {
	t.Helper()
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}
