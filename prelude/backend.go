package prelude

import (
	"context"
	"errors"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Backend adapts a Client to tokencache.Backend.
type Backend struct {
	Client *Client
}

var _ tokencache.Backend = Backend{}

// errNoClient is returned by a Backend or LoginFunc built without a Client.
var errNoClient = errors.New("prelude: no Client configured")

// Refresh implements tokencache.Backend: it rotates refreshToken and
// returns the new grant. Errors wrap tokencache.ErrSessionDead for
// KindDead and tokencache.ErrOutcomeUnknown for KindUnknownOutcome; every
// error still wraps the *Error, whose RetryAfter method carries any
// Retry-After hint.
func (b Backend) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	if b.Client == nil {
		return nil, errNoClient
	}
	t, err := b.Client.Refresh(ctx, key, refreshToken)
	if err != nil {
		return nil, cacheError(err)
	}
	return t.Grant(), nil
}

// Revoke implements tokencache.Backend (logout). A session that was already
// gone yields an error wrapping tokencache.ErrSessionDead.
func (b Backend) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	if b.Client == nil {
		return errNoClient
	}
	return cacheError(b.Client.Revoke(ctx, key, refreshToken))
}

// PasswordLogin returns a tokencache.LoginFunc that logs in with email and
// password (LoginPassword, then Finalize with the given key, forwarding the
// previous refresh token so the replaced session is revoked). Rejected
// credentials wrap tokencache.ErrSessionDead: retrying will not help.
func PasswordLogin(c *Client, email, password string) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*tokencache.Grant, error) {
		if c == nil {
			return nil, errNoClient
		}
		challenge, err := c.LoginPassword(ctx, email, password)
		if err != nil {
			return nil, cacheError(err)
		}
		t, err := c.Finalize(ctx, key, challenge, previousRefreshToken)
		if err != nil {
			return nil, cacheError(err)
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
