package prelude

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
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
type Kind int

const (
	// KindTransient: the server did not act on the request (network failure
	// before the request was fully written, timeout before that point, 5xx,
	// 429). Retry later, honouring Error.RetryAfter; a refresh token that
	// was sent is still valid.
	KindTransient Kind = iota + 1
	// KindDead: the session or credential is not accepted and never will be
	// (401, unauthorized, invalid_dpop_proof, dpop_key_mismatch,
	// missing_dpop_proof, token_reused). Log in again.
	KindDead
	// KindCaller: the server rejected the request as such (any other 4xx,
	// including a second use_dpop_nonce, unexpected 3xx, or arguments this
	// package refused before sending). Retrying the same request will fail
	// the same way.
	KindCaller
	// KindUnknownOutcome: the request was fully written but no usable answer
	// came back (connection lost or timed out after writing, or a 2xx whose
	// body could not be used). The server may have acted on it: for a
	// refresh, treat the refresh token as spent.
	KindUnknownOutcome
)

// String returns a short lower-case label, used in Error.Error.
func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindDead:
		return "session dead"
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

// deadCodes are the server codes that mean the session or credential is
// gone whatever the status: the SDKs treat the DPoP ones as unauthorized,
// and a reused token means the server has revoked the session.
var deadCodes = map[string]bool{
	"unauthorized":       true,
	"invalid_dpop_proof": true,
	"dpop_key_mismatch":  true,
	"missing_dpop_proof": true,
	"token_reused":       true,
}

// codeUseNonce is the server's request to retry with its DPoP-Nonce.
const codeUseNonce = "use_dpop_nonce"

// classify maps a non-2xx response to a Kind.
func classify(status int, code string) Kind {
	switch {
	case code == codeUseNonce:
		// Checked first: an RFC 9449 resource-server style 401 nonce
		// challenge must not kill a session. Reaching here means the one
		// retry was already spent (or no nonce was offered).
		return KindCaller
	case status == http.StatusUnauthorized || deadCodes[code]:
		return KindDead
	case status == http.StatusTooManyRequests || status >= 500:
		// 429 is transient with or without Retry-After: the request was
		// refused before being acted on.
		return KindTransient
	default:
		return KindCaller
	}
}

// envelope extracts code and message from an error body. Prelude sends
// {"code","message"}; one SDK fixture uses "display_message"; RFC 6749
// style {"error","error_description"} is accepted as a fallback. Anything
// that is not a JSON object yields empty strings. (oauth's errorBody reads
// only the RFC 6749 names, so the two are kept apart.)
func envelope(body []byte) (code, message string) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return "", ""
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
	return pick("code", "error"), pick("message", "display_message", "error_description")
}

// maxRetryAfter caps a server's Retry-After so a garbage value cannot park
// a caller for years (or overflow a Duration).
const maxRetryAfter = 24 * time.Hour
