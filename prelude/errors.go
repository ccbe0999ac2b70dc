package prelude

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Kind says what a caller should do about an Error. It is decided once,
// where the HTTP exchange is understood, so that callers never have to
// interpret status codes or server error codes themselves.
//
// Kind, Error and classify look like package oauth's but are not shared:
// they are each package's public API, and the classes differ (oauth tells
// a rejected client configuration from a rejected request, and kills only
// on invalid_grant). Only the formatting and scrubbing are common, in
// internal/wire.
//
// # What proves the server did not act
//
// A refresh presents a single-use refresh token: presenting it again after
// the server rotated it is token reuse, and Prelude revokes the session.
// So a failed refresh is KindTransient (the same token may be presented
// again) only when the answer proves the server did not act on it:
//
//   - the request was never fully written (connection refused, DNS or TLS
//     failure, a reset before httptrace reports WroteRequest);
//   - 429 Too Many Requests (with or without Retry-After);
//   - 503 Service Unavailable with a Retry-After header;
//   - a 400 or 401 whose code is about the DPoP proof or nonce:
//     invalid_dpop_proof, missing_dpop_proof, use_dpop_nonce (the server
//     checks the proof before it looks at the token), and
//     dpop_key_mismatch, which is KindKeyMismatch.
//
// Everything else after the request was written — 500, 502, 504, a 503
// without Retry-After, any other 3xx/4xx that is not a session verdict, a
// timeout or reset while waiting, a 2xx that cannot be used — is
// KindUnknownOutcome for a refresh: the server (or the one behind a load
// balancer that answered for it) may have rotated, so that token is never
// presented again. 401 unauthorized and token_reused are KindDead.
type Kind int

const (
	// KindTransient: retry later, honouring Error.RetryAfter. For a
	// refresh this is only returned for the answers listed above, which
	// prove the server did not act, so the refresh token that was sent is
	// still valid. For calls that spend nothing (login steps, listing) it
	// is also any 5xx or a lost answer to a GET.
	KindTransient Kind = iota + 1
	// KindDead: the session is not accepted and never will be (401,
	// unauthorized, token_reused on a call that carries a refresh or
	// access token). Log in again.
	KindDead
	// KindCredentials: the server refused the login credentials (401 on
	// email + password login). Retrying the same credentials cannot
	// succeed and may lock the account.
	KindCredentials
	// KindKeyMismatch: the server says the DPoP proof is not signed by the
	// key the session is bound to (dpop_key_mismatch). The token was not
	// spent, but the session was logged in with that very key, so this is
	// a bug (ours, the storage's or the server's) to report, not a reason
	// to log in again in a loop: the token cache retries with backoff and
	// the error text says what happened.
	KindKeyMismatch
	// KindCaller: the server rejected the request as such (any other 4xx
	// on a call that spends nothing, including a wrong OTP code, an
	// unexpected 3xx, or arguments this package refused before sending).
	// Retrying the same request will fail the same way.
	KindCaller
	// KindUnknownOutcome: the request was written but no usable answer came
	// back: no response, a 2xx whose body could not be used, or, for a
	// refresh, any answer not listed above as proving the server did not
	// act. The server may have acted on it: treat the refresh token as
	// spent.
	KindUnknownOutcome
)

// String returns a short lower-case label, used in Error.Error.
func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindDead:
		return "session dead"
	case KindCredentials:
		return "credentials rejected"
	case KindKeyMismatch:
		return "DPoP key mismatch: the server does not accept the key this session was logged in with; this is a bug, please report it"
	case KindCaller:
		return "rejected"
	case KindUnknownOutcome:
		return "outcome unknown"
	default:
		return "unclassified"
	}
}

// Error is the only error type the Client returns. Its text never contains
// tokens, passwords, codes or keys: server messages are scrubbed of every
// secret the request carried before they are stored.
type Error struct {
	// Op names the API call ("refresh", "finalize", "list_sessions", …).
	Op string
	// Status is the HTTP status, or 0 when no response was received.
	Status int
	// Code is the server's machine-readable error code ("" when the body
	// was not a Prelude error envelope, e.g. a proxy's HTML page).
	Code string
	// Type is the envelope's "type" (the error's category, e.g.
	// "bad_request"); "" when absent.
	Type string
	// Message is the server's human-readable message, sanitised and
	// truncated.
	Message string
	// RetryDelay is the server's Retry-After hint on 429 and 503 (0 when
	// absent). It is exposed through the RetryAfter method, which is what
	// tokencache.RetryAfterError asks for; a field of that name cannot
	// coexist with the method.
	RetryDelay time.Duration
	// Kind classifies the failure; see the Kind constants.
	Kind Kind

	detail string // scrubbed description of the cause, for Error()
	err    error  // cause, for errors.Is / errors.As (never holds secrets)
}

// Error formats as "prelude: <op>: HTTP <status> <code>: <message>: <cause>
// (<kind>)", leaving out parts that are empty. The code is shown only with
// a status.
func (e *Error) Error() string {
	t := wire.ErrorText{Pkg: "prelude", Op: e.Op, Status: e.Status, Texts: []string{e.Message, e.detail}, Retry: e.RetryDelay, Kind: e.Kind.String()}
	if e.Status != 0 {
		t.Code = e.Code
	}
	return t.String()
}

// Unwrap returns the underlying cause (a transport, context or decoding
// error), so errors.Is(err, context.DeadlineExceeded) works.
func (e *Error) Unwrap() error { return e.err }

// RetryAfter returns RetryDelay; it makes *Error a
// tokencache.RetryAfterError.
func (e *Error) RetryAfter() time.Duration { return e.RetryDelay }

// FailureReason says which tokencache.Reason* constant explains e; it
// makes *Error a tokencache.ReasonError.
func (e *Error) FailureReason() string {
	switch {
	case e.Code == codeUseNonce:
		return tokencache.ReasonNonce
	case proofCodes[e.Code] || e.Kind == KindKeyMismatch:
		return tokencache.ReasonDPoPRejected
	case e.Kind == KindCredentials:
		return tokencache.ReasonInvalidClient
	case e.Code == codeTokenReused:
		return tokencache.ReasonTokenReused
	case e.Kind == KindDead:
		return tokencache.ReasonInvalidGrant
	case e.Kind == KindCaller && e.Status == 0:
		return tokencache.ReasonOther // refused before sending
	}
	return wire.Reason(e.Status, e.err)
}

// Server codes that decide a Kind.
const (
	codeUseNonce     = "use_dpop_nonce"
	codeInvalidProof = "invalid_dpop_proof"
	codeKeyMismatch  = "dpop_key_mismatch"
	// codeTokenReused: a single-use token was presented twice; on a
	// refresh the server has revoked the session (Prelude Auth SDKs map
	// it, with 409, to their TokenReused error).
	codeTokenReused = "token_reused"
)

// proofCodes are the codes about the DPoP proof or nonce. The server
// checks the proof before it touches the refresh token, so these prove it
// did not act; the official web SDK treats them all as a bad request, not
// as the end of the session.
var proofCodes = map[string]bool{
	codeInvalidProof:     true,
	"missing_dpop_proof": true,
	codeUseNonce:         true,
}

// deadCodes are the server codes that mean the session is gone whatever
// the status: a reused token means the server has revoked the session.
var deadCodes = map[string]bool{
	"unauthorized":  true,
	codeTokenReused: true,
}

// classify maps a non-2xx answer to c to a Kind. retryAfter says whether
// the answer carried a usable Retry-After header. See Kind for the rules.
func (c *call) classify(status int, code string, retryAfter bool) Kind {
	proofAnswer := status == http.StatusBadRequest || status == http.StatusUnauthorized
	switch {
	case proofAnswer && proofCodes[code]:
		// Reaching here means the in-call retry (nonce, re-dated proof)
		// was spent or not possible; the token cache backs off and tries
		// again with a fresh proof.
		return KindTransient
	case proofAnswer && code == codeKeyMismatch:
		return KindKeyMismatch
	case status == http.StatusTooManyRequests,
		status == http.StatusServiceUnavailable && retryAfter:
		return KindTransient
	case c.op == opLoginPassword && status == http.StatusUnauthorized:
		return KindCredentials
	case status == http.StatusUnauthorized || deadCodes[code]:
		return KindDead
	case c.spends:
		return KindUnknownOutcome
	case status >= 500:
		return KindTransient
	default:
		return KindCaller
	}
}

// envelope extracts code, message and type from an error body. Prelude
// sends {"code","message","type"}; one SDK fixture uses "display_message";
// RFC 6749 style {"error","error_description"} is accepted as a fallback.
// Anything that is not a JSON object yields empty strings. (oauth's
// errorBody reads only the RFC 6749 names, so the two are kept apart.)
func envelope(body []byte) (code, message, typ string) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return "", "", ""
	}
	pick := func(keys ...string) string {
		for _, k := range keys {
			var s string
			if json.Unmarshal(m[k], &s) == nil && s != "" {
				return s
			}
		}
		return ""
	}
	return pick("code", "error"), pick("message", "display_message", "error_description"), pick("type")
}

// maxRetryAfter caps a server's Retry-After so a garbage value cannot park
// a caller for years (or overflow a Duration). The token cache applies its
// own, lower cap.
const maxRetryAfter = 24 * time.Hour

// cacheError adds the tokencache sentinel matching err's Kind, keeping err
// in the chain: KindDead → ErrSessionDead, KindUnknownOutcome →
// ErrOutcomeUnknown, KindCredentials → ErrCredentialsRejected. Every other
// Kind is left bare, which tells the cache the server did not act.
func cacheError(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	switch e.Kind {
	case KindDead:
		return fmt.Errorf("%w: %w", tokencache.ErrSessionDead, err)
	case KindUnknownOutcome:
		return fmt.Errorf("%w: %w", tokencache.ErrOutcomeUnknown, err)
	case KindCredentials:
		return fmt.Errorf("%w: %w", tokencache.ErrCredentialsRejected, err)
	}
	return err
}
