// Package tokencache keeps one session's access token fresh: a lock-free
// cache that callers read on every request, a single refresher per session
// (per process and, through caddy storage locks, per cluster), and durable
// state in a certmagic.Storage under inject_token/<session>/.
package tokencache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Grant is what a backend hands back after a login or a refresh.
type Grant struct {
	// AccessToken is the new access token. The engine refuses a grant
	// whose access token is not an RFC 6750 token value (see Usable).
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

// Backend is the one contract between the engine and a token server: a
// backend is a package that implements it, returns its failures in the
// classification below (see Error), is built by a Factory and registers
// that Factory (see Register). docs/backends.md says how to write one.
type Backend interface {
	// Refresh spends refreshToken (empty for grants without one, such as
	// client_credentials) and returns a new grant, signing any DPoP proof
	// with key. Its errors say what happened through Class (see Error and
	// Attempt): only an error of class ClassDidNotAct or ClassRetryLater lets the same
	// refresh token be presented again.
	Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*Grant, error)
	// Revoke ends the session at the server (logout).
	Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error
	// AutoLogin is the login the backend can run unattended
	// (client_credentials, a configured password), or nil when only an
	// operator can log the session in.
	AutoLogin() LoginFunc
}

// Scoped is implemented by backends whose tokens are issued for settings
// that a reload can change (scope, resource, audience). TokenScope names
// them canonically: a token issued under another TokenScope is a token for
// something else, and is replaced at once, never handed out for the new
// settings.
type Scoped interface {
	TokenScope() string
}

// LoginFunc starts a new session bound to key. previousRefreshToken is the
// refresh token of the session being replaced, if any, so the server can
// revoke it.
type LoginFunc func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*Grant, error)

// The engine's error classes, matched with errors.Is. A backend error
// matches them through its Class (see Error.Is).
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

// Class is what the engine, the admin API and the metrics need to know
// about a backend's failure. Every backend maps its failures onto it; the
// rules for the classes that depend on whether the server acted are
// written once, in Attempt.Class.
type Class int

const (
	// RetryLater: the server did not act and asked, or may be asked
	// again, later (429, 503 with Retry-After, a DPoP proof or nonce
	// rejection, a request that never reached it, a 5xx to a request that
	// spends nothing). Error.RetryDelay carries any Retry-After hint.
	ClassRetryLater Class = iota + 1
	// DidNotAct: the server refused the request as such without acting on
	// it (a wrong one-time code, another 4xx to a request that spends
	// nothing). Retrying the same request fails the same way; a refresh
	// token it carried is still valid.
	ClassDidNotAct
	// OutcomeUnknown: the request was written but the answer does not
	// prove the server did not act: a refresh token it carried must be
	// treated as spent. Matches ErrOutcomeUnknown.
	ClassOutcomeUnknown
	// SessionDead: the session or grant is gone (revoked, expired, reused,
	// invalid_grant). Log in again. Matches ErrSessionDead.
	ClassSessionDead
	// CredentialsRejected: the server refused the configured credentials
	// or client registration. No retry helps until the configuration
	// changes. Matches ErrCredentialsRejected.
	ClassCredentialsRejected
)

// String is the class's label in error texts.
func (c Class) String() string {
	switch c {
	case ClassRetryLater:
		return "transient"
	case ClassDidNotAct:
		return "rejected"
	case ClassOutcomeUnknown:
		return "outcome unknown"
	case ClassSessionDead:
		return "session dead"
	case ClassCredentialsRejected:
		return "credentials rejected"
	}
	return "unclassified"
}

// Sentinel is the engine error class c matches (nil for ClassRetryLater and
// DidNotAct: the server did not act).
func (c Class) Sentinel() error {
	switch c {
	case ClassOutcomeUnknown:
		return ErrOutcomeUnknown
	case ClassSessionDead:
		return ErrSessionDead
	case ClassCredentialsRejected:
		return ErrCredentialsRejected
	}
	return nil
}

// Failure is a backend's failure in the engine's terms, the one
// classification. Every backend's error type embeds it (which also gives it
// Is and RetryAfter); its text stays the backend's, scrubbed of every
// secret.
type Failure struct {
	// Class says what the engine does about it.
	Class Class
	// Status is the token server's HTTP status, 0 without an answer.
	Status int
	// Code is the server's machine-readable error code, if any.
	Code string
	// Message is the server's human-readable message (error_description
	// for OAuth), scrubbed and truncated.
	Message string
	// RetryDelay is the server's Retry-After hint (0 when absent); see
	// RetryAfter.
	RetryDelay time.Duration
}

// Error describes f; an embedding backend error says more.
func (f *Failure) Error() string {
	s := f.Class.String()
	if f.Status != 0 {
		s += fmt.Sprintf(": HTTP %d %s", f.Status, f.Code)
	}
	return s
}

// Is matches the engine sentinel of f's Class.
func (f *Failure) Is(target error) bool {
	s := f.Class.Sentinel()
	return s != nil && target == s
}

// RetryAfter returns RetryDelay; it makes an error that embeds a Failure a
// RetryAfterError.
func (f *Failure) RetryAfter() time.Duration { return f.RetryDelay }

func (f *Failure) failure() *Failure { return f }

// failed is implemented by every error that embeds a Failure.
type failed interface {
	error
	failure() *Failure
}

// FailureOf returns the classification of the first backend error in err's
// chain, and that error (whose text is the backend's); nil, nil when there
// is none.
func FailureOf(err error) (*Failure, error) {
	if f, ok := errors.AsType[failed](err); ok {
		return f.failure(), f
	}
	return nil, nil
}

// RetryAfterError is implemented by transient errors that carry a server's
// Retry-After hint.
type RetryAfterError interface {
	error
	RetryAfter() time.Duration
}

// Attempt is one failed exchange with a token server, in the terms of the
// rules every backend shares. A backend fills it in and calls Class.
//
// # What proves the server did not act
//
// A refresh presents a single-use refresh token: presenting it again after
// the server rotated it is token reuse, and the server revokes the session.
// So a failed request that spends one is retried with the same token only
// when the answer proves the server did not act on it:
//
//   - the request was never fully written (connection refused, DNS or TLS
//     failure, a reset before httptrace reports WroteRequest);
//   - 429 Too Many Requests (with or without Retry-After);
//   - 503 Service Unavailable with a Retry-After header;
//   - a 400 or 401 whose error is about the DPoP proof or nonce
//     (invalid_dpop_proof, missing_dpop_proof, use_dpop_nonce): servers
//     check the proof before the token.
//
// Then come the backend's own verdicts (invalid_grant, invalid_client, a
// rejected password, …). Everything else after the request was written —
// 500, 502, 504, a 503 without Retry-After, another 3xx/4xx, a timeout or
// reset while waiting, a 2xx that cannot be used — is ClassOutcomeUnknown for a
// request that spends a token or is not safe to repeat; for the others a
// 5xx or lost answer is ClassRetryLater and another 4xx ClassDidNotAct.
type Attempt struct {
	// Spends: the request presented a single-use credential.
	Spends bool
	// Repeatable: repeating the request is harmless (a GET, a token
	// request that spends nothing), so a lost answer costs nothing.
	Repeatable bool
	// Written: the request was fully written.
	Written bool
	// Status is the HTTP status; 0 when no answer came.
	Status int
	// ProofRejected: the answer's error code is about the DPoP proof or
	// nonce.
	ProofRejected bool
	// RetryAfter: the answer carried a usable Retry-After header.
	RetryAfter bool
	// Verdict is the backend's reading of the answer's error code (0: it
	// has none). It is used only when the rules above do not already say
	// the server did not act.
	Verdict Class
}

// Class applies the rules.
func (a Attempt) Class() Class {
	answered := a.Status != 0
	switch {
	case !a.Written && !answered,
		a.ProofRejected && (a.Status == http.StatusBadRequest || a.Status == http.StatusUnauthorized),
		a.Status == http.StatusTooManyRequests,
		a.Status == http.StatusServiceUnavailable && a.RetryAfter:
		return ClassRetryLater
	case a.Verdict != 0:
		return a.Verdict
	case a.Spends || !a.Repeatable && (!answered || a.Status < 300):
		return ClassOutcomeUnknown
	case !answered || a.Status >= 500 || a.Status < 300:
		return ClassRetryLater
	}
	return ClassDidNotAct
}

// ErrUnusableToken is a grant whose access token cannot be a header value:
// the engine refuses it whatever the backend.
var ErrUnusableToken = errors.New("the server issued an access token that is not a valid RFC 6750 token (b64token characters only)")

// maxTokenLen bounds an access token: it travels in a request header.
const maxTokenLen = 16 << 10

// received is what the engine does with every backend answer, login or
// refresh: no grant is an error, and a grant whose access token is not an
// RFC 6750 b64token is refused here, once, so that no backend can hand a
// value to a request header unchecked. The server answered, so for a
// refresh (spends) the outcome counts as unknown: the refresh token it
// rotated cannot be trusted to be usable either.
func received(g *Grant, err error, spends bool) (*Grant, error) {
	switch {
	case err != nil:
		return nil, err
	case g == nil:
		err = errors.New("backend returned no grant")
	case !validTokenValue(g.AccessToken):
		err = ErrUnusableToken
	default:
		return g, nil
	}
	if spends {
		return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return nil, err
}

// validTokenValue reports whether v is an RFC 6750 b64token
// (1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="), which
// also covers JWTs: anything else (CR, LF, ',', spaces) would corrupt or
// extend the header it is sent in.
func validTokenValue(v string) bool {
	if v == "" || len(v) > maxTokenLen {
		return false
	}
	i := 0
	for ; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(v); i++ {
		if v[i] != '=' {
			return false
		}
	}
	return true
}
