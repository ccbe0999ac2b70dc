package pkcs11

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestInteropTokenKeysAtOIDCProvider: panva's oidc-provider, requiring
// DPoP nonces, accepts a private_key_jwt assertion and DPoP proofs signed
// in the token (it knows only the token key's public half) and binds the
// access token to the token key; a resource server verifying the token
// and a proof signed in the token answers 200.
func TestInteropTokenKeysAtOIDCProvider(t *testing.T) {
	needHSM(t)
	src, err := source(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	jwks := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: src.Signer().Public(), KeyID: "hsm", Algorithm: "ES256", Use: "sig"}}}
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{RequireNonce: true,
		Clients: []interop.Client{{ID: "hsm", AuthMethod: "private_key_jwt", JWKS: jwks}}})
	c, err := oauth.New(oauth.Config{Settings: oauth.Settings{ClientID: "hsm",
		Endpoint: p.TokenEndpoint, Resource: interop.DefaultResource}, ClientKey: src.Signer(), ClientKeyID: "hsm",
		DPoP: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	key, err := src.Key(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g, err := c.Token(ctx, key, "")
	if err != nil {
		t.Fatalf("token with assertion and proof signed in the token: %v\n%s", err, p.Logs())
	}
	if g.TokenType != "DPoP" || boundTo(t, g.AccessToken) != key.Thumbprint() {
		t.Fatalf("grant %s bound to %q, want the token key %s", g.TokenType, boundTo(t, g.AccessToken), key.Thumbprint())
	}

	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer, Audience: interop.DefaultResource})
	proof, err := key.Proof(http.MethodGet, rs.URL+"/api", dpop.ProofOptions{AccessToken: g.AccessToken})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, rs.URL+"/api", nil)
	req.Header.Set("Authorization", "DPoP "+g.AccessToken)
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resource server: %d %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

// boundTo is an access token's cnf.jkt (read unverified: the resource
// server verifies it).
func boundTo(t *testing.T, jwt string) string {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("access token is not a JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Cnf struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
	}
	if err == nil {
		err = json.Unmarshal(raw, &c)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c.Cnf.JKT
}
