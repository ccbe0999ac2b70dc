package tokencache_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// signerOnly exposes a key only through crypto.Signer, as a token in an
// HSM does.
type signerOnly struct{ s crypto.Signer }

func (h signerOnly) Public() crypto.PublicKey { return h.s.Public() }
func (h signerOnly) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return h.s.Sign(r, d, o)
}

// heldKey is a KeySource holding one key outside storage.
type heldKey struct {
	k     *dpop.Key
	asked atomic.Int64
}

func (h *heldKey) Key(context.Context) (*dpop.Key, error) { h.asked.Add(1); return h.k, nil }

// TestKeySourceKeyNeverStored: with a key source the session is bound to
// the source's key at every login (a re-login keeps the jkt), the sandbox
// accepts the refresh proofs it signs, storage never holds a private key,
// and a restart serves the same session with the same key.
func TestKeySourceKeyNeverStored(t *testing.T) {
	e := newEnv(t)
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := dpop.NewKey(signerOnly{priv})
	if err != nil {
		t.Fatal(err)
	}
	src := &heldKey{k: k}
	withSource := func(cfg *tokencache.Config) { cfg.KeySource = src }
	c := e.cache(withSource)
	ctx := context.Background()
	jkt := func(c *tokencache.Cache) string {
		t.Helper()
		return mustToken(t, c).Key.Thumbprint()
	}

	e.login(c)
	if got := jkt(c); got != k.Thumbprint() {
		t.Fatalf("logged in with key %s, not the source's %s", got, k.Thumbprint())
	}
	if err := c.Refresh(ctx); err != nil { // a proof signed by the source, checked by the sandbox
		t.Fatal(err)
	}
	if err := c.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	e.login(c)
	if got := jkt(c); got != k.Thumbprint() {
		t.Fatalf("re-login bound the session to %s, not the source's %s", got, k.Thumbprint())
	}
	sid := mustToken(t, c).SessionID

	err = filepath.WalkDir(e.dir, func(path string, d fs.DirEntry, err error) error {
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
	restarted := e.cache(withSource)
	if tok := mustToken(t, restarted); tok.Key.Thumbprint() != k.Thumbprint() || tok.SessionID != sid {
		t.Fatalf("after a restart: key %s session %s, want %s %s", tok.Key.Thumbprint(), tok.SessionID, k.Thumbprint(), sid)
	}
	if err := restarted.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}
