package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

// operatorRetryAfter is the Retry-After hint while a session waits for an
// operator (logged out by one, never logged in without automatic login,
// or its configured login refused): nothing changes by retrying sooner.
const operatorRetryAfter = 60 * time.Second

// adminAPI is the admin.api.inject_token module: routes under
// /inject_token/ to inspect and manage sessions (see package adminapi for
// the routes and their wire types). It reads the package-level session
// pool, so it sees every session of the running config. Like every admin
// route it has no authentication of its own; it never returns an access
// token, a refresh token or a private key. The inject_token_dashboard
// handler serves the same operations.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.inject_token",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the /inject_token/ subtree; requests are dispatched inside.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminapi.Prefix, Handler: caddy.AdminHandlerFunc(serveAdmin)}}
}

// serveAdmin answers an admin request. Failures go back to Caddy as
// caddy.APIError, so its admin endpoint logs them and writes the
// {"error": "..."} body; the code and Retry-After travel as headers.
func serveAdmin(w http.ResponseWriter, r *http.Request) error {
	v, err := dispatch(r, strings.TrimPrefix(r.URL.Path, "/inject_token"), "admin API")
	if err != nil {
		oe := asOpError(err)
		oe.setHeaders(w.Header())
		return caddy.APIError{HTTPStatus: oe.status, Err: oe, Message: oe.msg}
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

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

// op is one operation on a session.
type op struct {
	method  string
	handle  func(ctx context.Context, c opCall) (any, error)
	backend string // "" for every backend, else the only one it serves
}

// opCall is what an operation works with: the session, the request and
// which mount ("admin API" or "dashboard") it came through, for logs.
type opCall struct {
	s   *session
	r   *http.Request
	via string
}

// sessionOps maps the path after /sessions/{name} to its operation.
var sessionOps = map[string]op{
	"":                         {http.MethodGet, handleStatus, ""},
	adminapi.RouteRefresh:      {http.MethodPost, handleRefresh, ""},
	adminapi.RouteLogout:       {http.MethodPost, handleLogout, ""},
	adminapi.RouteLogin:        {http.MethodPost, handleLogin, ""},
	adminapi.RouteOTPStart:     {http.MethodPost, handleOTPStart, "prelude"},
	adminapi.RouteOTPCheck:     {http.MethodPost, handleOTPCheck, "prelude"},
	adminapi.RoutePassword:     {http.MethodPost, handlePassword, "prelude"},
	adminapi.RouteRefreshToken: {http.MethodPost, handleRefreshToken, "oauth2"},
	adminapi.RouteList:         {http.MethodGet, handleList, "prelude"},
	adminapi.RouteRevoke:       {http.MethodPost, handleRevoke, "prelude"},
}

// dispatch runs the operation path (below the mount: "/sessions/...")
// names. It is the one implementation behind both the admin API and the
// dashboard.
func dispatch(r *http.Request, path, via string) (any, error) {
	rest, ok := strings.CutPrefix(path, "/sessions")
	if !ok {
		return nil, errorf(http.StatusNotFound, adminapi.CodeNotFound, "not found: %s", r.URL.Path)
	}
	if rest == "" || rest == "/" {
		if r.Method != http.MethodGet {
			return nil, methodNotAllowed(r, http.MethodGet)
		}
		all := adminapi.SessionList{Sessions: []adminapi.Status{}}
		for _, s := range allSessions() {
			all.Sessions = append(all.Sessions, statusOf(s))
		}
		return all, nil
	}
	name, sub, _ := strings.Cut(rest[1:], "/")
	if sub != "" {
		sub = "/" + sub
	}
	o, ok := sessionOps[sub]
	if !ok {
		return nil, errorf(http.StatusNotFound, adminapi.CodeNotFound, "not found: %s", r.URL.Path)
	}
	s, ok := lookupSession(name)
	if !ok {
		return nil, errorf(http.StatusNotFound, adminapi.CodeUnknownSession, "unknown session %q", name)
	}
	if r.Method != o.method {
		return nil, methodNotAllowed(r, o.method)
	}
	if b := s.settings().backend(); o.backend != "" && o.backend != b {
		return nil, errorf(http.StatusBadRequest, adminapi.CodeWrongBackend,
			"session %q uses the %s backend; %s is only for %s sessions", s.name, b, sub, o.backend)
	}
	return o.handle(r.Context(), opCall{s: s, r: r, via: via})
}

func methodNotAllowed(r *http.Request, want string) error {
	e := errorf(http.StatusMethodNotAllowed, adminapi.CodeMethodNotAllowed, "method %s not allowed; use %s", r.Method, want)
	e.allow = want
	return e
}

// statusOf is a session's status on the wire: every field present.
func statusOf(s *session) adminapi.Status {
	st := s.cache().Status()
	set := s.settings()
	out := adminapi.Status{
		Session:       s.name,
		Backend:       set.backend(),
		BaseURL:       set.baseURL,
		State:         st.State,
		Reason:        st.Reason,
		AutoLogin:     st.AutoLogin,
		OTPPending:    s.pendingOTP() != nil,
		OTPFlow:       s.lastOTPFlow(),
		Subject:       st.Subject,
		SessionID:     st.SessionID,
		Scopes:        st.Scopes,
		TokenType:     st.TokenType,
		ExpiresAt:     st.ExpiresAt,
		SecondsLeft:   st.SecondsLeft,
		NextRefresh:   st.NextRefresh,
		LastRefresh:   st.LastRefresh,
		LastOutcome:   st.LastOutcome,
		RefreshCount:  st.RefreshCount,
		AdoptCount:    st.AdoptCount,
		WaitCount:     st.WaitCount,
		LastError:     st.LastError,
		KeyThumbprint: st.KeyThumbprint,
		KeyAlgorithm:  st.KeyAlgorithm,
		TokenHeader:   st.TokenHeader,
		TokenClaims:   st.TokenClaims,
	}
	out.ConfiguredLogin = set.hasLogin()
	if out.Scopes == nil {
		out.Scopes = []string{}
	}
	return out
}

// logDone logs an operator's successful action once at INFO, saying who
// the session now is. Never a token.
func (c opCall) logDone(msg string, fields ...zap.Field) {
	st := c.s.cache().Status()
	fields = append([]zap.Field{
		zap.String("session", c.s.name),
		zap.String("via", c.via),
		zap.String("sub", st.Subject),
		zap.String("sid", st.SessionID),
		zap.String("state", st.State),
	}, fields...)
	if st.ExpiresAt != nil {
		fields = append(fields, zap.Time("expires_at", *st.ExpiresAt))
	}
	c.s.logger().Info(msg, fields...)
}

// logFailed logs an operator's failed action at WARN with the answer given.
func (c opCall) logFailed(msg string, err error) error {
	oe := asOpError(err)
	c.s.logger().Warn(msg, zap.String("session", c.s.name), zap.String("via", c.via),
		zap.Int("status", oe.status), zap.String("code", oe.code), zap.String("error", oe.msg))
	return oe
}

func handleStatus(_ context.Context, c opCall) (any, error) {
	return statusOf(c.s), nil
}

func handleRefresh(ctx context.Context, c opCall) (any, error) {
	if err := c.s.cache().Refresh(ctx); err != nil {
		return nil, c.logFailed("operator refresh failed", opFailure(c.s, "refresh", err))
	}
	c.logDone("session refreshed by operator")
	return statusOf(c.s), nil
}

func handleLogout(ctx context.Context, c opCall) (any, error) {
	before := c.s.cache().Status()
	if err := c.s.cache().Logout(ctx); err != nil {
		return nil, c.logFailed("operator logout failed", opFailure(c.s, "logout", err))
	}
	c.s.logger().Info("session logged out by operator", zap.String("session", c.s.name), zap.String("via", c.via),
		zap.String("sub", before.Subject), zap.String("sid", before.SessionID))
	return statusOf(c.s), nil
}

// handleLogin logs the session in with its configured credentials (the
// automatic login's), and turns automatic login back on: the way back
// after an operator's logout of a client_credentials session.
func handleLogin(ctx context.Context, c opCall) (any, error) {
	if !c.s.settings().hasLogin() {
		return nil, badRequest("session %q has no login in its configuration; log in with: %s", c.s.name, loginHint(c.s))
	}
	if err := c.s.cache().Login(ctx, c.s.autoLogin); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, "configured_login", err))
	}
	c.logDone("session logged in by operator", zap.String("method", "configured"))
	return statusOf(c.s), nil
}

func handleOTPStart(ctx context.Context, c opCall) (any, error) {
	var body adminapi.OTPStart
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	var id prelude.Identifier
	switch {
	case body.PhoneNumber != "" && body.EmailAddress == "":
		id = prelude.PhoneIdentifier(body.PhoneNumber)
	case body.EmailAddress != "" && body.PhoneNumber == "":
		id = prelude.EmailIdentifier(body.EmailAddress)
	default:
		return nil, badRequest(`expected exactly one of "phone_number" or "email_address"`)
	}
	login, err := c.s.settings().client.StartOTPLogin(ctx, id)
	if err != nil {
		return nil, c.logFailed("sending a one-time code failed", opFailure(c.s, "otp", err))
	}
	c.s.startOTP(login)
	c.s.logger().Info("one-time code sent", zap.String("session", c.s.name), zap.String("via", c.via), zap.String("otp_flow", login.Flow()))
	return adminapi.OTPStarted{Status: "code_sent", OTPFlow: login.Flow()}, nil
}

func handleOTPCheck(ctx context.Context, c opCall) (any, error) {
	var body adminapi.OTPCheck
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.Code == "" {
		return nil, badRequest(`expected {"code": "<the code that was sent>"}`)
	}
	p := c.s.pendingOTP()
	if p == nil {
		return nil, errorf(http.StatusConflict, adminapi.CodeNoOTPPending,
			"no one-time-code login in progress for session %q (none started, or it expired); start one: caddy inject-token login %s --email <address>",
			c.s.name, c.s.name)
	}
	// The code is checked inside the login: the current flow signs the
	// check with the new session's key. A wrong code leaves the login
	// pending for another try.
	if err := c.s.cache().Login(ctx, checkedLogin(p.login.Login(body.Code))); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, "otp_check", err))
	}
	c.s.finishOTP(p)
	c.logDone("session logged in by operator", zap.String("method", "otp"), zap.String("otp_flow", p.login.Flow()))
	return statusOf(c.s), nil
}

// handleRefreshToken starts an oauth2 refresh_token session from a refresh
// token obtained elsewhere: the first refresh spends it, and the rotated
// ones are kept like any other session's.
func handleRefreshToken(ctx context.Context, c opCall) (any, error) {
	var body adminapi.RefreshTokenLogin
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.RefreshToken == "" {
		return nil, badRequest(`expected {"refresh_token": "..."}`)
	}
	if err := c.s.cache().Login(ctx, checkedLogin(c.s.settings().oauth.LoginWithRefreshToken(body.RefreshToken))); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, "refresh_token_login", err))
	}
	c.logDone("session logged in by operator", zap.String("method", "refresh_token"))
	return statusOf(c.s), nil
}

func handlePassword(ctx context.Context, c opCall) (any, error) {
	var body adminapi.PasswordLogin
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.Email == "" || body.Password == "" {
		return nil, badRequest(`expected {"email": "...", "password": "..."}`)
	}
	if err := c.s.cache().Login(ctx, checkedLogin(prelude.PasswordLogin(c.s.settings().client, body.Email, body.Password))); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, "password_login", err))
	}
	c.logDone("session logged in by operator", zap.String("method", "password"))
	return statusOf(c.s), nil
}

func handleList(ctx context.Context, c opCall) (any, error) {
	q := c.r.URL.Query()
	limit, err := queryInt(q.Get("limit"), "limit")
	if err != nil {
		return nil, err
	}
	offset, err := queryInt(q.Get("offset"), "offset")
	if err != nil {
		return nil, err
	}
	var list *prelude.SessionList
	var sid string
	err = withToken(ctx, c.s, func(tok *tokencache.Token) (err error) {
		sid = tok.SessionID
		list, err = c.s.settings().client.ListSessions(ctx, tok.Value, limit, offset)
		return err
	})
	if err != nil {
		return nil, opFailure(c.s, "list", err)
	}
	out := adminapi.DeviceList{Sessions: make([]adminapi.Device, 0, len(list.Sessions)),
		Total: list.Total, Limit: list.Limit, Offset: list.Offset}
	for _, si := range list.Sessions {
		out.Sessions = append(out.Sessions, adminapi.Device{
			ID: si.ID, DeviceType: si.DeviceType, DeviceModel: si.DeviceModel, OSVersion: si.OSVersion,
			CountryCode: si.CountryCode, CreatedAt: stamp(si.CreatedAt), LastSeenAt: stamp(si.LastSeenAt),
			ExpiresAt: stamp(si.ExpiresAt), Current: si.ID != "" && si.ID == sid,
		})
	}
	return out, nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func queryInt(v, name string) (int, error) {
	if v == "" {
		return prelude.Unset, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badRequest("%s must be a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func handleRevoke(ctx context.Context, c opCall) (any, error) {
	var body adminapi.Revoke
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	switch body.Target {
	case adminapi.TargetAll, adminapi.TargetOthers, adminapi.TargetMine:
		if body.SessionID != "" {
			return nil, badRequest(`"session_id" is only allowed with "target": "session"`)
		}
	case adminapi.TargetSession:
		if body.SessionID == "" {
			return nil, badRequest(`"target": "session" needs "session_id"`)
		}
	default:
		return nil, badRequest(`expected "target" to be one of all, others, mine or session`)
	}
	var ours bool
	err := withToken(ctx, c.s, func(tok *tokencache.Token) error {
		ours = body.Target == adminapi.TargetAll || body.Target == adminapi.TargetMine ||
			(body.Target == adminapi.TargetSession && body.SessionID == tok.SessionID)
		return c.s.settings().client.RevokeSessions(ctx, tok.Value, body.Target, body.SessionID)
	})
	if err != nil {
		return nil, c.logFailed("operator revoke failed", opFailure(c.s, "revoke", err))
	}
	c.logDone("sessions revoked by operator", zap.String("target", body.Target),
		zap.String("revoked_sid", body.SessionID), zap.Bool("own_session", ours))
	if ours {
		reason := "own session revoked by an operator (target=" + body.Target + ")"
		if err := c.s.cache().Forget(ctx, reason); err != nil {
			return nil, opFailure(c.s, "clearing local state after revocation", err)
		}
	}
	return adminapi.RevokeResult{Target: body.Target, LocalCleared: ours}, nil
}

// withToken runs call with the session's access token; if Prelude rejects
// the token (401), it is invalidated and call runs once more with a fresh
// one.
func withToken(ctx context.Context, s *session, call func(tok *tokencache.Token) error) error {
	c := s.cache()
	tok, err := c.Token(ctx)
	if err != nil {
		return err
	}
	err = call(tok)
	var pe *prelude.Error
	if !errors.As(err, &pe) || pe.Status != http.StatusUnauthorized {
		return err
	}
	c.Invalidate(tok.Value)
	fresh, terr := c.Token(ctx)
	if terr != nil || fresh.Value == tok.Value {
		return err
	}
	return call(fresh)
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
	var pe *prelude.Error
	if errors.As(err, &pe) {
		return backendFailure{status: pe.Status, code: pe.Code, words: firstNonEmpty(pe.Message, pe.Error()),
			refused: pe.Kind == prelude.KindDead || pe.Kind == prelude.KindCredentials || pe.Kind == prelude.KindCaller, transient: pe.Kind == prelude.KindTransient,
			unknown: pe.Kind == prelude.KindUnknownOutcome, retry: pe.RetryDelay}, true
	}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		return backendFailure{status: oe.Status, code: oe.Code, words: firstNonEmpty(oe.Description, oe.Error()),
			refused:   oe.Kind == oauth.KindDead || oe.Kind == oauth.KindConfig || oe.Kind == oauth.KindRejected,
			transient: oe.Kind == oauth.KindTransient, unknown: oe.Kind == oauth.KindUnknownOutcome, retry: oe.RetryDelay}, true
	}
	if errors.Is(err, errBadToken) {
		// The server answered 200 with a token that cannot be sent.
		return backendFailure{status: http.StatusOK, words: errBadToken.Error()}, true
	}
	return backendFailure{}, false
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
	case set.backend() == "oauth2":
		return "caddy inject-token login " + s.name + " --refresh-token"
	}
	return "caddy inject-token login " + s.name + " --email <address>"
}

// nextStep says what the operator can do after a refusal of op.
func nextStep(s *session, op string) string {
	switch op {
	case "password_login":
		return "check the email address and password"
	case "otp":
		return "check the email address or phone number"
	case "otp_check":
		return "check the code, or send a new one: caddy inject-token login " + s.name + " --email <address>"
	case "refresh_token_login":
		return "obtain a new refresh token, then: caddy inject-token login " + s.name + " --refresh-token"
	case "configured_login":
		return "check the credentials in the configuration, then: caddy inject-token login " + s.name
	}
	if s.cache().Status().State == tokencache.StateLoggedOut {
		return "the session has ended; log in again: " + loginHint(s)
	}
	return ""
}

// opFailure turns an operation's failure into the API's answer. The rules
// are the same for every backend (the README's status table):
//
//	409 logged_out       the session has no login; the message names the command
//	422 <server's code>  the token server refused the request
//	502 backend_error    the token server's answer was unusable or lost
//	503 <code>           the token server asked to retry later, or the
//	                     session has no token now (Retry-After)
//	500 internal         anything else (storage)
func opFailure(s *session, op string, err error) error {
	var oe *opError
	if errors.As(err, &oe) {
		return oe
	}
	backend := s.settings().backend()
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
			retry: retryHint(s, ue.State, ue.RetryAfter)}
	}
	return &opError{status: http.StatusInternalServerError, code: adminapi.CodeInternal,
		msg: fmt.Sprintf("%s failed: %v", opNoun(op), err)}
}

// opNoun names an operation in error texts.
func opNoun(op string) string {
	switch op {
	case "otp":
		return "one-time code request"
	case "otp_check":
		return "one-time code"
	case "password_login", "refresh_token_login", "configured_login":
		return "login"
	}
	return op
}

// retryHint is the Retry-After for a session without a token: the
// engine's backoff while retrying can help, operatorRetryAfter while only
// an operator can change the state.
func retryHint(s *session, state string, engine time.Duration) time.Duration {
	if state == tokencache.StateLoggedOut && !s.cache().Status().AutoLogin || state == "login_failed" {
		return operatorRetryAfter
	}
	return max(engine, time.Second)
}

// decodeBody strictly decodes a JSON object of at most 64 KiB into v.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		return badRequest("reading body: %v", err)
	}
	if len(data) > maxAdminBody {
		return errorf(http.StatusRequestEntityTooLarge, adminapi.CodeTooLarge, "body larger than %d bytes", maxAdminBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("invalid JSON body (expected %s): %v", describeFields(v), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("invalid JSON body: trailing data after the object")
	}
	return nil
}

// describeFields shows the JSON object v accepts, for error messages,
// from its type alone: v may hold partly decoded secrets.
func describeFields(v any) string {
	t := reflect.TypeOf(v).Elem()
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names = append(names, strconv.Quote(name)+": …")
	}
	return "{" + strings.Join(names, ", ") + "}"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Interface guards
var (
	_ caddy.AdminRouter = adminAPI{}
)
