package injecttoken

import (
	"fmt"
	"os"
	"strings"

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

	// Auth is how the client authenticates: "basic" (default with a
	// secret), "post", "private_key_jwt" (default with a key),
	// "tls_client_auth" (default with only a client certificate),
	// "self_signed_tls_client_auth" (RFC 8705 mutual TLS) or "none".
	Auth string `json:"auth,omitempty"`

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
	field := func(name, v string) (string, error) {
		out, err := repl.ReplaceOrErr(v, true, true)
		if err != nil {
			return "", fmt.Errorf("oauth2 %s: %v", name, err)
		}
		return out, nil
	}
	cfg := oauth.Config{Auth: o.Auth, Grant: o.Grant, Scopes: o.Scopes, DPoP: useDPoP, Params: map[string]string{}}
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
	keyPEM, err := field("client_key", o.ClientKey)
	if err != nil {
		return err
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
			return err
		}
		if *f.dst, err = pemOrFile(f.name, v); err != nil {
			return err
		}
	}
	if cfg.Resource, err = field("resource", o.Resource); err != nil {
		return err
	}
	for _, r := range o.Resources {
		v, err := field("resource", r)
		if err != nil {
			return err
		}
		cfg.Resources = append(cfg.Resources, v)
	}
	cfg.OmitResourceOnRefresh = o.OmitResourceOnRefresh
	if cfg.AssertionFile, err = field("assertion_file", o.AssertionFile); err != nil {
		return err
	}
	for k, v := range o.Params {
		if cfg.Params[k], err = field("param "+k, v); err != nil {
			return err
		}
	}
	if err := set.open(oauth.BackendName, cfg.Endpoint, cfg); err != nil {
		return fmt.Errorf("oauth2: %w", err)
	}
	return nil
}

// pemOrFile returns v when it is PEM text, else the content of the file v
// names ("" stays empty). Errors name the file, never its content.
func pemOrFile(name, v string) ([]byte, error) {
	if v == "" || strings.Contains(v, "-----BEGIN ") {
		return []byte(v), nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return nil, fmt.Errorf("oauth2 %s: %v", name, err)
	}
	return b, nil
}
