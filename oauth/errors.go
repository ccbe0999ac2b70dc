package oauth

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Kind says what a caller should do about an Error. It is decided once,
// where the HTTP exchange is understood, so callers never interpret status
// codes or OAuth error codes themselves.
//
// Kind stays exported: it is this package's public API for programs that
// use the Client directly, and it is finer than the token engine needs
// (KindConfig tells "fix the client registration" from KindDead's "log in
// again"). Each Kind maps onto exactly one tokencache.Class (Kind.Class);
// the rules for what proves the server did not act are tokencache's
// (tokencache.Attempt), not repeated here. This package's own verdicts:
// invalid_grant ends the grant; invalid_client, unauthorized_client,
// unsupported_grant_type, invalid_scope, invalid_target and a bare 401
// reject the client configuration.
type Kind tokencache.Class

const (
	// KindTransient: retry later, honouring Error.RetryAfter. For a
	// refresh_token request only the answers listed above, which prove the
	// server did not act; for requests that spend nothing also 5xx and
	// lost answers.
	KindTransient = Kind(tokencache.ClassRetryLater)
	// KindRejected: the server refused a request that spends nothing (any
	// other 4xx, an unexpected redirect). A later attempt may succeed, so
	// the token cache backs off and retries.
	KindRejected = Kind(tokencache.ClassDidNotAct)
	// KindUnknownOutcome: a refresh_token request was written but the
	// answer does not prove the server did not act (see above). The server
	// may have rotated the refresh token, so it must be treated as spent.
	KindUnknownOutcome = Kind(tokencache.ClassOutcomeUnknown)
	// KindDead: the grant is gone (invalid_grant: the refresh token is
	// invalid, expired, revoked or was reused). Log in again.
	KindDead = Kind(tokencache.ClassSessionDead)
	// KindConfig: the server rejected the client itself (invalid_client,
	// unauthorized_client, unsupported_grant_type, invalid_scope,
	// invalid_target, a bare HTTP 401) or this package refused the
	// configuration. Retrying without an operator changing something will
	// fail the same way and may lock the client out, so it matches
	// tokencache.ErrCredentialsRejected.
	KindConfig = Kind(tokencache.ClassCredentialsRejected)
)

// String returns a short lower-case label, used in Error.Error: the
// class's, but for the two classes OAuth names its own way.
func (k Kind) String() string {
	switch k {
	case KindDead:
		return "grant dead"
	case KindConfig:
		return "client configuration"
	}
	return k.Class().String()
}

// ErrClientConfig is matched (errors.Is) by every KindConfig error, so a
// caller can tell "fix the configuration" apart from "log in again".
var ErrClientConfig = errors.New("oauth client configuration rejected")

// Error is the only error type the Client returns from network operations.
// Its text never contains the client secret, a client assertion, a refresh
// or access token: server text is scrubbed of every secret the request
// carried before it is stored.
//
// Error matches the tokencache sentinels of its Kind's class through its
// Is method (KindConfig also matches ErrClientConfig). Its embedded
// tokencache.Failure and FailureReason method make it a
// tokencache.RetryAfterError and a tokencache.ReasonError.
type Error struct {
	// Failure is the error in the token engine's terms: the class of Kind,
	// the HTTP status (0 when no response was received), the OAuth "error"
	// value as Code ("" when the body was not an OAuth error object, e.g.
	// a proxy's HTML page), the error_description as Message (sanitised
	// and truncated) and the Retry-After hint on 429 and 503 (RetryDelay;
	// see RetryAfter).
	tokencache.Failure
	// Op is "token", "revoke" or "discover"; for the authorization code
	// flow also "par", "authorize" (the callback) and "id_token".
	Op string
	// Kind classifies the failure.
	Kind Kind

	detail string // scrubbed description of the cause, for Error()
	err    error  // cause, for errors.Is / errors.As (never holds secrets)
}

// newError is the Error for op of kind; cause may be nil.
func newError(op string, kind Kind, status int, cause error) *Error {
	return &Error{Failure: tokencache.Failure{Class: kind.Class(), Status: status}, Op: op, Kind: kind, err: cause}
}

// Error formats as "oauth: <op>: HTTP <status> <code>: <description>:
// <cause> (<kind>)", leaving out parts that are empty.
func (e *Error) Error() string {
	return wire.ErrorText{Pkg: "oauth", Op: e.Op, Status: e.Status, Code: e.Code, Texts: []string{e.Message, e.detail}, Retry: e.RetryDelay, Kind: e.Kind.String()}.String()
}

// Unwrap returns the underlying cause (a transport, context or decoding
// error), so errors.Is(err, context.DeadlineExceeded) works.
func (e *Error) Unwrap() error { return e.err }

// Is matches the tokencache sentinel of e's class, and ErrClientConfig
// for KindConfig.
func (e *Error) Is(target error) bool {
	if target == ErrClientConfig {
		return e.Kind == KindConfig
	}
	return e.Failure.Is(target)
}

// FailureReason says which tokencache.Reason* constant explains e.
func (e *Error) FailureReason() string { return wire.FailureReason(&e.Failure, e.err) }

// OAuth error codes (RFC 6749 §5.2, RFC 8707 §2, RFC 9449 §7.1) that
// decide a Kind.
const (
	codeInvalidGrant  = "invalid_grant"
	codeInvalidClient = "invalid_client"
)

// configCodes are answers about the client registration, not the request:
// no retry helps until someone changes the configuration.
var configCodes = map[string]bool{
	codeInvalidClient:        true,
	"unauthorized_client":    true,
	"unsupported_grant_type": true,
	"invalid_scope":          true,
	"invalid_target":         true,
}

// classify maps a non-2xx token or revocation response to x to a Kind.
// retryAfter says whether it carried a usable Retry-After header. The
// shared rules are tokencache.Attempt's; only the OAuth verdicts are
// decided here.
func (x *exchange) classify(status int, code string, retryAfter bool) Kind {
	var verdict Kind
	switch {
	case code == codeInvalidGrant:
		verdict = KindDead
	case configCodes[code] || status == http.StatusUnauthorized:
		// RFC 6749 §5.2 lets invalid_client come as a bare 401.
		verdict = KindConfig
	}
	return x.kind(tokencache.Attempt{Written: true, Status: status, ProofRejected: wire.ProofCode(code), RetryAfter: retryAfter}, verdict)
}

// kind completes a with what x is and applies the shared rules; verdict
// (0: none) is this package's reading of the answer. Each Kind is a
// tokencache.Class by value.
func (x *exchange) kind(a tokencache.Attempt, verdict Kind) Kind {
	a.Spends, a.Repeatable = x.spends, !x.spends
	a.Verdict = tokencache.Class(verdict)
	return Kind(a.Class())
}

// Class is the token engine's class of k.
func (k Kind) Class() tokencache.Class { return tokencache.Class(k) }

// errorBody extracts error and error_description from an OAuth error
// response. Anything that is not a JSON object yields empty strings.
// (prelude's envelope also reads Prelude's own names, so the two are kept
// apart.)
func errorBody(body []byte) (code, description string) {
	var m struct {
		Error       any `json:"error"`
		Description any `json:"error_description"`
	}
	if json.Unmarshal(body, &m) != nil {
		return "", ""
	}
	code, _ = m.Error.(string)
	description, _ = m.Description.(string)
	return code, description
}

// retryAfterCap keeps a garbage Retry-After from parking a session for
// years (or overflowing a Duration).
const retryAfterCap = time.Hour
