package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
)

const perUserCallback = "http://localhost:9080/.inject_token/callback"

// TestPerUserOAuthAuthorizationCode: the per_user login page with an
// oauth2 template (authorization code, PKCE, DPoP, PAR as the provider
// requires) against panva's oidc-provider: alice and bob log in through
// the provider, each is served as their own sub by a resource server that
// verifies the DPoP-bound token and its proof, with identity headers from
// the verified ID token; a callback replayed, or brought to another
// browser, does not log anyone in.
func TestPerUserOAuthAuthorizationCode(t *testing.T) {
	accounts := map[string]interop.Account{
		"alice": {Password: "alice-PASSWORD-0123", Email: "alice@example.test", Name: "Alice Liddell"},
		"bob":   {Password: "bob-PASSWORD-4567", Email: "bob@example.test", Name: "Bob Builder"},
	}
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Accounts: accounts,
		Clients: []interop.Client{{ID: "web", Secret: itSecret, RedirectURIs: []string{perUserCallback}, RequirePAR: true}}})
	rs := interop.StartResourceServer(t, rsOptions(p))
	t.Setenv("IT_CLIENT_SECRET", itSecret)
	t.Setenv("IT_SEAL_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	gatewaytest.StartConfig(t, gatewaytest.Globals(t.TempDir())+fmt.Sprintf(`http://localhost:9080 {
	inject_token {
		template users
		oauth2 %s {
			client_id web
			client_secret {env.IT_CLIENT_SECRET}
			grant authorization_code
			redirect_uri %s
			authorize_param prompt consent
			scope openid offline_access email profile api:read
			resource %s
		}
		seal_key {env.IT_SEAL_KEY}
		per_user {
			identity_header X-Forwarded-User sub
			identity_header X-Forwarded-Name name
		}
	}
	reverse_proxy %s {
		rewrite /api{uri}
		transport inject_token
	}
}
`, p.Issuer, perUserCallback, interop.DefaultResource, strings.TrimPrefix(rs.URL, "http://")))

	login := func(name string) (*http.Client, url.Values) {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		status, h, body := gatewaytest.Do(t, c, "GET", "http://localhost:9080/.inject_token/login/oauth?return=/orders", nil)
		if status != http.StatusSeeOther {
			t.Fatalf("%s: oauth login start: %d %s", name, status, body)
		}
		q, err := p.Authorize(context.Background(), h.Get("Location"), perUserCallback, interop.User{Login: name, Password: accounts[name].Password})
		if err != nil {
			t.Fatalf("%s at the provider: %v", name, err)
		}
		return c, q
	}
	for _, name := range []string{"alice", "bob"} {
		c, q := login(name)
		// The callback brought to another browser logs nobody in.
		other, _ := cookiejar.New(nil)
		status, _, _ := gatewaytest.Do(t, &http.Client{Jar: other, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			"GET", perUserCallback+"?"+q.Encode(), nil)
		if status != http.StatusBadRequest {
			t.Fatalf("%s's callback in another browser: %d", name, status)
		}
		status, h, body := gatewaytest.Do(t, c, "GET", perUserCallback+"?"+q.Encode(), nil)
		if status != http.StatusSeeOther || h.Get("Location") != "/orders" {
			t.Fatalf("%s: callback: %d %v %s", name, status, h, body)
		}
		// Replayed: the login is gone.
		if status, _, _ := gatewaytest.Do(t, c, "GET", perUserCallback+"?"+q.Encode(), nil); status != http.StatusBadRequest {
			t.Fatalf("%s: replayed callback: %d", name, status)
		}
		for range 2 {
			status, _, body = gatewaytest.Do(t, c, "GET", "http://localhost:9080/orders", nil, "X-Forwarded-User", "mallory")
			var a struct {
				Sub     string              `json:"sub"`
				Headers map[string][]string `json:"headers"`
			}
			if status != 200 || json.Unmarshal(body, &a) != nil {
				t.Fatalf("%s through the gateway: %d %s", name, status, body)
			}
			if a.Sub != name || strings.Join(a.Headers["X-Forwarded-User"], ",") != name ||
				strings.Join(a.Headers["X-Forwarded-Name"], ",") != accounts[name].Name {
				t.Fatalf("%s: the resource server saw sub %q, headers %v", name, a.Sub, a.Headers)
			}
			if strings.Join(a.Headers["Authorization"], ",") != "DPoP" || len(a.Headers["Dpop"]) != 1 {
				t.Fatalf("%s: not a DPoP-bound token with its proof: %v", name, a.Headers)
			}
		}
	}
}
