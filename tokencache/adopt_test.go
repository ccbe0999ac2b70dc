package tokencache_test

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/tokencache"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// An interactive login runs before anyone knows whose session it is: the
// caller logs in with a key of its own, learns the user, and hands key and
// grant to that user's session. The session then serves that login's
// token bound to that key, another instance adopts it from storage, and a
// second login of the same user revokes the session it replaces.
func TestAdoptInteractiveLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{
		Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	rt := e.newRuntime(tmpl)
	ctx := context.Background()

	loginAs := func() (*dpop.Key, string) {
		k, err := dpop.GenerateKey(dpop.ES256)
		if err != nil {
			t.Fatal(err)
		}
		g, err := e.passwordLogin()(ctx, k, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Adopt(ctx, "user-1", k, g); err != nil {
			t.Fatal(err)
		}
		return k, g.RefreshToken
	}
	k1, _ := loginAs()
	tok, err := rt.Token(ctx, "user-1")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Key == nil || tok.Key.Thumbprint() != k1.Thumbprint() {
		t.Fatal("the adopted session does not serve the login's key")
	}
	if _, err := e.srv.Sandbox.VerifyAccessToken(tok.Value); err != nil {
		t.Fatalf("adopted token: %v", err)
	}

	// Another instance finds the adopted session in storage, same key.
	other, err := e.newRuntime(tmpl).Session("user-1")
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := other.Token(ctx)
	if err != nil || tok2.Key.Thumbprint() != k1.Thumbprint() {
		t.Fatalf("second instance: %v, key kept %v", err, err == nil && tok2.Key.Thumbprint() == k1.Thumbprint())
	}

	revokes := e.srv.Sandbox.Stats().Revokes
	k2, _ := loginAs()
	if got := e.srv.Sandbox.Stats().Revokes; got != revokes+1 {
		t.Fatalf("a second login revoked %d sessions, want the replaced one", got-revokes)
	}
	tok, err = rt.Token(ctx, "user-1")
	if err != nil || tok.Key.Thumbprint() != k2.Thumbprint() {
		t.Fatalf("after the second login: %v", err)
	}
	if r := e.srv.Sandbox.Stats().ReuseEvents; r != 0 {
		t.Fatalf("reuse %d", r)
	}
}
