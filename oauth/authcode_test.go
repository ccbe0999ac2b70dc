package oauth_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The flow itself is tested against oidc-provider
// (interop/oauthinterop/authcode_test.go); these are the checks made
// before any request.

func authCodeConfig() oauth.AuthCodeConfig {
	return oauth.AuthCodeConfig{Config: oauth.Config{Settings: oauth.Settings{
		Endpoint: "https://login.example", ClientID: "web", ClientSecret: secretBasic,
		Grant: oauth.GrantAuthorizationCode, RedirectURI: "https://app.example/callback",
	}}}
}

func TestNewAuthCodeRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		edit func(*oauth.AuthCodeConfig)
		want string
	}{
		"another grant":        {func(c *oauth.AuthCodeConfig) { c.Grant = oauth.GrantClientCredentials }, "not \"client_credentials\""},
		"no redirect_uri":      {func(c *oauth.AuthCodeConfig) { c.RedirectURI = "" }, "RedirectURI is required"},
		"relative redirect":    {func(c *oauth.AuthCodeConfig) { c.RedirectURI = "/callback" }, "absolute http or https URL"},
		"redirect fragment":    {func(c *oauth.AuthCodeConfig) { c.RedirectURI = "https://app.example/cb#x" }, "without a fragment"},
		"token endpoint":       {func(c *oauth.AuthCodeConfig) { c.Endpoint = "https://login.example/oauth/token" }, "issuer URL"},
		"reserved param state": {func(c *oauth.AuthCodeConfig) { c.AuthorizeParams = map[string]string{"state": "x"} }, `may not set "state"`},
		"reserved param mode":  {func(c *oauth.AuthCodeConfig) { c.AuthorizeParams = map[string]string{"response_mode": "form_post"} }, `may not set "response_mode"`},
		"no client_id":         {func(c *oauth.AuthCodeConfig) { c.ClientID = "" }, "ClientID is required"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := authCodeConfig()
			tc.edit(&cfg)
			_, err := oauth.NewAuthCode(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), secretBasic) {
				t.Error("the client secret is in the error")
			}
		})
	}
}

// TestClientRefusesAuthCodeSettings: a machine Client cannot be
// configured for a grant only a user can run, nor half of one.
func TestClientRefusesAuthCodeSettings(t *testing.T) {
	for name, s := range map[string]oauth.Settings{
		"grant":            {Grant: oauth.GrantAuthorizationCode},
		"redirect_uri":     {RedirectURI: "https://app.example/cb"},
		"authorize_params": {AuthorizeParams: map[string]string{"prompt": "login"}},
	} {
		s.Endpoint, s.ClientID, s.ClientSecret = "https://login.example", "c", secretBasic
		if _, err := oauth.New(oauth.Config{Settings: s}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestAuthCodeRegistered: the registry builds the flow's backend from its
// JSON settings; it has no automatic login and exposes the flow.
func TestAuthCodeRegistered(t *testing.T) {
	raw, _ := json.Marshal(authCodeConfig())
	b, err := tokencache.NewBackend(oauth.AuthCodeBackendName, raw, tokencache.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if b.AutoLogin() != nil {
		t.Error("AutoLogin is not nil: only a user can log in")
	}
	flow, ok := b.(oauth.AuthCodeFlow)
	if !ok || flow.AuthCode() == nil {
		t.Fatalf("%T does not implement AuthCodeFlow", b)
	}
	if s := flow.AuthCode().String(); strings.Contains(s, secretBasic) || !strings.Contains(s, "client_id=web") {
		t.Errorf("String() = %q", s)
	}
	if _, ok := b.(tokencache.Scoped); !ok {
		t.Error("not tokencache.Scoped: a reload changing the scopes would keep old tokens")
	}
	// openid is always requested: the ID token names the user.
	cfg := authCodeConfig()
	cfg.Scopes = []string{"api:read"}
	raw, _ = json.Marshal(cfg)
	b, err = tokencache.NewBackend(oauth.AuthCodeBackendName, raw, tokencache.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if scope := b.(tokencache.Scoped).TokenScope(); !strings.Contains(scope, `"openid","api:read"`) {
		t.Errorf("TokenScope %s: openid not added first", scope)
	}
}
