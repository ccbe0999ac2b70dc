package oauthinterop_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// projectedToken signs an assertion as a cluster would for a projected
// service-account token: ES256 by the issuer's key, aud the token
// endpoint.
func projectedToken(t *testing.T, key any, iss, sub, aud string, exp time.Time) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"iss": iss, "sub": sub, "aud": aud, "iat": time.Now().Unix(), "exp": exp.Unix(), "jti": dpop.NewJTI()})
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestInteropJWTBearer: the RFC 7523 grant against oidc-provider (which
// verifies the assertion: signature, aud, exp, one use per jti), with the
// assertion from a file rotated in place and with one the client signs
// itself; the token reaches a verifying resource server, and a file that
// turns stale or foreign is refused as invalid_grant.
func TestInteropJWTBearer(t *testing.T) {
	t.Parallel()
	const cluster = "https://k8s.test"
	clusterKey, clusterJWKS := oauthtest.ClientKey(t)
	clientSigner, clientJWKS := oauthtest.ClientKey(t)
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		JWTBearerIssuers: map[string]*jose.JSONWebKeySet{cluster: clusterJWKS},
		Clients: []interop.Client{
			{ID: "wl", Secret: oauthtest.SecretBasic, GrantTypes: []string{interop.JWTBearer}},
			{ID: "self", AuthMethod: "private_key_jwt", JWKS: clientJWKS, GrantTypes: []string{interop.JWTBearer}},
		},
	})
	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer,
		Audience: interop.DefaultResource, AllowBearer: true})
	upstream := func(g string) {
		t.Helper()
		before := rs.Stats()[interop.ReasonAccepted]
		status, body := rsGet(t, rs.URL, "Bearer "+g)
		if status != 200 || rs.Stats()[interop.ReasonAccepted] != before+1 {
			t.Fatalf("resource server: %d %s %v", status, body, rs.Stats())
		}
	}
	ctx := context.Background()

	t.Run("assertion file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "token")
		version := time.Now()
		write := func(sub string, key any, exp time.Time) {
			if err := os.WriteFile(file, []byte(projectedToken(t, key, cluster, sub, p.TokenEndpoint, exp)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			// A distinct modification time per version, as a rotation
			// gives it, also on file systems with coarse timestamps.
			version = version.Add(time.Second)
			if err := os.Chtimes(file, version, version); err != nil {
				t.Fatal(err)
			}
		}
		write("system:serviceaccount:apps:gw", clusterKey, time.Now().Add(time.Hour))
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "wl", ClientSecret: oauthtest.SecretBasic,
			Grant: oauth.GrantJWTBearer, AssertionFile: file, Scopes: []string{"api:read"}, Resource: interop.DefaultResource}})
		g, err := c.AutoLogin()(ctx, nil, "")
		if err != nil {
			t.Fatalf("%v\n%s", err, p.Logs())
		}
		if cl := oauthtest.Claims(t, g.AccessToken); cl["aud"] != interop.DefaultResource || cl["client_id"] != "wl" || cl["assertion_sub"] != "system:serviceaccount:apps:gw" {
			t.Errorf("claims %v", cl)
		}
		upstream(g.AccessToken)
		// Rotated in place (a new jti: the provider accepts each once).
		write("system:serviceaccount:apps:gw", clusterKey, time.Now().Add(time.Hour))
		if g, err = c.Refresh(ctx, nil, ""); err != nil {
			t.Fatalf("after rotation: %v", err)
		}
		upstream(g.AccessToken)
		// A file the provider cannot accept: a key it does not trust.
		write("system:serviceaccount:apps:gw", clientSigner, time.Now().Add(time.Hour))
		_, err = c.Refresh(ctx, nil, "")
		if e := asError(t, err, oauth.KindDead); e.Code != "invalid_grant" {
			t.Errorf("untrusted assertion: code %q", e.Code)
		}
	})

	t.Run("signed by the client", func(t *testing.T) {
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "self",
			Grant: oauth.GrantJWTBearer, Scopes: []string{"api:read"}, Resource: interop.DefaultResource}, ClientKey: clientSigner, ClientKeyID: "k1"})
		for range 2 { // a fresh jti each time, or the provider refuses the replay
			g, err := c.Token(ctx, nil, "")
			if err != nil {
				t.Fatalf("%v\n%s", err, p.Logs())
			}
			if cl := oauthtest.Claims(t, g.AccessToken); cl["assertion_sub"] != "self" || cl["aud"] != interop.DefaultResource {
				t.Errorf("claims %v", cl)
			}
			upstream(g.AccessToken)
		}
	})
}

// rsGet sends GET / to a resource server with the given Authorization.
func rsGet(t *testing.T, base, authorization string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
	req.Header.Set("Authorization", authorization)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}
