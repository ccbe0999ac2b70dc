package injecttoken

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// sealKey makes a random seal key, sets it as the environment variable
// name and returns its bytes.
func sealKey(t *testing.T, name string) []byte {
	t.Helper()
	k := make([]byte, seal.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	t.Setenv(name, base64.StdEncoding.EncodeToString(k))
	return k
}

// sealedSecrets opens a session's record and DPoP key with keys (as the
// gateway does) and returns every secret byte string they hold: the
// tokens, the key's PEM body, and its private scalar D (raw and base64).
func sealedSecrets(t *testing.T, dir, session string, keys ...[]byte) [][]byte {
	t.Helper()
	sl, err := seal.New(keys[0], keys[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	st := seal.Storage{Storage: &certmagic.FileStorage{Path: dir}, Sealer: sl, Prefix: "inject_token/"}
	ctx := context.Background()
	data, err := st.Load(ctx, "inject_token/"+session+"/state.json")
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		RefreshToken string `json:"refresh_token"`
		AccessToken  string `json:"access_token"`
		Thumbprint   string `json:"key_thumbprint"`
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.RefreshToken == "" || rec.AccessToken == "" {
		t.Fatalf("opened record %q: %v", data, err)
	}
	keyPEM, err := st.Load(ctx, "inject_token/"+session+"/keys/"+certmagic.StorageKeys.Safe(rec.Thumbprint)+".pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	d := priv.(*ecdsa.PrivateKey).D.Bytes()
	out := [][]byte{[]byte(rec.RefreshToken), []byte(rec.AccessToken), d, block.Bytes}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		out = append(out, []byte(enc.EncodeToString(d)), []byte(enc.EncodeToString(block.Bytes)[:40]))
	}
	return out
}

// assertSealedOnDisk fails unless every file the gateway stored is sealed
// and no secret appears in any file under dir, in any of its forms.
func assertSealedOnDisk(t *testing.T, dir string, secrets [][]byte) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if tokencache.IsClaim(filepath.ToSlash(rel)) {
			// A write claim holds the id of the operation that claimed.
			if !strings.HasSuffix(rel, "."+string(b)) {
				t.Errorf("%s holds %.60q, not its writer's id", rel, b)
			}
		} else if strings.HasPrefix(rel, "inject_token"+string(filepath.Separator)) && !strings.HasSuffix(rel, ".lock") {
			n++
			if !seal.Sealed(b) {
				t.Errorf("%s is not sealed: %.60q", rel, b)
			}
		}
		for _, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds a secret (%d bytes) in plain", rel, len(s))
			}
		}
		return nil
	})
	if err != nil || n < 2 {
		t.Fatalf("walking storage: %v; %d session files", err, n)
	}
}

// TestSealedAtRest: with seal_key, the session record and the DPoP key are
// sealed on disk (no token or key bytes in any file); turning sealing on
// for a plain session needs "seal_key_previous unsealed"; a wrong or
// missing key and a record swapped in from another session fail the load
// with a clear error (never a logout); rotation re-seals with the new key
// and the old one can then go.
func TestSealedAtRest(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	keyA, keyB := sealKey(t, "IT_SEAL_A"), sealKey(t, "IT_SEAL_B")
	sealKey(t, "IT_SEAL_WRONG")
	block := func(session, extra string) string {
		return fmt.Sprintf("session %s\nprelude %s\nlogin password %s %s\n%s", session, srv.URL,
			sandbox.DemoEmail, sandbox.DemoPassword, extra)
	}
	g := gateway{storage: dir, upstream: srv.URL, rewrite: "/whoami", block: block("seal-1", "")}
	a := &adminClient{T: t}

	// A plain session first.
	tester := g.start(t)
	sid := getWhoami(t, tester).Claims["sid"]

	// Sealing it needs the explicit "unsealed" migration step.
	g.block = block("seal-1", "seal_key {env.IT_SEAL_A}")
	caddytest.AssertLoadError(t, g.String(), "caddyfile", "stored unsealed, but a seal key is configured")
	g.block = block("seal-1", "seal_key {env.IT_SEAL_A}\nseal_key_previous unsealed")
	tester.InitServer(g.String(), "caddyfile")
	a.Call("POST", "/inject_token/sessions/seal-1/refresh", "", 200) // the next write seals the record
	assertSealedOnDisk(t, dir, sealedSecrets(t, dir, "seal-1", keyA))

	// Sealed only: the app-level key (global option) serves, no logout.
	g.block = block("seal-1", "")
	app := strings.Replace(g.String(), "{\n", "{\n\tinject_token {\n\t\tseal_key {env.IT_SEAL_A}\n\t}\n", 1)
	tester.InitServer(app, "caddyfile")
	if got := getWhoami(t, tester).Claims["sid"]; got != sid {
		t.Fatalf("sid after sealing = %v, want %v (a new login)", got, sid)
	}

	// A wrong key, or none: the load fails and says why; the session
	// still runs on the config in force.
	g.block = block("seal-1", "seal_key {env.IT_SEAL_WRONG}")
	caddytest.AssertLoadError(t, g.String(), "caddyfile", "sealed with a key that is not configured")
	g.block = block("seal-1", "")
	caddytest.AssertLoadError(t, g.String(), "caddyfile", "stored sealed, but no seal key is configured")
	getWhoami(t, tester)

	// Rotation: B seals, A still opens; after a refresh everything is
	// under B and A can go.
	g.block = block("seal-1", "seal_key {env.IT_SEAL_B}\nseal_key_previous {env.IT_SEAL_A}")
	tester.InitServer(g.String(), "caddyfile")
	a.Call("POST", "/inject_token/sessions/seal-1/refresh", "", 200)
	secrets := sealedSecrets(t, dir, "seal-1", keyB)
	assertSealedOnDisk(t, dir, secrets)
	g.block = block("seal-1", "seal_key {env.IT_SEAL_B}")
	tester.InitServer(g.String(), "caddyfile")
	if got := getWhoami(t, tester).Claims["sid"]; got != sid {
		t.Fatalf("sid after rotation = %v, want %v", got, sid)
	}
	if st := srv.Stats(); st.Logins != 1 {
		t.Errorf("logins = %d, want 1: sealing, rotating and refused loads must never log out", st.Logins)
	}

	// A record copied over another session's (same key) does not open.
	for _, f := range []string{"state.json"} {
		src := filepath.Join(dir, "inject_token", "seal-1", f)
		dst := filepath.Join(dir, "inject_token", "seal-2", f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g.block = block("seal-2", "seal_key {env.IT_SEAL_B}")
	caddytest.AssertLoadError(t, g.String(), "caddyfile", "does not authenticate")
}
