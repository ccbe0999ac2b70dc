package injecttoken

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestCaddyfileAuthorizationCode: grant authorization_code with its
// redirect_uri and authorize_param options parses, and resolves (with
// placeholders) to the authorization code backend.
func TestCaddyfileAuthorizationCode(t *testing.T) {
	t.Setenv("IT_REDIRECT", "https://app.example/inject_token/callback")
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		oauth2 https://login.example {
			client_id web
			client_secret s3cret-0123456789
			grant authorization_code
			redirect_uri {env.IT_REDIRECT}
			authorize_param prompt consent
			authorize_param ui_locales {env.IT_LOCALE}
			scope openid offline_access api:read
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	o := h.OAuth2
	if o.Grant != oauth.GrantAuthorizationCode || o.RedirectURI != "{env.IT_REDIRECT}" || o.AuthorizeParams["prompt"] != "consent" {
		t.Fatalf("parsed %+v", o.Settings)
	}
	t.Setenv("IT_LOCALE", "de")
	set := new(settings)
	if err := o.resolve(caddy.NewReplacer(), set, true); err != nil {
		t.Fatal(err)
	}
	flow, ok := set.backend.(oauth.AuthCodeFlow)
	if set.backendName != oauth.AuthCodeBackendName || !ok {
		t.Fatalf("backend %s (%T), want %s", set.backendName, set.backend, oauth.AuthCodeBackendName)
	}
	if s := flow.AuthCode().String(); !strings.Contains(s, "redirect_uri=https://app.example/inject_token/callback") {
		t.Errorf("redirect_uri not resolved: %s", s)
	}
}

func TestCaddyfileAuthorizationCodeErrors(t *testing.T) {
	for _, tc := range []struct{ block, want string }{
		{"grant authorization_code\nauthorize_param prompt", "expected 'authorize_param <name> <value>'"},
		{"grant authorization_code\nredirect_uri a b", "redirect_uri: expected exactly one value"},
		{"grant authorization_code\nredirect_uri https://a/cb\nredirect_uri https://b/cb", "redirect_uri already specified"},
		{"grant authorisation_code", "'authorisation_code' is not one of"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("inject_token {\noauth2 https://login.example {\nclient_id web\n" + tc.block + "\n}\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: error %v, want one with the line saying %q", tc.block, err, tc.want)
		}
	}
}
