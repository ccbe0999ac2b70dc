package injecttoken

import (
	"crypto"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// OAuth2 configures the oauth2 backend: tokens from any OAuth 2.0
// authorization server, with DPoP (RFC 9449) unless turned off. Its
// options are oauth.Settings (defined there once, shared with the
// client), plus the credentials resolved from files or placeholders.
type OAuth2 struct {
	oauth.Settings

	// ClientKey is the PEM private key for auth private_key_jwt (and a
	// gateway-signed jwt_bearer assertion), normally given as
	// {file./path/to/key.pem}.
	ClientKey string `json:"client_key,omitempty"`

	// ClientKeySource holds the private_key_jwt key in hardware instead: a
	// module in the inject_token.dpop_keys namespace (pkcs11) whose key
	// signs the client assertions in its token.
	ClientKeySource json.RawMessage `json:"client_key_source,omitempty" caddy:"namespace=inject_token.dpop_keys inline_key=source"`

	// ClientCertificate and ClientCertificateKey are the TLS client
	// certificate (PEM, leaf first) and its private key presented to the
	// authorization server: each a file path or PEM text, e.g. given as
	// {file./run/secrets/key.pem} or {env.CLIENT_CERT}. It authenticates
	// the client with auth tls_client_auth or self_signed_tls_client_auth,
	// and a server may bind the access tokens to it (RFC 8705); the
	// upstream then must be reached with the same certificate, which
	// "transport inject_token" checks at load (tls_client_auth there).
	ClientCertificate    string `json:"client_certificate,omitempty"`
	ClientCertificateKey string `json:"client_certificate_key,omitempty"`

	// TrustedCACert, a file path or PEM text, holds the only CA
	// certificates trusted for the authorization server's TLS (servers
	// with a private CA). Default: the system's roots.
	TrustedCACert string `json:"trusted_ca_cert,omitempty"`

	clientSigner crypto.Signer // loaded from ClientKeySource
}

// resolve fills set from the configuration, resolving global placeholders.
// Errors never quote resolved values.
func (o *OAuth2) resolve(repl *caddy.Replacer, set *settings, useDPoP bool) error {
	cfg, err := o.config(repl, "oauth2", useDPoP)
	if err != nil {
		return err
	}
	// The authorization code grant is its own backend: users log in
	// through the server's pages (per-user mode), it refreshes and revokes
	// the sessions that start.
	name := oauth.BackendName
	if cfg.Grant == oauth.GrantAuthorizationCode {
		name = oauth.AuthCodeBackendName
	}
	if err := set.open(name, cfg.Endpoint, cfg, o.env()); err != nil {
		return fmt.Errorf("oauth2: %w", err)
	}
	return nil
}

// env is what the backend gets besides its settings: the nonce store that
// logs a refused nonce, and a key source's client key.
func (o *OAuth2) env() tokencache.Env {
	return tokencache.Env{Nonces: asNonces(), ClientKey: o.clientSigner}
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
	// A copy whose strings are resolved; the slices and map are rebuilt,
	// never written through to the handler's config.
	cfg := oauth.Config{Settings: o.Settings, DPoP: useDPoP}
	for _, f := range []struct {
		name string
		v    *string
	}{
		{"endpoint", &cfg.Endpoint}, {"client_id", &cfg.ClientID}, {"client_secret", &cfg.ClientSecret},
		{"resource", &cfg.Resource}, {"assertion_file", &cfg.AssertionFile}, {"redirect_uri", &cfg.RedirectURI},
	} {
		var err error
		if *f.v, err = field(f.name, *f.v); err != nil {
			return cfg, err
		}
	}
	if err := checkBaseURL(cfg.Endpoint); err != nil {
		return cfg, fmt.Errorf("%s endpoint %q: %v", block, o.Endpoint, err)
	}
	cfg.Resources = nil
	for _, r := range o.Resources {
		v, err := field("resource", r)
		if err != nil {
			return cfg, err
		}
		cfg.Resources = append(cfg.Resources, v)
	}
	params := func(name string, in map[string]string) (map[string]string, error) {
		out := make(map[string]string, len(in))
		for k, v := range in {
			var err error
			if out[k], err = field(name+" "+k, v); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	var err error
	if cfg.Params, err = params("param", o.Params); err != nil {
		return cfg, err
	}
	if cfg.AuthorizeParams, err = params("authorize_param", o.AuthorizeParams); err != nil {
		return cfg, err
	}
	keyPEM, err := field("client_key", o.ClientKey)
	if err != nil {
		return cfg, err
	}
	if keyPEM != "" {
		cfg.ClientKeyPEM = []byte(keyPEM)
	}
	for _, f := range []struct {
		name, v string
		dst     *[]byte
	}{
		{"client_certificate", o.ClientCertificate, &cfg.ClientCertPEM},
		{"client_certificate key", o.ClientCertificateKey, &cfg.ClientCertKeyPEM},
		{"trusted_ca_cert", o.TrustedCACert, &cfg.RootCAPEM},
	} {
		v, err := field(f.name, f.v)
		if err != nil {
			return cfg, err
		}
		if *f.dst, err = pemOrFile(block, f.name, v); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// pemOrFile returns v when it is PEM text, else the content of the file v
// names ("" stays empty). Errors name the file, never its content.
func pemOrFile(block, name, v string) ([]byte, error) {
	if v == "" || strings.Contains(v, "-----BEGIN ") {
		return []byte(v), nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v", block, name, err)
	}
	return b, nil
}
