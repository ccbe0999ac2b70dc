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

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/cli"
	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

// adminAPI is the admin.api.inject_token module: routes under
// /inject_token/ to inspect and manage sessions. It reads the package-level
// session pool, so it sees every session of the running config. Like every
// admin route it has no authentication of its own; it never returns an
// access token, a refresh token or a private key.
//
//	GET  /inject_token/sessions                          all sessions' status
//	GET  /inject_token/sessions/{name}                   one session's status
//	POST /inject_token/sessions/{name}/refresh           refresh now
//	POST /inject_token/sessions/{name}/logout            revoke at Prelude, clear local state
//	POST /inject_token/sessions/{name}/login/otp         {"email_address"|"phone_number"}: send a code
//	POST /inject_token/sessions/{name}/login/otp/check   {"code"}: finish the OTP login
//	POST /inject_token/sessions/{name}/login/password    {"email","password"}
//	POST /inject_token/sessions/{name}/login/refresh-token  {"refresh_token"} (oauth2)
//	GET  /inject_token/sessions/{name}/list?limit=&offset=  the user's Prelude sessions
//	POST /inject_token/sessions/{name}/revoke            {"target","session_id"}
//
// Errors are {"error": "...", "code": "<Prelude code, if any>"}.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.inject_token",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the /inject_token/ subtree; requests are dispatched inside.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/inject_token/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// apiError is an admin API failure, written as {"error", "code"}.
type apiError struct {
	status int
	msg    string
	code   string
	allow  string // the method to use, for 405
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// adminRoute is one route below /inject_token/sessions/{name}.
type adminRoute struct {
	method  string
	handle  func(ctx context.Context, s *session, r *http.Request) (any, error)
	backend string // "" for every backend, else the only one it serves
}

// sessionRoutes maps the path after /inject_token/sessions/{name} to its
// route.
var sessionRoutes = map[string]adminRoute{
	"":                     {http.MethodGet, handleStatus, ""},
	"/refresh":             {http.MethodPost, handleRefresh, ""},
	"/logout":              {http.MethodPost, handleLogout, ""},
	"/login/otp":           {http.MethodPost, handleOTPStart, "prelude"},
	"/login/otp/check":     {http.MethodPost, handleOTPCheck, "prelude"},
	"/login/password":      {http.MethodPost, handlePassword, "prelude"},
	"/login/refresh-token": {http.MethodPost, handleRefreshToken, "oauth2"},
	"/list":                {http.MethodGet, handleList, "prelude"},
	"/revoke":              {http.MethodPost, handleRevoke, "prelude"},
}

func (adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	v, err := dispatch(r)
	if err != nil {
		writeError(w, err)
		return nil
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func dispatch(r *http.Request) (any, error) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/inject_token/sessions")
	if !ok {
		return nil, errorf(http.StatusNotFound, "not found: %s", r.URL.Path)
	}
	if rest == "" || rest == "/" {
		if r.Method != http.MethodGet {
			return nil, methodNotAllowed(r, http.MethodGet)
		}
		all := []sessionStatus{}
		for _, s := range allSessions() {
			all = append(all, statusOf(s))
		}
		return map[string]any{"sessions": all}, nil
	}
	name, sub, _ := strings.Cut(rest[1:], "/")
	if sub != "" {
		sub = "/" + sub
	}
	route, ok := sessionRoutes[sub]
	if !ok {
		return nil, errorf(http.StatusNotFound, "not found: %s", r.URL.Path)
	}
	s, ok := lookupSession(name)
	if !ok {
		return nil, errorf(http.StatusNotFound, "unknown session %q", name)
	}
	if r.Method != route.method {
		return nil, methodNotAllowed(r, route.method)
	}
	if b := s.settings().backend(); route.backend != "" && route.backend != b {
		return nil, errorf(http.StatusBadRequest, "%s is not available for session %q: it uses the %s backend, this route is for %s",
			sub, s.name, b, route.backend)
	}
	return route.handle(r.Context(), s, r)
}

func methodNotAllowed(r *http.Request, want string) error {
	e := errorf(http.StatusMethodNotAllowed, "method %s not allowed; use %s", r.Method, want)
	e.allow = want
	return e
}

// sessionStatus is a session's status as the admin API shows it; the type
// lives with the CLI, the API's client, so both sides share one contract.
type sessionStatus = cli.Status

func statusOf(s *session) sessionStatus {
	return sessionStatus{
		Status:     s.cache().Status(),
		Backend:    s.settings().backend(),
		BaseURL:    s.settings().baseURL,
		OTPPending: s.pendingOTP() != nil,
	}
}

func handleStatus(_ context.Context, s *session, _ *http.Request) (any, error) {
	return statusOf(s), nil
}

func handleRefresh(ctx context.Context, s *session, _ *http.Request) (any, error) {
	if err := s.cache().Refresh(ctx); err != nil {
		return nil, cacheError(s, "refresh", err)
	}
	return statusOf(s), nil
}

func handleLogout(ctx context.Context, s *session, _ *http.Request) (any, error) {
	if err := s.cache().Logout(ctx); err != nil {
		return nil, cacheError(s, "logout", err)
	}
	return statusOf(s), nil
}

func handleOTPStart(ctx context.Context, s *session, r *http.Request) (any, error) {
	var body struct {
		PhoneNumber  string `json:"phone_number"`
		EmailAddress string `json:"email_address"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	var id prelude.Identifier
	switch {
	case body.PhoneNumber != "" && body.EmailAddress == "":
		id = prelude.PhoneIdentifier(body.PhoneNumber)
	case body.EmailAddress != "" && body.PhoneNumber == "":
		id = prelude.EmailIdentifier(body.EmailAddress)
	default:
		return nil, errorf(http.StatusBadRequest, `expected exactly one of "phone_number" or "email_address"`)
	}
	client := s.settings().client
	vt, err := client.StartOTP(ctx, id)
	if err != nil {
		return nil, cacheError(s, "starting OTP login", err)
	}
	s.startOTP(vt, client)
	return map[string]string{"status": "code_sent"}, nil
}

func handleOTPCheck(ctx context.Context, s *session, r *http.Request) (any, error) {
	var body struct {
		Code string `json:"code"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.Code == "" {
		return nil, errorf(http.StatusBadRequest, `expected {"code": "<the code that was sent>"}`)
	}
	p := s.pendingOTP()
	if p == nil {
		return nil, errorf(http.StatusConflict, "no OTP login in progress for session %q (or it expired); start one with POST /inject_token/sessions/%s/login/otp", s.name, s.name)
	}
	challenge, err := p.client.CheckOTP(ctx, p.verificationToken, body.Code)
	if err != nil {
		return nil, cacheError(s, "checking OTP code", err)
	}
	s.finishOTP(p)
	err = s.cache().Login(ctx, checkedLogin(func(ctx context.Context, key *dpop.Key, prev string) (*tokencache.Grant, error) {
		t, err := p.client.Finalize(ctx, key, challenge, prev)
		if err != nil {
			return nil, err
		}
		return t.Grant(), nil
	}))
	if err != nil {
		return nil, cacheError(s, "login", err)
	}
	return statusOf(s), nil
}

// handleRefreshToken starts an oauth2 refresh_token session from a refresh
// token obtained elsewhere: the first refresh spends it, and the rotated
// ones are kept like any other session's.
func handleRefreshToken(ctx context.Context, s *session, r *http.Request) (any, error) {
	var body struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.RefreshToken == "" {
		return nil, errorf(http.StatusBadRequest, `expected {"refresh_token": "..."}`)
	}
	if err := s.cache().Login(ctx, checkedLogin(s.settings().oauth.LoginWithRefreshToken(body.RefreshToken))); err != nil {
		return nil, cacheError(s, "login", err)
	}
	return statusOf(s), nil
}

func handlePassword(ctx context.Context, s *session, r *http.Request) (any, error) {
	var body struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.Email == "" || body.Password == "" {
		return nil, errorf(http.StatusBadRequest, `expected {"email": "...", "password": "..."}`)
	}
	if err := s.cache().Login(ctx, checkedLogin(prelude.PasswordLogin(s.settings().client, body.Email, body.Password))); err != nil {
		return nil, cacheError(s, "login", err)
	}
	return statusOf(s), nil
}

// listedSession is one Prelude session, marked when it is ours.
type listedSession struct {
	prelude.SessionInfo
	Current bool `json:"current"`
}

func handleList(ctx context.Context, s *session, r *http.Request) (any, error) {
	q := r.URL.Query()
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
	err = withToken(ctx, s, func(tok *tokencache.Token) (err error) {
		sid = tok.SessionID
		list, err = s.settings().client.ListSessions(ctx, tok.Value, limit, offset)
		return err
	})
	if err != nil {
		return nil, cacheError(s, "listing sessions", err)
	}
	out := make([]listedSession, 0, len(list.Sessions))
	for _, si := range list.Sessions {
		out = append(out, listedSession{SessionInfo: si, Current: si.ID != "" && si.ID == sid})
	}
	return map[string]any{"sessions": out, "total": list.Total, "limit": list.Limit, "offset": list.Offset}, nil
}

func queryInt(v, name string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, errorf(http.StatusBadRequest, "%s must be a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func handleRevoke(ctx context.Context, s *session, r *http.Request) (any, error) {
	var body struct {
		Target    string `json:"target"`
		SessionID string `json:"session_id"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	switch body.Target {
	case prelude.TargetAll, prelude.TargetOthers, prelude.TargetMine:
		if body.SessionID != "" {
			return nil, errorf(http.StatusBadRequest, `"session_id" is only allowed with "target": "session"`)
		}
	case prelude.TargetSession:
		if body.SessionID == "" {
			return nil, errorf(http.StatusBadRequest, `"target": "session" needs "session_id"`)
		}
	default:
		return nil, errorf(http.StatusBadRequest, `expected "target" to be one of all, others, mine or session`)
	}
	var ours bool
	err := withToken(ctx, s, func(tok *tokencache.Token) error {
		ours = body.Target == prelude.TargetAll || body.Target == prelude.TargetMine ||
			(body.Target == prelude.TargetSession && body.SessionID == tok.SessionID)
		return s.settings().client.RevokeSessions(ctx, tok.Value, body.Target, body.SessionID)
	})
	if err != nil {
		return nil, cacheError(s, "revoking sessions", err)
	}
	if ours {
		reason := "own session revoked through the admin API (target=" + body.Target + ")"
		if err := s.cache().Forget(ctx, reason); err != nil {
			return nil, cacheError(s, "clearing local state after revocation", err)
		}
	}
	return map[string]any{"target": body.Target, "local_cleared": ours}, nil
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

// cacheError turns a failure into an API error: Prelude errors keep their
// status and code; a session without a token is a conflict (logged out) or
// unavailable (refresh failing).
func cacheError(s *session, op string, err error) error {
	var pe *prelude.Error
	if errors.As(err, &pe) {
		status := pe.Status
		if status < 400 || status > 599 {
			status = http.StatusBadGateway
		}
		return &apiError{status: status, msg: fmt.Sprintf("%s: %v", op, err), code: pe.Code}
	}
	var ue *tokencache.UnavailableError
	switch {
	case errors.Is(err, tokencache.ErrLoggedOut) || (errors.As(err, &ue) && ue.State == tokencache.StateLoggedOut):
		return errorf(http.StatusConflict, "%s: session %q is logged out; log in first (POST /inject_token/sessions/%s/login/...)", op, s.name, s.name)
	case errors.As(err, &ue):
		return errorf(http.StatusServiceUnavailable, "%s: session %q has no valid access token right now: %v", op, s.name, ue.Err)
	}
	return errorf(http.StatusServiceUnavailable, "%s: %v", op, err)
}

// decodeBody strictly decodes a JSON object of at most 64 KiB into v.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		return errorf(http.StatusBadRequest, "reading body: %v", err)
	}
	if len(data) > maxAdminBody {
		return errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", maxAdminBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "invalid JSON body (expected %s): %v", describeFields(v), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errorf(http.StatusBadRequest, "invalid JSON body: trailing data after the object")
	}
	return nil
}

// describeFields shows the JSON object v accepts, for error messages. It
// marshals a zero value: v may hold partly decoded secrets.
func describeFields(v any) string {
	b, _ := json.Marshal(reflect.New(reflect.TypeOf(v).Elem()).Interface())
	return string(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	ae, ok := err.(*apiError)
	if !ok {
		ae = &apiError{status: http.StatusInternalServerError, msg: err.Error()}
	}
	if ae.allow != "" {
		w.Header().Set("Allow", ae.allow)
	}
	body := map[string]string{"error": ae.msg}
	if ae.code != "" {
		body["code"] = ae.code
	}
	writeJSON(w, ae.status, body)
}

// Interface guards
var (
	_ caddy.AdminRouter = adminAPI{}
)
