package oauth_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// jwtBearerServer records the grant_type and assertion of each request.
func jwtBearerServer(t *testing.T) (base string, last func() (grant, assertion string)) {
	var mu sync.Mutex
	var g, a string
	base, _ = fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		g, a = r.PostForm.Get("grant_type"), r.PostForm.Get("assertion")
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "Bearer", "expires_in": 60})
	})
	return base, func() (string, string) {
		mu.Lock()
		defer mu.Unlock()
		return g, a
	}
}

// TestJWTBearerAssertionFile: the RFC 7523 grant presents the file's
// assertion, and a rotated file (a projected token rewritten in place) is
// read again.
func TestJWTBearerAssertionFile(t *testing.T) {
	base, last := jwtBearerServer(t)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("eyJ.first.sig\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: "c", Grant: oauth.GrantJWTBearer, AssertionFile: file}})
	if c.AutoLogin() == nil {
		t.Fatal("a jwt_bearer client has no automatic login")
	}
	ctx := context.Background()
	if _, err := c.Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if g, a := last(); g != "urn:ietf:params:oauth:grant-type:jwt-bearer" || a != "eyJ.first.sig" {
		t.Fatalf("grant_type %q assertion %q", g, a)
	}
	if err := os.WriteFile(file, []byte("eyJ.second.longer-sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if _, a := last(); a != "eyJ.second.longer-sig" {
		t.Fatalf("after rotation: assertion %q", a)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctx, nil, ""); err == nil {
		t.Fatal("token request without its assertion file succeeded")
	}
}

// TestJWTBearerSignedAssertion: without a file the gateway signs the
// assertion with its client key (iss = sub = client_id, aud = the token
// endpoint), a fresh jti every time.
func TestJWTBearerSignedAssertion(t *testing.T) {
	base, last := jwtBearerServer(t)
	signer, jwks := clientKey(t)
	c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: "svc", Grant: oauth.GrantJWTBearer}, ClientKey: signer, ClientKeyID: "k1"})
	seen := map[string]bool{}
	for range 2 {
		if _, err := c.Token(context.Background(), nil, ""); err != nil {
			t.Fatal(err)
		}
		_, a := last()
		jws, err := jose.ParseSigned(a, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jws.Verify(jwks.Keys[0].Public()); err != nil {
			t.Fatalf("assertion not signed by the client key: %v", err)
		}
		cl := claims(t, a)
		if cl["iss"] != "svc" || cl["sub"] != "svc" || cl["aud"] != base+"/token" {
			t.Errorf("claims %v", cl)
		}
		if exp, _ := cl["exp"].(float64); time.Unix(int64(exp), 0).Before(time.Now()) {
			t.Errorf("expired assertion %v", cl)
		}
		jti, _ := cl["jti"].(string)
		if jti == "" || seen[jti] {
			t.Errorf("jti %q reused or missing", jti)
		}
		seen[jti] = true
	}
	if _, err := oauth.New(oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: "svc", Grant: oauth.GrantJWTBearer}}); err == nil {
		t.Error("jwt_bearer without an assertion file or a key accepted")
	}
}
