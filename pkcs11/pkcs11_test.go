package pkcs11

import (
	"context"
	"crypto/elliptic"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The SoftHSM2 token every test uses, initialised in a temp directory.
const (
	softhsm  = "/usr/lib/softhsm/libsofthsm2.so"
	tokLabel = "it-token"
	userPIN  = "it-user-pin-1234"
	keyLabel = "it-dpop"
	// AES keys wrapping seal data keys: the one in use, and another.
	sealLabel  = "it-seal"
	otherLabel = "it-seal-other"
)

// hsmReady is "" once the token exists, else why it does not.
var hsmReady = "not set up"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "softhsm")
	if err != nil {
		panic(err)
	}
	hsmReady = setUpToken(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// setUpToken points SoftHSM2 at dir, initialises a token there and makes
// an ES256 key pair in it, as an operator would with the token's tools.
func setUpToken(dir string) string {
	if _, err := os.Stat(softhsm); err != nil {
		return "no " + softhsm + " (apt-get install softhsm2)"
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return err.Error()
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err.Error()
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", tokLabel, "--pin", userPIN, "--so-pin", "it-so-pin").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("softhsm2-util --init-token: %v: %s", err, out)
	}
	c, err := crypto11.Configure(&crypto11.Config{Path: softhsm, TokenLabel: tokLabel, Pin: userPIN})
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	if _, err := c.GenerateECDSAKeyPairWithLabel([]byte{0x01}, []byte(keyLabel), elliptic.P256()); err != nil {
		return err.Error()
	}
	for i, l := range []string{sealLabel, otherLabel} {
		if _, err := c.GenerateSecretKeyWithLabel([]byte{0x10 + byte(i)}, []byte(l), 256, crypto11.CipherAES); err != nil {
			return err.Error()
		}
	}
	return ""
}

// needHSM skips without SoftHSM2 outside CI, and fails in CI, which
// installs it.
func needHSM(tb testing.TB) {
	tb.Helper()
	if hsmReady == "" {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("SoftHSM2 token: %s", hsmReady)
	}
	tb.Skipf("NO SOFTHSM2: the PKCS#11 tests did not run: %s", hsmReady)
}

// source provisions a key source for the test token's key.
func source(tb testing.TB, mod func(*KeySource)) (*KeySource, error) {
	tb.Helper()
	tb.Setenv("IT_HSM_PIN", userPIN)
	k := &KeySource{Token: Token{Module: softhsm, TokenLabel: tokLabel, PIN: "{env.IT_HSM_PIN}", KeyLabel: keyLabel}}
	if mod != nil {
		mod(k)
	}
	err := k.Provision(caddy.Context{})
	if err == nil {
		tb.Cleanup(func() { _ = k.Cleanup() })
	}
	return k, err
}

// TestProofsSignedInToken: a session bound to the token's key logs in and
// refreshes at the sandbox (which verifies every proof), storage holds no
// private key, and a restart (the token opened anew) keeps the jkt and
// the session.
func TestProofsSignedInToken(t *testing.T) {
	needHSM(t)
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	cl, err := prelude.New(srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx := context.Background()
	open := func() (*tokencache.Cache, *KeySource) {
		t.Helper()
		src, err := source(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tokencache.New(tokencache.Config{Name: "hsm", Storage: &certmagic.FileStorage{Path: dir},
			Backend: prelude.Backend{Client: cl}, KeySource: src,
			Login: prelude.PasswordLogin(cl, sandbox.DemoEmail, sandbox.DemoPassword)})
		if err != nil {
			t.Fatal(err)
		}
		return c, src
	}
	c, src := open()
	want := src.key.Thumbprint()
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Key.Thumbprint() != want {
		t.Fatalf("session bound to %s, not the token's key %s", tok.Key.Thumbprint(), want)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("refresh signed in the token: %v", err)
	}
	sid := tok.SessionID
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(data), "PRIVATE KEY") {
			t.Errorf("storage holds a private key: %s", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_ = src.Cleanup()

	c, _ = open()
	defer c.Close()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("refresh after a restart: %v", err)
	}
	tok, err = c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Key.Thumbprint() != want || tok.SessionID != sid {
		t.Fatalf("after a restart: key %s session %s, want %s %s", tok.Key.Thumbprint(), tok.SessionID, want, sid)
	}
}

// TestLoadErrors: a wrong PIN, a missing token or a missing key fails the
// load with an error saying which, and never showing the PIN.
func TestLoadErrors(t *testing.T) {
	needHSM(t)
	for _, tc := range []struct {
		name string
		mod  func(*KeySource)
		want string
	}{
		{"wrong PIN", func(k *KeySource) { k.PIN = "not-the-pin-987" }, "CKR_PIN_INCORRECT"},
		{"missing token", func(k *KeySource) { k.TokenLabel = "no-such-token" }, "could not find PKCS#11 token"},
		{"missing key", func(k *KeySource) { k.KeyLabel = "no-such-key" }, `no key pair with label "no-such-key"`},
		{"empty PIN placeholder", func(k *KeySource) { k.PIN = "{env.IT_NO_SUCH_PIN}" }, "pin:"},
		{"no token named", func(k *KeySource) { k.TokenLabel = "" }, "exactly one of token_label or slot"},
	} {
		_, err := source(t, tc.mod)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want it to mention %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "not-the-pin-987") || strings.Contains(err.Error(), userPIN) {
			t.Errorf("%s: the error shows the PIN: %v", tc.name, err)
		}
	}
}

// BenchmarkProof signs a DPoP proof with the token's key and with an
// in-memory key of the same type, in the same run.
func BenchmarkProof(b *testing.B) {
	needHSM(b)
	src, err := source(b, nil)
	if err != nil {
		b.Fatal(err)
	}
	mem, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []struct {
		name string
		key  *dpop.Key
	}{{"memory", mem}, {"softhsm2", src.key}} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.key.Proof("GET", "https://rs.example/api", dpop.ProofOptions{AccessToken: "at"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
