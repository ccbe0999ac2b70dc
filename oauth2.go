package injecttoken

import (
	"crypto"
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// OAuth2 configures the oauth2 backend: tokens from any OAuth 2.0
// authorization server, with DPoP (RFC 9449) unless turned off.
type OAuth2 struct {
	// Endpoint is the token endpoint URL, or the issuer URL whose metadata
	// (RFC 8414 or OpenID Connect discovery) names it. Required.
	Endpoint string `json:"endpoint"`

	// ClientID identifies this client at the server. Required.
	ClientID string `json:"client_id"`

	// ClientSecret authenticates the client (auth basic or post). Use a
	// placeholder such as {env.CLIENT_SECRET} or {file./run/secrets/cs}:
	// it is resolved at load and kept only in memory.
	ClientSecret string `json:"client_secret,omitempty"`

	// ClientKey is the PEM private key for auth private_key_jwt, normally
	// given as {file./path/to/key.pem}.
	ClientKey string `json:"client_key,omitempty"`

	// ClientKeySource holds the private_key_jwt key in hardware instead: a
	// module in the inject_token.dpop_keys namespace (pkcs11) whose key
	// signs the client assertions in its token.
	ClientKeySource json.RawMessage `json:"client_key_source,omitempty" caddy:"namespace=inject_token.dpop_keys inline_key=source"`

	clientSigner crypto.Signer // loaded from ClientKeySource

	// Auth is how the client authenticates: "basic" (default with a
	// secret), "post", "private_key_jwt" (default with a key) or "none".
	Auth string `json:"auth,omitempty"`

	// Grant is "client_credentials" (default: the proxy fetches and renews
	// tokens by itself), "jwt_bearer" (likewise, presenting an assertion;
	// see AssertionFile) or "refresh_token" (an initial refresh token is
	// handed in through the admin API or `caddy inject-token login
	// refresh-token`, and rotated tokens are kept like Prelude's).
	Grant string `json:"grant,omitempty"`

	// AssertionFile is the file holding the assertion of grant
	// "jwt_bearer" (RFC 7523): a Kubernetes projected service-account
	// token or a SPIFFE JWT-SVID, read again whenever it changes. Without
	// it that grant's assertion is signed with client_key.
	AssertionFile string `json:"assertion_file,omitempty"`

	// Scopes are requested with every token request.
	Scopes []string `json:"scopes,omitempty"`

	// Resource is the RFC 8707 resource indicator (the API's URI).
	Resource string `json:"resource,omitempty"`

	// Resources are more RFC 8707 resource indicators, each sent as its
	// own "resource" parameter after Resource.
	Resources []string `json:"resources,omitempty"`

	// OmitResourceOnRefresh leaves the resource parameters off
	// refresh_token requests (Entra ID rejects them on some flows).
	OmitResourceOnRefresh bool `json:"omit_resource_on_refresh,omitempty"`

	// Params are extra token request parameters, e.g. audience.
	Params map[string]string `json:"params,omitempty"`
}

// resolve fills set from the configuration, resolving global placeholders.
// Errors never quote resolved values.
func (o *OAuth2) resolve(repl *caddy.Replacer, set *settings, useDPoP bool) error {
	cfg, err := o.config(repl, "oauth2", useDPoP)
	if err != nil {
		return err
	}
	env := tokencache.Env{Nonces: asNonces(), ClientKey: o.clientSigner}
	if err := set.open(oauth.BackendName, cfg.Endpoint, cfg, env); err != nil {
		return fmt.Errorf("oauth2: %w", err)
	}
	return nil
}

// config is the oauth.Config of the block named block, placeholders
// resolved.
func (o *OAuth2) config(repl *caddy.Replacer, block string, useDPoP bool) (oauth.Config, error) {
	field := func(name, v string) (string, error) {
		out, err := repl.ReplaceOrErr(v, true, true)
		if err != nil {
			return "", fmt.Errorf("%s %s: %v", block, name, err)
		}
		return out, nil
	}
	cfg := oauth.Config{Auth: o.Auth, Grant: o.Grant, Scopes: o.Scopes, DPoP: useDPoP, Params: map[string]string{}}
	var err error
	if cfg.Endpoint, err = field("endpoint", o.Endpoint); err != nil {
		return cfg, err
	}
	if err := checkBaseURL(cfg.Endpoint); err != nil {
		return cfg, fmt.Errorf("%s endpoint %q: %v", block, o.Endpoint, err)
	}
	if cfg.ClientID, err = field("client_id", o.ClientID); err != nil {
		return cfg, err
	}
	if cfg.ClientSecret, err = field("client_secret", o.ClientSecret); err != nil {
		return cfg, err
	}
	keyPEM, err := field("client_key", o.ClientKey)
	if err != nil {
		return cfg, err
	}
	if keyPEM != "" {
		cfg.ClientKeyPEM = []byte(keyPEM)
	}
	if cfg.Resource, err = field("resource", o.Resource); err != nil {
		return cfg, err
	}
	for _, r := range o.Resources {
		v, err := field("resource", r)
		if err != nil {
			return cfg, err
		}
		cfg.Resources = append(cfg.Resources, v)
	}
	cfg.OmitResourceOnRefresh = o.OmitResourceOnRefresh
	if cfg.AssertionFile, err = field("assertion_file", o.AssertionFile); err != nil {
		return cfg, err
	}
	for k, v := range o.Params {
		if cfg.Params[k], err = field("param "+k, v); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}
