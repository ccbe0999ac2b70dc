package oauthinterop_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// These tests run against panva's oidc-provider, a certified server; see
// package interop for how it is started.

func TestInteropClientCredentialsDPoP(t *testing.T) {
	t.Parallel()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients: []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}},
	})
	cnt := oauthtest.NewCounter()
	nonces := new(dpop.NonceStore)
	c := oauthtest.NewClient(t, oauth.Config{
		Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
			Scopes: []string{"api:read"}, Resource: interop.DefaultResource},
		DPoP: true, HTTPClient: cnt.Client(), Nonces: nonces,
	})
	key := oauthtest.NewKey(t)
	before := time.Now()
	g, err := c.Token(context.Background(), key, "")
	if err != nil {
		t.Fatal(err)
	}
	if g.TokenType != "DPoP" {
		t.Errorf("TokenType = %q, want DPoP", g.TokenType)
	}
	if got := oauthtest.JKT(t, g.AccessToken); got != key.Thumbprint() {
		t.Errorf("cnf.jkt = %q, want our thumbprint %q", got, key.Thumbprint())
	}
	cl := oauthtest.Claims(t, g.AccessToken)
	if cl["aud"] != interop.DefaultResource || cl["scope"] != "api:read" || cl["client_id"] != "basic" {
		t.Errorf("claims = %v", cl)
	}
	// The provider's default lifetime is 600 s; Expiry counts from the send.
	if d := g.Expiry.Sub(before); d < 595*time.Second || d > 601*time.Second {
		t.Errorf("Expiry is %s after the request, want ≈600s", d)
	}
	if n := cnt.Get("/token"); n != 1 {
		t.Errorf("%d token requests, want 1 (no nonce required)", n)
	}
	// The provider hands out a nonce on success; it must be remembered so
	// the next proof carries it.
	tokenURL, _ := url.Parse(p.TokenEndpoint)
	if nonces.Get(tokenURL) == "" {
		t.Error("DPoP-Nonce from a 2xx response was not stored")
	}
}

func TestInteropNonceRequiredRetriesOnce(t *testing.T) {
	t.Parallel()
	signer, jwks := oauthtest.ClientKey(t)
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		RequireNonce: true,
		Clients: []interop.Client{
			{ID: "basic", Secret: oauthtest.SecretBasic},
			{ID: "pkjwt", AuthMethod: "private_key_jwt", JWKS: jwks},
		},
	})
	for _, tc := range []struct {
		name string
		cfg  oauth.Config
	}{
		{"client_secret_basic", oauth.Config{Settings: oauth.Settings{ClientID: "basic", ClientSecret: oauthtest.SecretBasic}}},
		// The provider remembers assertion jti values: a retry that reused
		// the first assertion would fail with invalid_client.
		{"private_key_jwt", oauth.Config{Settings: oauth.Settings{ClientID: "pkjwt"}, ClientKey: signer, ClientKeyID: "k1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cnt := oauthtest.NewCounter()
			cfg := tc.cfg
			cfg.Endpoint, cfg.DPoP, cfg.HTTPClient = p.TokenEndpoint, true, cnt.Client()
			cfg.Resource = interop.DefaultResource
			c := oauthtest.NewClient(t, cfg)
			key := oauthtest.NewKey(t)
			g, err := c.Token(context.Background(), key, "")
			if err != nil {
				t.Fatal(err)
			}
			if n := cnt.Get("/token"); n != 2 {
				t.Errorf("first token: %d requests, want 2 (challenge + one retry)", n)
			}
			if g.TokenType != "DPoP" || oauthtest.JKT(t, g.AccessToken) != key.Thumbprint() {
				t.Errorf("grant not bound to our key: %s, jkt %q", g.TokenType, oauthtest.JKT(t, g.AccessToken))
			}
			if _, err := c.Token(context.Background(), key, ""); err != nil {
				t.Fatal(err)
			}
			if n := cnt.Get("/token"); n != 3 {
				t.Errorf("second token: %d requests in all, want 3 (nonce remembered, no new challenge)", n)
			}
		})
	}
}

func TestInteropAuthMethods(t *testing.T) {
	t.Parallel()
	signer, jwks := oauthtest.ClientKey(t)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	publicJWKS := func(pub crypto.PublicKey) *jose.JSONWebKeySet {
		return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, Use: "sig"}}}
	}
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients: []interop.Client{
			{ID: "basic", Secret: oauthtest.SecretBasic, AuthMethod: "client_secret_basic"},
			{ID: "post", Secret: oauthtest.SecretPost, AuthMethod: "client_secret_post"},
			{ID: "pkjwt", AuthMethod: "private_key_jwt", JWKS: jwks},
			{ID: "pkjwt-ed", AuthMethod: "private_key_jwt", JWKS: publicJWKS(edKey.Public())},
			{ID: "pkjwt-rsa", AuthMethod: "private_key_jwt", JWKS: publicJWKS(rsaKey.Public())},
		},
	})
	ok := []oauth.Config{
		{Settings: oauth.Settings{ClientID: "basic", ClientSecret: oauthtest.SecretBasic, Auth: oauth.AuthBasic}},
		{Settings: oauth.Settings{ClientID: "post", ClientSecret: oauthtest.SecretPost, Auth: oauth.AuthPost}},
		{Settings: oauth.Settings{ClientID: "pkjwt"}, ClientKey: signer, ClientKeyID: "k1"},
		{Settings: oauth.Settings{ClientID: "pkjwt", Endpoint: p.Issuer}, ClientKey: signer, ClientKeyID: "k1", AssertionAudience: "issuer"},
		{Settings: oauth.Settings{ClientID: "pkjwt-ed"}, ClientKey: edKey},
		{Settings: oauth.Settings{ClientID: "pkjwt-rsa"}, ClientKeyPEM: rsaPEM},
	}
	for _, cfg := range ok {
		t.Run(cfg.ClientID+"/"+cfg.Auth+cfg.AssertionAudience, func(t *testing.T) {
			if cfg.Endpoint == "" {
				cfg.Endpoint = p.TokenEndpoint
			}
			cfg.DPoP = true
			g, err := oauthtest.NewClient(t, cfg).Token(context.Background(), oauthtest.NewKey(t), "")
			if err != nil {
				t.Fatal(err)
			}
			if g.AccessToken == "" || g.TokenType != "DPoP" {
				t.Errorf("grant %q/%q", g.TokenType, g.AccessToken)
			}
		})
	}
	// The server enforces the registered method family (it treats basic and
	// post as one): a secret for a private_key_jwt client, or no
	// authentication for a confidential one, must fail as a config error.
	for _, cfg := range []oauth.Config{
		{Settings: oauth.Settings{ClientID: "pkjwt", ClientSecret: oauthtest.SecretBasic}},
		{Settings: oauth.Settings{ClientID: "basic", Auth: oauth.AuthNone}},
	} {
		t.Run("mismatch "+cfg.ClientID, func(t *testing.T) {
			cfg.Endpoint = p.TokenEndpoint
			_, err := oauthtest.NewClient(t, cfg).Token(context.Background(), nil, "")
			if e := asError(t, err, oauth.KindConfig); e.Code != "invalid_client" {
				t.Errorf("code = %q, want invalid_client", e.Code)
			}
		})
	}
}

func TestInteropBearerWithoutDPoP(t *testing.T) {
	t.Parallel()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}}})
	cnt := oauthtest.NewCounter()
	c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
		Resource: interop.DefaultResource}, HTTPClient: cnt.Client()})
	g, err := c.Token(context.Background(), oauthtest.NewKey(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if g.TokenType != "Bearer" {
		t.Errorf("TokenType = %q, want Bearer", g.TokenType)
	}
	if j := oauthtest.JKT(t, g.AccessToken); j != "" {
		t.Errorf("Bearer token is bound to %q: a proof was sent with DPoP off", j)
	}
}

func TestInteropDiscovery(t *testing.T) {
	t.Parallel()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}}})
	t.Run("issuer", func(t *testing.T) {
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: oauthtest.SecretBasic}, DPoP: true})
		tok, rev, err := c.Endpoints(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if tok != p.TokenEndpoint || rev != p.RevocationEndpoint {
			t.Errorf("endpoints = %q, %q; want %q, %q", tok, rev, p.TokenEndpoint, p.RevocationEndpoint)
		}
		if _, err := c.Token(context.Background(), oauthtest.NewKey(t), ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("token endpoint given directly", func(t *testing.T) {
		cnt := oauthtest.NewCounter()
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "basic", ClientSecret: oauthtest.SecretBasic}, HTTPClient: cnt.Client()})
		for range 2 {
			tok, rev, err := c.Endpoints(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tok != p.TokenEndpoint || rev != "" {
				t.Errorf("endpoints = %q, %q; want the token endpoint and no revocation", tok, rev)
			}
		}
		if n := cnt.Get("/.well-known/oauth-authorization-server/token") + cnt.Get("/token/.well-known/openid-configuration"); n != 0 {
			t.Errorf("%d discovery probes of a token endpoint URL, want none", n)
		}
	})
}

func TestInteropInvalidSecretIsConfigError(t *testing.T) {
	t.Parallel()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}}})
	cnt := oauthtest.NewCounter()
	c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "basic", ClientSecret: oauthtest.SecretWrong}, DPoP: true, HTTPClient: cnt.Client()})
	_, err := c.Refresh(context.Background(), oauthtest.NewKey(t), "")
	e := asError(t, err, oauth.KindConfig)
	if e.Code != "invalid_client" {
		t.Errorf("code = %q, want invalid_client", e.Code)
	}
	if !errors.Is(err, tokencache.ErrCredentialsRejected) || !errors.Is(err, oauth.ErrClientConfig) || errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("invalid_client must match ErrCredentialsRejected and ErrClientConfig only: %v", err)
	}
	if n := cnt.Get("/token"); n != 1 {
		t.Errorf("%d token requests, want exactly 1 (no retry of a rejected client)", n)
	}
}

func TestInteropRefreshTokenGrant(t *testing.T) {
	t.Parallel()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		RequireNonce: true,
		Clients:      []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}},
	})
	c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
		Grant: oauth.GrantRefreshToken}, DPoP: true})
	key := oauthtest.NewKey(t)
	ctx := context.Background()
	rt0 := p.MintRefreshToken(t, "basic")

	g1, err := c.LoginWithRefreshToken(rt0)(ctx, key, "")
	if err != nil {
		t.Fatal(err)
	}
	if g1.RefreshToken == "" || g1.RefreshToken == rt0 {
		t.Fatalf("refresh token not rotated (server rotates on every use)")
	}
	if g1.TokenType != "DPoP" {
		t.Errorf("TokenType = %q", g1.TokenType)
	}
	g2, err := c.Refresh(ctx, key, g1.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// Reusing a spent refresh token is invalid_grant: the session is dead
	// (and the provider revokes the whole grant, as RFC 9700 advises).
	_, err = c.Refresh(ctx, key, rt0)
	asError(t, err, oauth.KindDead, rt0, g1.RefreshToken, g2.RefreshToken)
	if !errors.Is(err, tokencache.ErrSessionDead) || errors.Is(err, oauth.ErrClientConfig) {
		t.Errorf("reuse must be ErrSessionDead but not a config error: %v", err)
	}

	// Revocation: a fresh grant, revoked, cannot be refreshed afterwards.
	g3, err := c.Login()(ctx, key, p.MintRefreshToken(t, "basic"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, key, g3.RefreshToken); err != nil {
		t.Fatal(err)
	}
	_, err = c.Refresh(ctx, key, g3.RefreshToken)
	asError(t, err, oauth.KindDead, g3.RefreshToken)

	// The refresh_token grant's Login has nothing to spend without a
	// handed-in token: dead, not retried.
	_, err = c.Login()(ctx, key, "")
	asError(t, err, oauth.KindDead)
}

// TestInteropClockOffRetriesOnce: oidc-provider's clock is ahead, so it
// refuses the first proof (iat too old) with invalid_dpop_proof; its Date
// header has taught the client its clock, and the one retry, with a fresh
// proof dated on it, gets the token within the same call. oidc-provider
// accepts an iat up to 300 s off, so an offset of exactly 300 s is refused
// or not by the rounding of two clocks to the second: the offsets here are
// clearly beyond it.
func TestInteropClockOffRetriesOnce(t *testing.T) {
	t.Parallel()
	for _, off := range []time.Duration{330 * time.Second, -600 * time.Second} {
		p := interop.StartOIDCProvider(t, interop.ProviderOptions{
			ClockOffset: off,
			Clients:     []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}},
		})
		cnt := oauthtest.NewCounter()
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
			Scopes: []string{"api:read"}, Resource: interop.DefaultResource}, DPoP: true, HTTPClient: cnt.Client(),
		})
		if _, err := c.Token(context.Background(), oauthtest.NewKey(t), ""); err != nil {
			t.Fatalf("offset %v: %v", off, err)
		}
		if n := cnt.Get("/token"); n != 2 {
			t.Fatalf("offset %v: %d token requests, want 2 (one refused proof, one retry)", off, n)
		}
		if skew := c.Skew(); (skew + off).Abs() > 2*time.Second {
			t.Fatalf("offset %v: learned skew %v", off, skew)
		}
	}
}
