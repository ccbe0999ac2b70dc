// Package tokencache keeps one session's access token fresh: a lock-free
// cache that callers read on every request, a single refresher per session
// (per process and, through caddy storage locks, per cluster), and durable
// state in a certmagic.Storage under inject_token/<session>/.
package tokencache

import (
	"context"
	"errors"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Grant is what a backend hands back after a login or a refresh.
type Grant struct {
	// AccessToken is the new access token.
	AccessToken string
	// TokenType is "Bearer" or "DPoP" (how the token must be presented).
	TokenType string
	// Expiry is when the access token expires, on the local clock (a backend
	// corrects for server clock skew before returning).
	Expiry time.Time
	// RefreshToken is the rotated refresh token; "" keeps the current one.
	RefreshToken string
	// RefreshExpiry is when the refresh token expires, if the server said.
	RefreshExpiry time.Time
}

// Backend talks to the token server for one session.
type Backend interface {
	// Refresh spends refreshToken (empty for grants without one, such as
	// client_credentials) and returns a new grant, signing any DPoP proof
	// with key. Errors wrap ErrSessionDead, ErrOutcomeUnknown or
	// ErrCredentialsRejected when they mean that; any other error must mean
	// the server did not act, and the same refresh token is presented again
	// after a backoff.
	Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*Grant, error)
	// Revoke ends the session at the server (logout).
	Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error
}

// LoginFunc starts a new session bound to key. previousRefreshToken is the
// refresh token of the session being replaced, if any, so the server can
// revoke it.
type LoginFunc func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*Grant, error)

// Error classes a Backend or LoginFunc wraps so the cache knows what to do.
//
// The contract that keeps a refresh token presented at most once: a backend
// returns an error wrapping none of these only when the answer proves the
// server did not act on the request (the request was never fully written,
// 429, 503 with Retry-After, a 400 about the DPoP proof or nonce). Every
// other failure after the request was written — 500, 502, 504, timeouts,
// resets, a 2xx that cannot be used — wraps ErrOutcomeUnknown.
var (
	// ErrSessionDead means the session can no longer be refreshed (revoked,
	// refresh token reused or unknown, key mismatch): log in again.
	ErrSessionDead = errors.New("session is no longer valid")
	// ErrOutcomeUnknown means the refresh request was sent but no answer
	// came back: the server may have rotated, so the refresh token must be
	// treated as spent and never presented again.
	ErrOutcomeUnknown = errors.New("refresh outcome unknown")
	// ErrCredentialsRejected means the server refused the configured login
	// credentials (wrong password, invalid_client, unauthorized_client):
	// retrying with the same configuration cannot succeed and may lock the
	// account, so automatic login pauses until the configuration changes or
	// an operator acts.
	ErrCredentialsRejected = errors.New("credentials rejected")
)

// RetryAfterError is implemented by transient errors that carry a server's
// Retry-After hint.
type RetryAfterError interface {
	error
	RetryAfter() time.Duration
}
