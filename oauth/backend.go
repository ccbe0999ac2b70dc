package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() { tokencache.Register(BackendName, Open) }

// BackendName is the name this backend is registered under.
const BackendName = "oauth2"

var _ tokencache.Backend = (*Client)(nil)

// Open is the backend's tokencache.Factory: it builds a Client from a
// Config in JSON (the fields that have a JSON name) and env's nonce store
// and client key. It does no network I/O.
func Open(raw json.RawMessage, env tokencache.Env) (tokencache.Backend, error) {
	var cfg Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("oauth settings: %w", err)
	}
	if err := cfg.useEnv(env); err != nil {
		return nil, err
	}
	return New(cfg)
}

// useEnv takes env's nonce store and client key into cfg.
func (cfg *Config) useEnv(env tokencache.Env) error {
	cfg.Nonces = env.Nonces
	if env.ClientKey != nil {
		if len(cfg.ClientKeyPEM) > 0 {
			return errors.New("oauth: a client key in the settings and one from a key source are exclusive")
		}
		cfg.ClientKey = env.ClientKey
	}
	return nil
}

var _ tokencache.Scoped = (*Client)(nil)

// TokenScope implements tokencache.Scoped: the scopes, resources and extra
// parameters (such as audience) every token request carries.
func (c *Client) TokenScope() string {
	b, _ := json.Marshal([]any{c.cfg.Scopes, c.cfg.resources(), c.cfg.Params})
	return string(b)
}

// AutoLogin implements tokencache.Backend: a client_credentials or
// jwt_bearer client fetches tokens by itself; a refresh_token client needs an operator's
// refresh token (LoginWithRefreshToken), so it has no automatic login.
func (c *Client) AutoLogin() tokencache.LoginFunc {
	if c.cfg.Grant == GrantRefreshToken {
		return nil
	}
	return c.Login()
}

// Refresh implements tokencache.Backend. It is Token: for client_credentials
// a "refresh" is simply a new token request (refreshToken is ignored).
func (c *Client) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	return c.Token(ctx, key, refreshToken)
}

// Revoke implements tokencache.Backend: RFC 7009 revocation of
// refreshToken, when there is one and the server advertises a
// revocation_endpoint; otherwise it does nothing (a client_credentials
// session holds nothing worth revoking, and an access token expires on its
// own). With Config.DPoP the request carries a proof like a token request.
func (c *Client) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	if refreshToken == "" {
		return nil
	}
	m, err := c.metadata(ctx)
	if err != nil {
		return err
	}
	if m.revocation == nil {
		return nil
	}
	x := &exchange{op: "revoke", target: m.revocation, secrets: c.secrets(refreshToken)}
	if c.cfg.DPoP && key != nil {
		x.key = key
	}
	x.form = func() (url.Values, http.Header, error) {
		f := url.Values{"token": {refreshToken}, "token_type_hint": {"refresh_token"}}
		h, err := c.authenticate(f, m, x)
		return f, h, err
	}
	// RFC 7009 §2.2: 200 also for a token that was already invalid, so any
	// 2xx means the token is no longer usable.
	_, err = c.do(ctx, x)
	return err
}

// Login returns the tokencache.LoginFunc for the configured grant. For
// client_credentials it fetches a token (no user involved). For
// refresh_token it spends the refresh token it is handed (the cache passes
// the previous session's, if it still has one); with none it fails with a
// KindDead error, because only an operator can supply a new one (see
// LoginWithRefreshToken).
func (c *Client) Login() tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*tokencache.Grant, error) {
		return c.Token(ctx, key, previousRefreshToken)
	}
}

// LoginWithRefreshToken returns a tokencache.LoginFunc that starts a session
// from an operator-supplied refresh token (the admin API's or CLI's "login
// refresh-token"): the first refresh with rt. The returned grant carries
// the rotated refresh token, or rt itself when the server did not rotate,
// so the session always has one to store.
func (c *Client) LoginWithRefreshToken(rt string) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, _ string) (*tokencache.Grant, error) {
		if c.cfg.Grant != GrantRefreshToken {
			e := newError("token", KindConfig, 0, errNotRefreshGrant)
			e.detail = "LoginWithRefreshToken needs Grant refresh_token"
			return nil, e
		}
		g, err := c.Token(ctx, key, rt)
		if err != nil {
			return nil, err
		}
		if g.RefreshToken == "" {
			g.RefreshToken = rt
		}
		return g, nil
	}
}

var errNotRefreshGrant = errors.New("client is not configured for the refresh_token grant")
