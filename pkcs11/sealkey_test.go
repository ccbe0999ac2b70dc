package pkcs11

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/seal"
)

// sealedConfig is a Caddyfile whose app-wide seal_key is the token's AES
// key called label, with one password session at the sandbox.
func sealedConfig(t *testing.T, port string, dir, sandboxURL, label string) string {
	t.Setenv("IT_HSM_PIN", userPIN)
	t.Setenv("IT_DEMO_PASSWORD", sandbox.DemoPassword)
	return fmt.Sprintf(`{
	admin off
	http_port %s
	storage file_system %s
	inject_token {
		seal_key pkcs11 {
			module %s
			token_label %s
			pin {env.IT_HSM_PIN}
			key_label %s
		}
	}
}
http://127.0.0.1:%s {
	bind 127.0.0.1
	inject_token {
		session hsm-sealed
		prelude %s
		login password %s {env.IT_DEMO_PASSWORD}
	}
	rewrite * /whoami
	reverse_proxy %s
}
`, port, dir, softhsm, tokLabel, label, port, sandboxURL, sandbox.DemoEmail, sandboxURL)
}

// TestCaddyfileSealKeyInToken: with seal_key from the token, the session
// record and its DPoP key are stored sealed under data keys wrapped by the
// token key: no plain token or key and no data key in clear in storage.
// A restart with the same token key opens them (no second login); another
// token key fails the config load, naming both keys' IDs.
func TestCaddyfileSealKeyInToken(t *testing.T) {
	needHSM(t)
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	port := gatewaytest.FreePort(t)
	get := func() {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/", port))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"sub"`) {
			t.Fatalf("through the gateway: %d %s", resp.StatusCode, body)
		}
	}
	cfg := sealedConfig(t, port, dir, srv.URL, sealLabel)
	load(t, cfg)
	get()

	sealed := 0
	err := filepath.Walk(filepath.Join(dir, "inject_token"), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, plain := range []string{"PRIVATE KEY", "refresh_token", "access_token", `"d":`} {
			if strings.Contains(string(data), plain) {
				t.Errorf("%s holds %q in clear", path, plain)
			}
		}
		aad := filepath.ToSlash(strings.TrimPrefix(path, dir+string(filepath.Separator))) // the storage key
		if v, ok := strings.CutPrefix(string(data), "inject_token-sealed-v1:pkcs11-"); ok {
			sealed++
			noDataKeyInClear(t, path, v, aad)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sealed < 2 {
		t.Fatalf("%d values sealed with the token key, want the state and the DPoP key", sealed)
	}

	// Restart: a new process opens the token anew.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	load(t, cfg)
	get()
	if n := srv.Sandbox.Stats().Logins; n != 1 {
		t.Errorf("%d logins, want 1: the sealed session did not survive the restart", n)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(sealedConfig(t, port, dir, srv.URL, otherLabel)), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(js, true)
	if err == nil {
		_ = caddy.Stop()
		t.Fatal("another token key loaded the sealed session")
	}
	// The other key has its own ID, so the value names a key that is not
	// configured (a different key under the same name: ErrUnwrap, see
	// seal.TestEnvelope).
	for _, want := range []string{`session "hsm-sealed"`, "sealed with a key that is not configured: key pkcs11-", "(current key is pkcs11-"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("load error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), userPIN) {
		t.Error("load error quotes the PIN")
	}
}

// noDataKeyInClear checks that no 32 bytes of a sealed value's box are a
// key that opens its ciphertext: the data key is stored only wrapped.
func noDataKeyInClear(t *testing.T, path, v, aad string) {
	t.Helper()
	_, b64, _ := strings.Cut(v, ":")
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(raw) < 2 {
		t.Fatalf("%s: not an envelope: %v", path, err)
	}
	n := 2 + int(raw[0])<<8 | int(raw[1])
	box := raw[n:]
	for i := 0; i+32 <= len(raw); i++ {
		block, _ := aes.NewCipher(raw[i : i+32])
		gcm, _ := cipher.NewGCM(block)
		if len(box) < gcm.NonceSize() {
			t.Fatalf("%s: short box", path)
		}
		if _, err := gcm.Open(nil, box[:12], box[12:], []byte(aad)); err == nil {
			t.Fatalf("%s: the data key is stored in clear at offset %d", path, i)
		}
	}
	if bytes.Contains(raw, []byte("inject_token")) {
		t.Errorf("%s: the box holds plain text", path)
	}
}

// BenchmarkSealOpen seals and opens a session record (1 KiB) with a file
// key and with data keys wrapped by the token's AES key, in the same run.
func BenchmarkSealOpen(b *testing.B) {
	needHSM(b)
	b.Setenv("IT_HSM_PIN", userPIN)
	k := &SealKey{Token: Token{Module: softhsm, TokenLabel: tokLabel, PIN: "{env.IT_HSM_PIN}", KeyLabel: sealLabel}}
	if err := k.Provision(caddy.Context{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = k.Cleanup() })
	hsm, err := seal.NewEnvelope(k)
	if err != nil {
		b.Fatal(err)
	}
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	file, err := seal.New(raw)
	if err != nil {
		b.Fatal(err)
	}
	record := bytes.Repeat([]byte("r"), 1024)
	const aad = "inject_token/u/alice/state.json"
	for _, s := range []struct {
		name string
		s    *seal.Sealer
	}{{"file_key", file}, {"softhsm2_wrapped", hsm}} {
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v, err := s.s.Seal(record, aad)
				if err == nil {
					_, err = s.s.Open(v, aad)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSealKeyAdapt: `seal_key pkcs11 { … }` adapts to the app's
// seal_key_source module (the PIN stays a placeholder); its options are
// checked like the DPoP key source's.
func TestSealKeyAdapt(t *testing.T) {
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(sealedConfig(t, "8080", "/tmp/x", "http://127.0.0.1:1", sealLabel)), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `"inject_token":{"seal_key_source":{"key_label":"it-seal","module":"` + softhsm + `","pin":"{env.IT_HSM_PIN}","source":"pkcs11","token_label":"it-token"}}`
	if !strings.Contains(string(js), want) {
		t.Errorf("adapted JSON lacks %s:\n%s", want, js)
	}
	bad := strings.Replace(sealedConfig(t, "8080", "/tmp/x", "http://127.0.0.1:1", sealLabel), "key_label", "key_lable", 1)
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil); err == nil || !strings.Contains(err.Error(), "unrecognized option 'key_lable'") {
		t.Errorf("misspelt option: %v", err)
	}
}
