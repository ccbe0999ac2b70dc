package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

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
	adminapi.RouteTimeline:     {http.MethodGet, handleTimeline, ""},
}

// dispatch runs the operation path (below the mount: "/sessions/...")
// names. It is the one implementation behind both the admin API and the
// dashboard.
func dispatch(r *http.Request, path, via string) (any, error) {
	if path == "/templates" || strings.HasPrefix(path, "/templates/") {
		return dispatchTemplates(r, path, via)
	}
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
	if b := s.settings().backendName; o.backend != "" && o.backend != b {
		return nil, errorf(http.StatusBadRequest, adminapi.CodeWrongBackend,
			"session %q uses the %s backend; %s is only for %s sessions", s.name, b, sub, o.backend)
	}
	// Calls to the token server on the session's behalf carry its device
	// id (X-Device-Id at Prelude), as the engine's own calls do.
	return o.handle(s.cache().WithDeviceID(r.Context()), opCall{s: s, r: r, via: via})
}

// statusOf is a session's status on the wire: every field present.
func statusOf(s *session) adminapi.Status {
	set := s.settings()
	out := adminapi.Status{Backend: set.backendName, BaseURL: set.baseURL, ConfiguredLogin: set.hasLogin(),
		OTPPending: s.pendingOTP() != nil, OTPFlow: s.lastOTPFlow(), Engine: s.cache().Status()}
	out.Session = s.name
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
