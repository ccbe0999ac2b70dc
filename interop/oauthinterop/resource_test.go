package oauthinterop_test

import (
	"context"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestInteropResourceOnGrantAndRefresh: against oidc-provider with two
// resource servers, the configured resource decides the token's audience
// on a client_credentials grant and on a refresh, so it reached the
// provider both times, and two resources never share a token.
func TestInteropResourceOnGrantAndRefresh(t *testing.T) {
	t.Parallel()
	const a, b = "http://api-a.test", "http://api-b.test"
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients:   []interop.Client{{ID: "basic", Secret: oauthtest.SecretBasic}},
		Resources: map[string]string{a: "api:read", b: "api:read"},
	})
	ctx := context.Background()
	key := oauthtest.NewKey(t)
	tokens := map[string]string{}
	for _, res := range []string{a, b} {
		c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
			Scopes: []string{"api:read"}, Resource: res}, DPoP: true})
		g, err := c.Token(ctx, key, "")
		if err != nil {
			t.Fatal(err)
		}
		if aud := oauthtest.Claims(t, g.AccessToken)["aud"]; aud != res {
			t.Errorf("client_credentials for %s: aud %v", res, aud)
		}
		tokens["grant "+res] = g.AccessToken

		c = oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: oauthtest.SecretBasic,
			Grant: oauth.GrantRefreshToken, Resource: res}, DPoP: true})
		g, err = c.Refresh(ctx, key, p.MintRefreshToken(t, "basic"))
		if err != nil {
			t.Fatal(err)
		}
		if aud := oauthtest.Claims(t, g.AccessToken)["aud"]; aud != res {
			t.Errorf("refresh for %s: aud %v", res, aud)
		}
		tokens["refresh "+res] = g.AccessToken
	}
	if tokens["grant "+a] == tokens["grant "+b] || tokens["refresh "+a] == tokens["refresh "+b] {
		t.Error("two resources share a token")
	}
}
