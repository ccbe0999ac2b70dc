package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/fuzzhttp"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// FuzzTokenResponse feeds a hostile authorization server's answer (status,
// headers, body) to a token request, a revocation and discovery: the result
// is a usable grant, or an *Error with a kind and a text that never holds
// the client secret or the refresh token. Seeds in
// testdata/fuzz/FuzzTokenResponse.
func FuzzTokenResponse(f *testing.F) {
	const (
		secret  = "cs-FUZZ-0123456789abcdef"
		refresh = "rt-FUZZ-0123456789abcdef"
	)
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, op uint8, status int, header string, body []byte) {
		srv := fuzzhttp.Server{Status: status, Header: header, Body: body}
		cfg := Config{Settings: Settings{Endpoint: "http://as.test/token", ClientID: "gw", ClientSecret: secret, Grant: GrantRefreshToken},
			DPoP: true, HTTPClient: srv.Client(), MaxResponseBytes: 64 << 10}
		if op%3 != 0 {
			cfg.Endpoint = "http://as.test" // an issuer: discovery first
		}
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if op%3 == 2 {
			err = c.Revoke(ctx, key, refresh)
		} else {
			g, terr := c.Token(ctx, key, refresh)
			if err = terr; err == nil {
				checkGrant(t, g, body)
			}
		}
		if err == nil {
			return
		}
		var oe *Error
		if !errors.As(err, &oe) || oe.Kind.String() == "unclassified" {
			t.Fatalf("not a classified *Error: %#v", err)
		}
		if oe.Op == "discover" {
			return // a GET that carried no secret
		}
		for _, s := range []string{secret, refresh} {
			if strings.Contains(err.Error(), s) {
				t.Fatalf("error text holds a secret: %s", err)
			}
		}
	})
}

// checkGrant is what a successful token response promises: an access_token
// member spelled exactly so (wire.UnmarshalExact), a token type that can be
// presented, and an expiry (possibly already past: Grant.Usable then says
// the cache will not hand the token out).
func checkGrant(t *testing.T, g *tokencache.Grant, body []byte) {
	t.Helper()
	var members map[string]json.RawMessage
	if json.Unmarshal(body, &members) != nil || members["access_token"] == nil {
		t.Fatalf("grant accepted without an exact access_token member: %+v", g)
	}
	if g.AccessToken == "" || (g.TokenType != "DPoP" && g.TokenType != "Bearer") || g.Expiry.IsZero() {
		t.Fatalf("unusable grant accepted: %+v", g)
	}
	if g.Usable(g.Expiry) {
		t.Fatalf("a token is usable at its own expiry: %+v", g)
	}
}
