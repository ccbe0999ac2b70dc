package oauth_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestResourceIndicators: every configured resource travels as its own
// "resource" parameter (RFC 8707 §2), on the grant and on refresh, unless
// OmitResourceOnRefresh leaves them off refresh requests only.
func TestResourceIndicators(t *testing.T) {
	var mu sync.Mutex
	var forms []url.Values
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		forms = append(forms, r.PostForm)
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "Bearer", "expires_in": 60, "refresh_token": testRefresh})
	})
	last := func() url.Values {
		mu.Lock()
		defer mu.Unlock()
		return forms[len(forms)-1]
	}
	want := []string{"https://a.example/", "https://b.example/api", "urn:example:c"}
	cfg := oauth.Config{Endpoint: base + "/token", ClientID: "c", ClientSecret: secretBasic,
		Resource: want[0], Resources: want[1:]}
	ctx := context.Background()

	if _, err := newClient(t, cfg).Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("client_credentials resource = %q, want %q", got, want)
	}
	cfg.Grant = oauth.GrantRefreshToken
	if _, err := newClient(t, cfg).Token(ctx, nil, testRefresh); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("refresh resource = %q, want %q", got, want)
	}
	cfg.OmitResourceOnRefresh = true
	if _, err := newClient(t, cfg).Token(ctx, nil, testRefresh); err != nil {
		t.Fatal(err)
	}
	if got, ok := last()["resource"]; ok {
		t.Errorf("refresh with OmitResourceOnRefresh sent resource %q", got)
	}
	cfg.Grant = oauth.GrantClientCredentials
	if _, err := newClient(t, cfg).Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("OmitResourceOnRefresh dropped resource from the grant itself: %q", got)
	}
}

func TestResourceMustBeAbsoluteURI(t *testing.T) {
	for _, bad := range []string{"api", "/relative", "https://a.example/#frag"} {
		_, err := oauth.New(oauth.Config{Endpoint: "https://as.example/token", ClientID: "c", Resources: []string{bad}})
		if err == nil {
			t.Errorf("resource %q accepted", bad)
		}
	}
}

// TestInteropResourceOnGrantAndRefresh: against oidc-provider with two
// resource servers, the configured resource decides the token's audience
// on a client_credentials grant and on a refresh, so it reached the
// provider both times, and two resources never share a token.
func TestInteropResourceOnGrantAndRefresh(t *testing.T) {
	t.Parallel()
	const a, b = "http://api-a.test", "http://api-b.test"
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients:   []interop.Client{{ID: "basic", Secret: secretBasic}},
		Resources: map[string]string{a: "api:read", b: "api:read"},
	})
	ctx := context.Background()
	key := newKey(t)
	tokens := map[string]string{}
	for _, res := range []string{a, b} {
		c := newClient(t, oauth.Config{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: secretBasic,
			Scopes: []string{"api:read"}, Resource: res, DPoP: true})
		g, err := c.Token(ctx, key, "")
		if err != nil {
			t.Fatal(err)
		}
		if aud := claims(t, g.AccessToken)["aud"]; aud != res {
			t.Errorf("client_credentials for %s: aud %v", res, aud)
		}
		tokens["grant "+res] = g.AccessToken

		c = newClient(t, oauth.Config{Endpoint: p.Issuer, ClientID: "basic", ClientSecret: secretBasic,
			Grant: oauth.GrantRefreshToken, Resource: res, DPoP: true})
		g, err = c.Refresh(ctx, key, p.MintRefreshToken(t, "basic"))
		if err != nil {
			t.Fatal(err)
		}
		if aud := claims(t, g.AccessToken)["aud"]; aud != res {
			t.Errorf("refresh for %s: aud %v", res, aud)
		}
		tokens["refresh "+res] = g.AccessToken
	}
	if tokens["grant "+a] == tokens["grant "+b] || tokens["refresh "+a] == tokens["refresh "+b] {
		t.Error("two resources share a token")
	}
}
