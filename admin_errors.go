package injecttoken

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// This file maps a failed admin operation to the API's answer: status,
// code, message, Retry-After. The rules (docs/admin-api.md, status table)
// are the same for every backend and both mounts (admin API, dashboard).

// opName names an operation in logs, error texts and the next step an
// operator is told to take.
type opName string

const (
	opRefresh           opName = "refresh"
	opLogout            opName = "logout"
	opOTPStart          opName = "otp"
	opOTPCheck          opName = "otp_check"
	opPasswordLogin     opName = "password_login"
	opRefreshTokenLogin opName = "refresh_token_login"
	opList              opName = "list"
	opRevoke            opName = "revoke"
	opConfiguredLogin   opName = "configured_login"
	opClearAfterRevoke  opName = "clearing local state after revocation"
)

// operatorRetryAfter is the Retry-After hint while a session waits for an
// operator (logged out by one, never logged in without automatic login,
// or its configured login refused): nothing changes by retrying sooner.
const operatorRetryAfter = 60 * time.Second

// opError is a failed operation: the status, code and text the API
// answers, plus the headers that go with them.
type opError struct {
	status int
	code   string
	msg    string
	retry  time.Duration // Retry-After, for 503
	allow  string        // the method to use, for 405
}

func (e *opError) Error() string { return e.msg }

func (e *opError) setHeaders(h http.Header) {
	h.Set(adminapi.CodeHeader, e.code)
	if e.allow != "" {
		h.Set("Allow", e.allow)
	}
	if e.retry > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((e.retry+time.Second-1)/time.Second), 10))
	}
}

func asOpError(err error) *opError {
	var oe *opError
	if errors.As(err, &oe) {
		return oe
	}
	return &opError{status: http.StatusInternalServerError, code: adminapi.CodeInternal, msg: err.Error()}
}

func errorf(status int, code, format string, args ...any) *opError {
	return &opError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *opError {
	return errorf(http.StatusBadRequest, adminapi.CodeInvalidRequest, format, args...)
}

func methodNotAllowed(r *http.Request, want string) error {
	e := errorf(http.StatusMethodNotAllowed, adminapi.CodeMethodNotAllowed, "method %s not allowed; use %s", r.Method, want)
	e.allow = want
	return e
}

// backendFailure is a token server's answer, whichever the backend.
type backendFailure struct {
	status                      int    // the token server's HTTP status, 0 without an answer
	code                        string // its error code
	words                       string // its message, or our description when it sent none
	refused, transient, unknown bool
	retry                       time.Duration
}

func asBackendFailure(err error) (backendFailure, bool) {
	if errors.Is(err, tokencache.ErrUnusableToken) {
		// The server answered 200 with a token that cannot be sent.
		return backendFailure{status: http.StatusOK, words: tokencache.ErrUnusableToken.Error()}, true
	}
	f, be := tokencache.FailureOf(err)
	if f == nil {
		return backendFailure{}, false
	}
	return backendFailure{status: f.Status, code: f.Code, words: firstNonEmpty(f.Message, be.Error()),
		refused:   f.Class == tokencache.ClassSessionDead || f.Class == tokencache.ClassCredentialsRejected || f.Class == tokencache.ClassDidNotAct,
		transient: f.Class == tokencache.ClassRetryLater, unknown: f.Class == tokencache.ClassOutcomeUnknown, retry: f.RetryDelay}, true
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// where names the token server's answer: "(prelude HTTP 401)".
func (b backendFailure) where(backend string) string {
	if b.status == 0 {
		return "(" + backend + ", no answer)"
	}
	return fmt.Sprintf("(%s HTTP %d)", backend, b.status)
}

// loginHint is the command that logs the session in, for its grant.
func loginHint(s *session) string {
	switch set := s.settings(); {
	case set.hasLogin():
		return "caddy inject-token login " + s.name
	case set.backendName == oauth.BackendName:
		return "caddy inject-token login " + s.name + " --refresh-token"
	}
	return "caddy inject-token login " + s.name + " --email <address>"
}

// nextStep says what the operator can do after a refusal of op.
func nextStep(s *session, op opName) string {
	switch op {
	case opPasswordLogin:
		return "check the email address and password"
	case opOTPStart:
		return "check the email address or phone number"
	case opOTPCheck:
		return "check the code, or send a new one: caddy inject-token login " + s.name + " --email <address>"
	case opRefreshTokenLogin:
		return "obtain a new refresh token, then: caddy inject-token login " + s.name + " --refresh-token"
	case opConfiguredLogin:
		return "check the credentials in the configuration, then: caddy inject-token login " + s.name
	}
	if s.cache().Status().State == tokencache.StateLoggedOut {
		return "the session has ended; log in again: " + loginHint(s)
	}
	return ""
}

// opFailure turns an operation's failure into the API's answer. The rules
// are the same for every backend (docs/admin-api.md, status table):
//
//	409 logged_out       the session has no login; the message names the command
//	422 <server's code>  the token server refused the request
//	502 backend_error    the token server's answer was unusable or lost
//	503 <code>           the token server asked to retry later, or the
//	                     session has no token now (Retry-After)
//	500 internal         anything else (storage)
func opFailure(s *session, op opName, err error) error {
	var oe *opError
	if errors.As(err, &oe) {
		return oe
	}
	backend := s.settings().backendName
	if bf, ok := asBackendFailure(err); ok {
		switch {
		case bf.refused:
			msg := fmt.Sprintf("the token server refused the %s %s: %s", opNoun(op), bf.where(backend), bf.words)
			if next := nextStep(s, op); next != "" {
				msg += "; " + next
			}
			return &opError{status: http.StatusUnprocessableEntity, code: firstNonEmpty(bf.code, "refused"), msg: msg}
		case bf.transient:
			return &opError{status: http.StatusServiceUnavailable, code: firstNonEmpty(bf.code, adminapi.CodeUnavailable),
				msg:   fmt.Sprintf("the token server is unavailable for the %s %s: %s; retry later", opNoun(op), bf.where(backend), bf.words),
				retry: max(bf.retry, time.Second)}
		default:
			return &opError{status: http.StatusBadGateway, code: adminapi.CodeBackendError,
				msg: fmt.Sprintf("no usable answer from the token server for the %s %s: %s", opNoun(op), bf.where(backend), bf.words)}
		}
	}
	var ue *tokencache.UnavailableError
	if errors.Is(err, tokencache.ErrLoggedOut) || (errors.As(err, &ue) && ue.State == tokencache.StateLoggedOut) {
		why := ""
		if r := s.cache().Status().Reason; r != "" {
			why = " (" + r + ")"
		}
		return &opError{status: http.StatusConflict, code: adminapi.CodeLoggedOut,
			msg: fmt.Sprintf("session %q is logged out%s; log in first: %s", s.name, why, loginHint(s))}
	}
	if errors.As(err, &ue) {
		return &opError{status: http.StatusServiceUnavailable, code: adminapi.CodeUnavailable,
			msg:   fmt.Sprintf("session %q has no valid access token right now (%s): %v", s.name, ue.State, ue.Err),
			retry: retryHint(s.cache(), ue.State, ue.RetryAfter)}
	}
	return &opError{status: http.StatusInternalServerError, code: adminapi.CodeInternal,
		msg: fmt.Sprintf("%s failed: %v", opNoun(op), err)}
}

// opNoun names an operation in error texts.
func opNoun(op opName) string {
	switch op {
	case opOTPStart:
		return "one-time code request"
	case opOTPCheck:
		return "one-time code"
	case opPasswordLogin, opRefreshTokenLogin, opConfiguredLogin:
		return "login"
	}
	return string(op)
}

// retryHint is the Retry-After for a session without a token: the
// engine's backoff while retrying can help, operatorRetryAfter while only
// an operator can change the state.
func retryHint(c *tokencache.Cache, state string, engine time.Duration) time.Duration {
	if state == tokencache.StateLoggedOut && (c == nil || !c.Status().AutoLogin) || state == tokencache.StateLoginFailed {
		return operatorRetryAfter
	}
	return max(engine, time.Second)
}
