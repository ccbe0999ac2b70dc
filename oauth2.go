package injecttoken

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/oauth"
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
	// tokens by itself) or "refresh_token" (an initial refresh token is
	// handed in through the admin API or `caddy inject-token login
	// refresh-token`, and rotated tokens are kept like Prelude's).
	Grant string `json:"grant,omitempty"`

	// Scopes are requested with every token request.
	Scopes []string `json:"scopes,omitempty"`

	// Resource is the RFC 8707 resource indicator (the API's URI).
	Resource string `json:"resource,omitempty"`

	// Params are extra token request parameters, e.g. audience.
	Params map[string]string `json:"params,omitempty"`
}

// resolve fills set from the configuration, resolving global placeholders.
// Errors never quote resolved values.
func (o *OAuth2) resolve(repl *caddy.Replacer, set *settings, useDPoP bool) error {
	field := func(name, v string) (string, error) {
		out, err := repl.ReplaceOrErr(v, true, true)
		if err != nil {
			return "", fmt.Errorf("oauth2 %s: %v", name, err)
		}
		return out, nil
	}
	cfg := oauth.Config{Auth: o.Auth, Grant: o.Grant, Scopes: o.Scopes, DPoP: useDPoP, Params: map[string]string{}, Nonces: asNonces()}
	var err error
	if cfg.Endpoint, err = field("endpoint", o.Endpoint); err != nil {
		return err
	}
	if err := checkBaseURL(cfg.Endpoint); err != nil {
		return fmt.Errorf("oauth2 endpoint %q: %v", o.Endpoint, err)
	}
	if cfg.ClientID, err = field("client_id", o.ClientID); err != nil {
		return err
	}
	if cfg.ClientSecret, err = field("client_secret", o.ClientSecret); err != nil {
		return err
	}
	var keyPEM string
	if keyPEM, err = field("client_key", o.ClientKey); err != nil {
		return err
	}
	cfg.ClientKeyPEM = []byte(keyPEM)
	if len(keyPEM) == 0 {
		cfg.ClientKeyPEM = nil
	}
	if o.clientSigner != nil {
		if keyPEM != "" {
			return errors.New("oauth2: client_key and client_key_source are exclusive")
		}
		cfg.ClientKey = o.clientSigner
		// The key's identity, for the reload comparison (fingerprint).
		keyPEM = fmt.Sprint(o.clientSigner.Public())
	}
	if cfg.Resource, err = field("resource", o.Resource); err != nil {
		return err
	}
	for k, v := range o.Params {
		if cfg.Params[k], err = field("param "+k, v); err != nil {
			return err
		}
	}
	client, err := oauth.New(cfg)
	if err != nil {
		return fmt.Errorf("oauth2: %w", err)
	}
	set.oauth, set.baseURL = client, cfg.Endpoint
	set.oauthLogin = cfg.Grant == "" || cfg.Grant == oauth.GrantClientCredentials
	set.oauthKey = fingerprint(cfg, keyPEM)
	return nil
}

// fingerprint identifies resolved oauth2 settings (secrets included, hashed)
// so a reload can tell whether they changed.
func fingerprint(cfg oauth.Config, keyPEM string) string {
	// encoding/json writes map keys sorted, so Params encode canonically.
	b, _ := json.Marshal([]any{cfg.Endpoint, cfg.ClientID, cfg.ClientSecret, keyPEM, cfg.Auth, cfg.Grant,
		cfg.Scopes, cfg.Resource, cfg.Params, cfg.DPoP})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
