package prelude

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() { tokencache.Register(BackendName, Open) }

// BackendName is the name Prelude's backend is registered under.
const BackendName = "prelude"

// Settings are the backend's settings, as its tokencache.Factory (Open)
// reads them.
type Settings struct {
	// URL is the base URL of the Prelude Session frontend API.
	URL string `json:"url"`
	// Email and Password, when set, are the automatic login.
	Email    string `json:"email,omitempty"`
	Password string `json:"password,omitempty"`
}

// Open is the backend's tokencache.Factory: it builds a Backend from
// Settings in JSON and env's nonce store. It does no network I/O.
func Open(raw json.RawMessage, env tokencache.Env) (tokencache.Backend, error) {
	var s Settings
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("prelude settings: %w", err)
	}
	c, err := New(s.URL, Options{Nonces: env.Nonces})
	if err != nil {
		return nil, err
	}
	return Backend{Client: c, Email: s.Email, Password: s.Password}, nil
}

// Backend adapts a Client to tokencache.Backend. The Client is embedded,
// so the admin API reaches its Prelude-only calls (StartOTPLogin,
// ListSessions, RevokeSessions) through the backend, by interface.
type Backend struct {
	*Client
	// Email and Password, when set, are the automatic login (AutoLogin).
	Email, Password string
}

var (
	_ tokencache.Backend     = Backend{}
	_ tokencache.ServerClock = Backend{}
)

// errNoClient is returned by a Backend or LoginFunc built without a Client.
var errNoClient = errors.New("prelude: no Client configured")

// ServerSkew implements tokencache.ServerClock (see Client.ServerSkew).
func (b Backend) ServerSkew(ctx context.Context) (time.Duration, error) {
	if b.Client == nil {
		return 0, errNoClient
	}
	return b.Client.ServerSkew(ctx)
}

// Refresh implements tokencache.Backend: it rotates refreshToken and
// returns the new grant. Errors are *Error, classified through Kind.Class.
func (b Backend) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	if b.Client == nil {
		return nil, errNoClient
	}
	t, err := b.Client.Refresh(ctx, key, refreshToken)
	if err != nil {
		return nil, err
	}
	return t.Grant(), nil
}

// Revoke implements tokencache.Backend (logout). A session that was already
// gone yields an error matching tokencache.ErrSessionDead.
func (b Backend) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	if b.Client == nil {
		return errNoClient
	}
	return b.Client.Revoke(ctx, key, refreshToken)
}

// AutoLogin implements tokencache.Backend: the configured email and
// password, or nil.
func (b Backend) AutoLogin() tokencache.LoginFunc {
	if b.Email == "" {
		return nil
	}
	return b.PasswordLogin(b.Email, b.Password)
}

// PasswordLogin is the operator's password login through b's client.
func (b Backend) PasswordLogin(email, password string) tokencache.LoginFunc {
	return PasswordLogin(b.Client, email, password)
}

// PasswordLogin returns a tokencache.LoginFunc that logs in with email and
// password (LoginPassword, then Finalize with the given key, forwarding the
// previous refresh token so the replaced session is revoked). Rejected
// credentials match tokencache.ErrCredentialsRejected: retrying will not
// help.
func PasswordLogin(c *Client, email, password string) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*tokencache.Grant, error) {
		if c == nil {
			return nil, errNoClient
		}
		challenge, err := c.LoginPassword(ctx, email, password)
		if err != nil {
			return nil, err
		}
		t, err := c.Finalize(ctx, key, challenge, previousRefreshToken)
		if err != nil {
			return nil, err
		}
		return t.Grant(), nil
	}
}

// Grant converts t to the cache's form. Prelude access tokens are bearer
// tokens (the DPoP key binds the refresh token, not the access token).
func (t *Tokens) Grant() *tokencache.Grant {
	if t == nil {
		return nil
	}
	return &tokencache.Grant{
		AccessToken:   t.AccessToken,
		TokenType:     "Bearer",
		Expiry:        t.ExpiresAt,
		RefreshToken:  t.RefreshToken,
		RefreshExpiry: t.RefreshExpiresAt,
	}
}
