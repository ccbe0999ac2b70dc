package prelude

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Kind says what a caller should do about an Error. It is decided once,
// where the HTTP exchange is understood, so that callers never have to
// interpret status codes or server error codes themselves.
//
// Kind stays exported: it is this package's public API for programs that
// use the Client directly (an OTP code that was wrong is KindCaller, a
// DPoP key mismatch KindKeyMismatch), finer than the token engine needs.
// Each Kind maps onto exactly one tokencache.Class (see Kind.Class), and
// the rules for what proves the server did not act are tokencache's
// (tokencache.Attempt), not repeated here. Prelude's own verdicts: 401 on
// a password login rejects the credentials; any other 401, unauthorized
// and token_reused end the session; dpop_key_mismatch is a bug to report.
type Kind int

const (
	// KindTransient: retry later, honouring Error.RetryAfter. For a
	// refresh this is only returned for the answers listed above, which
	// prove the server did not act, so the refresh token that was sent is
	// still valid. For calls that spend nothing (login steps, listing) it
	// is also any 5xx or a lost answer to a GET.
	KindTransient = Kind(tokencache.ClassRetryLater)
	// KindDead: the session is not accepted and never will be (401,
	// unauthorized, token_reused on a call that carries a refresh or
	// access token). Log in again.
	KindDead = Kind(tokencache.ClassSessionDead)
	// KindCredentials: the server refused the login credentials (401 on
	// email + password login). Retrying the same credentials cannot
	// succeed and may lock the account.
	KindCredentials = Kind(tokencache.ClassCredentialsRejected)
	// KindKeyMismatch: the server says the DPoP proof is not signed by the
	// key the session is bound to (dpop_key_mismatch). The token was not
	// spent, but the session was logged in with that very key, so this is
	// a bug (ours, the storage's or the server's) to report, not a reason
	// to log in again in a loop: the token cache retries with backoff and
	// the error text says what happened.
	KindKeyMismatch Kind = 100
	// KindCaller: the server rejected the request as such (any other 4xx
	// on a call that spends nothing, including a wrong OTP code, an
	// unexpected 3xx, or arguments this package refused before sending).
	// Retrying the same request will fail the same way.
	KindCaller = Kind(tokencache.ClassDidNotAct)
	// KindUnknownOutcome: the request was written but no usable answer came
	// back: no response, a 2xx whose body could not be used, or, for a
	// refresh, any answer not listed above as proving the server did not
	// act. The server may have acted on it: treat the refresh token as
	// spent.
	KindUnknownOutcome = Kind(tokencache.ClassOutcomeUnknown)
)

// String returns a short lower-case label, used in Error.Error: the
// class's, or for a key mismatch what to do about it.
func (k Kind) String() string {
	if k == KindKeyMismatch {
		return "DPoP key mismatch: the server does not accept the key this session was logged in with; this is a bug, please report it"
	}
	return k.Class().String()
}

// Error is the only error type the Client returns. Its text never contains
// tokens, passwords, codes or keys: server messages are scrubbed of every
// secret the request carried before they are stored.
type Error struct {
	// Failure is the error in the token engine's terms: the class of Kind,
	// the HTTP status (0 when no response was received), the server's
	// machine-readable code ("" when the body was not a Prelude error
	// envelope, e.g. a proxy's HTML page), its message (sanitised and
	// truncated) and its Retry-After hint on 429 and 503 (RetryDelay, also
	// the RetryAfter method that tokencache.RetryAfterError asks for).
	tokencache.Failure
	// Op names the API call ("refresh", "finalize", "list_sessions", …).
	Op string
	// Type is the envelope's "type" (the error's category, e.g.
	// "bad_request"); "" when absent.
	Type string
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

// FailureReason says which tokencache.Reason* constant explains e; it
// makes *Error a tokencache.ReasonError.
func (e *Error) FailureReason() string {
	switch {
	case e.Kind == KindKeyMismatch:
		return tokencache.ReasonDPoPRejected
	case e.Code == codeTokenReused:
		return tokencache.ReasonTokenReused
	case e.Kind == KindCaller && e.Status == 0:
		return tokencache.ReasonOther // refused before sending
	}
	return wire.FailureReason(&e.Failure, e.err)
}

// Prelude's own codes; the DPoP proof codes shared with OAuth are wire's.
const (
	// codeKeyMismatch: a proof signed by another key than the session's.
	codeKeyMismatch = "dpop_key_mismatch"
	// codeTokenReused: a single-use token was presented twice; on a
	// refresh the server has revoked the session (Prelude Auth SDKs map
	// it, with 409, to their TokenReused error).
	codeTokenReused = "token_reused"
)

// deadCodes are the server codes that mean the session is gone whatever
// the status: a reused token means the server has revoked the session.
var deadCodes = map[string]bool{
	"unauthorized":  true,
	codeTokenReused: true,
}

// classify maps a non-2xx answer to c to a Kind. retryAfter says whether
// the answer carried a usable Retry-After header. The shared rules are
// tokencache.Attempt's; only Prelude's own verdicts are decided here.
func (c *call) classify(status int, code string, retryAfter bool) Kind {
	proofAnswer := status == http.StatusBadRequest || status == http.StatusUnauthorized
	var verdict Kind
	switch {
	case proofAnswer && code == codeKeyMismatch:
		verdict = KindKeyMismatch
	case c.op == opLoginPassword && status == http.StatusUnauthorized:
		verdict = KindCredentials
	case status == http.StatusUnauthorized || deadCodes[code]:
		verdict = KindDead
	}
	return c.kind(tokencache.Attempt{Status: status, Written: true, ProofRejected: wire.ProofCode(code), RetryAfter: retryAfter}, verdict)
}

// kind completes a with what c is and applies the shared rules. verdict
// (0: none) is Prelude's reading of the answer, kept where the rules agree
// with its class.
func (c *call) kind(a tokencache.Attempt, verdict Kind) Kind {
	a.Spends, a.Repeatable = c.spends, c.method == http.MethodGet
	a.Verdict = verdict.Class()
	if cl := a.Class(); verdict == 0 || verdict.Class() != cl {
		return Kind(cl)
	}
	return verdict
}

// Class is the token engine's class of k: each Kind but KindKeyMismatch
// is one by value. A key mismatch spent nothing, so the engine backs off
// and the error text asks for a report.
func (k Kind) Class() tokencache.Class {
	if k == KindKeyMismatch {
		return tokencache.ClassRetryLater
	}
	return tokencache.Class(k)
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
