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
// Kind, Error and classify look like package prelude's but are not
// shared: they are each package's public API, and the classes differ
// (prelude has no configuration class and kills on 401). Only the
// formatting and scrubbing are common, in internal/wire.
//
// # What proves the server did not act
//
// A refresh_token request presents a refresh token that the server may
// rotate; presenting it again after that is reuse. So for a request that
// spends one, a failure is KindTransient (the same token may be presented
// again) only when the answer proves the server did not act:
//
//   - the request was never fully written (connection refused, DNS or TLS
//     failure, a reset before httptrace reports WroteRequest);
//   - 429 Too Many Requests (with or without Retry-After);
//   - 503 Service Unavailable with a Retry-After header;
//   - a 400 or 401 whose error is about the DPoP proof or nonce
//     (invalid_dpop_proof, use_dpop_nonce, missing_dpop_proof): RFC 9449
//     servers check the proof before the grant.
//
// The client-authentication and configuration refusals (KindConfig) and
// invalid_grant (KindDead) are verdicts of their own. Everything else after
// the request was written — 500, 502, 504, a 503 without Retry-After,
// another 3xx/4xx, a timeout or reset while waiting, a 2xx that cannot be
// used — is KindUnknownOutcome: that refresh token is never presented
// again. A client_credentials request spends nothing, so there those are
// KindTransient (5xx, lost answers) or KindRejected (other 4xx).
type Kind int

const (
	// KindTransient: retry later, honouring Error.RetryAfter. For a
	// refresh_token request only the answers listed above, which prove the
	// server did not act; for requests that spend nothing also 5xx and
	// lost answers.
	KindTransient Kind = iota + 1
	// KindDead: the grant is gone (invalid_grant: the refresh token is
	// invalid, expired, revoked or was reused). Log in again.
	KindDead
	// KindConfig: the server rejected the client itself (invalid_client,
	// unauthorized_client, unsupported_grant_type, invalid_scope,
	// invalid_target, a bare HTTP 401) or this package refused the
	// configuration. Retrying without an operator changing something will
	// fail the same way and may lock the client out, so it matches
	// tokencache.ErrCredentialsRejected.
	KindConfig
	// KindRejected: the server refused a request that spends nothing (any
	// other 4xx, an unexpected redirect). A later attempt may succeed, so
	// the token cache backs off and retries.
	KindRejected
	// KindUnknownOutcome: a refresh_token request was written but the
	// answer does not prove the server did not act (see above). The server
	// may have rotated the refresh token, so it must be treated as spent.
	KindUnknownOutcome
)

// String returns a short lower-case label, used in Error.Error.
func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindDead:
		return "grant dead"
	case KindConfig:
		return "client configuration"
	case KindRejected:
		return "rejected"
	case KindUnknownOutcome:
		return "outcome unknown"
	default:
		return "unclassified"
	}
}

// ErrClientConfig is matched (errors.Is) by every KindConfig error, so a
// caller can tell "fix the configuration" apart from "log in again".
var ErrClientConfig = errors.New("oauth client configuration rejected")

// Error is the only error type the Client returns from network operations.
// Its text never contains the client secret, a client assertion, a refresh
// or access token: server text is scrubbed of every secret the request
// carried before it is stored.
//
// Error matches the tokencache sentinels through its Is method: KindDead
// matches tokencache.ErrSessionDead, KindConfig
// tokencache.ErrCredentialsRejected (and ErrClientConfig), and
// KindUnknownOutcome tokencache.ErrOutcomeUnknown; KindTransient and
// KindRejected match none, which tells the cache the server did not act.
// Its RetryAfter and FailureReason methods make it a
// tokencache.RetryAfterError and a tokencache.ReasonError.
type Error struct {
	// Op is "token", "revoke" or "discover".
	Op string
	// Status is the HTTP status, or 0 when no response was received.
	Status int
	// Code is the OAuth "error" value ("" when the body was not an OAuth
	// error object, e.g. a proxy's HTML page).
	Code string
	// Description is the server's error_description, sanitised and
	// truncated.
	Description string
	// RetryDelay is the server's Retry-After hint on 429 and 503 (0 when
	// absent); see RetryAfter.
	RetryDelay time.Duration
	// Kind classifies the failure.
	Kind Kind

	detail string // scrubbed description of the cause, for Error()
	err    error  // cause, for errors.Is / errors.As (never holds secrets)
}

// Error formats as "oauth: <op>: HTTP <status> <code>: <description>:
// <cause> (<kind>)", leaving out parts that are empty.
func (e *Error) Error() string {
	return wire.ErrorText{Pkg: "oauth", Op: e.Op, Status: e.Status, Code: e.Code, Texts: []string{e.Description, e.detail}, Retry: e.RetryDelay, Kind: e.Kind.String()}.String()
}

// Unwrap returns the underlying cause (a transport, context or decoding
// error), so errors.Is(err, context.DeadlineExceeded) works.
func (e *Error) Unwrap() error { return e.err }

// Is maps Kind onto the token cache's error classes and ErrClientConfig.
func (e *Error) Is(target error) bool {
	switch target {
	case tokencache.ErrSessionDead:
		return e.Kind == KindDead
	case tokencache.ErrCredentialsRejected:
		return e.Kind == KindConfig
	case tokencache.ErrOutcomeUnknown:
		return e.Kind == KindUnknownOutcome
	case ErrClientConfig:
		return e.Kind == KindConfig
	}
	return false
}

// RetryAfter returns RetryDelay; it makes *Error a
// tokencache.RetryAfterError.
func (e *Error) RetryAfter() time.Duration { return e.RetryDelay }

// FailureReason says which tokencache.Reason* constant explains e.
func (e *Error) FailureReason() string {
	switch {
	case e.Code == codeUseDPoPNonce:
		return tokencache.ReasonNonce
	case proofCodes[e.Code]:
		return tokencache.ReasonDPoPRejected
	case e.Kind == KindConfig:
		return tokencache.ReasonInvalidClient
	case e.Kind == KindDead:
		return tokencache.ReasonInvalidGrant
	}
	return wire.Reason(e.Status, e.err)
}

// OAuth error codes (RFC 6749 §5.2, RFC 8707 §2, RFC 9449 §7.1) that
// decide a Kind.
const (
	codeInvalidGrant = "invalid_grant"
	codeUseDPoPNonce = "use_dpop_nonce"
	// codeInvalidProof: the DPoP proof was refused, most often for an
	// iat off the server's clock; the server did not act on the request.
	codeInvalidProof  = "invalid_dpop_proof"
	codeInvalidClient = "invalid_client"
)

// proofCodes are the answers about the DPoP proof or nonce: the server
// checked the proof before the grant, so it did not act.
var proofCodes = map[string]bool{
	codeUseDPoPNonce:     true,
	"invalid_dpop_proof": true,
	"missing_dpop_proof": true,
}

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
// retryAfter says whether it carried a usable Retry-After header. See Kind
// for the rules.
func (x *exchange) classify(status int, code string, retryAfter bool) Kind {
	switch {
	case (status == http.StatusBadRequest || status == http.StatusUnauthorized) && proofCodes[code],
		status == http.StatusTooManyRequests,
		status == http.StatusServiceUnavailable && retryAfter:
		return KindTransient
	case code == codeInvalidGrant:
		return KindDead
	case configCodes[code] || status == http.StatusUnauthorized:
		// RFC 6749 §5.2 lets invalid_client come as a bare 401.
		return KindConfig
	case x.spends:
		return KindUnknownOutcome
	case status >= 500:
		return KindTransient
	default:
		return KindRejected
	}
}

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
