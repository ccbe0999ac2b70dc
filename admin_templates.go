package injecttoken

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The admin routes of templates (sessions made at run time), below
// /inject_token/templates; see adminapi.TemplatePath. A session's key is
// one path segment, path-escaped: keys are emails and ids, and may hold
// '/'.

// Listing pages.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// maxPendingOTP bounds the OTP logins of one template waiting for their
// code (each is forgotten after otpLifetime anyway).
const maxPendingOTP = 1000

// templateSessionOps are the operations on one run-time session that work
// as for a named session (sessionOps): logging in (which makes the
// session first), refresh and logout.
var templateSessionOps = map[string]bool{
	adminapi.RouteLogin: true, adminapi.RouteOTPStart: true, adminapi.RouteOTPCheck: true,
	adminapi.RoutePassword: true, adminapi.RouteRefreshToken: true,
	adminapi.RouteRefresh: true, adminapi.RouteLogout: true,
}

// dispatchTemplates answers a request below /templates; path is the
// request's path below the mount, decoded.
func dispatchTemplates(r *http.Request, path, via string) (any, error) {
	segs, err := templateSegments(r, path)
	if err != nil {
		return nil, err
	}
	notFound := errorf(http.StatusNotFound, adminapi.CodeNotFound, "not found: %s", r.URL.Path)
	if len(segs) == 0 {
		if r.Method != http.MethodGet {
			return nil, methodNotAllowed(r, http.MethodGet)
		}
		out := adminapi.TemplateList{Templates: []adminapi.Template{}}
		for _, t := range allTemplates() {
			out.Templates = append(out.Templates, templateOf(t))
		}
		return out, nil
	}
	t, ok := lookupTemplate(segs[0])
	if !ok {
		return nil, errorf(http.StatusNotFound, adminapi.CodeUnknownSession, "unknown template %q", segs[0])
	}
	rt := t.runtime()
	ctx := r.Context()
	switch {
	case len(segs) == 1:
		if r.Method != http.MethodGet {
			return nil, methodNotAllowed(r, http.MethodGet)
		}
		return templateOf(t), nil
	case len(segs) == 2 && "/"+segs[1] == adminapi.RouteRevokeAll:
		if r.Method != http.MethodPost {
			return nil, methodNotAllowed(r, http.MethodPost)
		}
		n, err := rt.RevokeAll(ctx)
		if err != nil {
			return nil, templateFailure(t, "revoking all sessions", err)
		}
		t.logger().Info("every session of the template revoked by operator", zap.String("template", t.name),
			zap.String("via", via), zap.Int("revoked", n))
		return adminapi.RevokeAllResult{Template: t.name, Revoked: n}, nil
	case segs[1] != "sessions":
		return nil, notFound
	case len(segs) == 2:
		if r.Method != http.MethodGet {
			return nil, methodNotAllowed(r, http.MethodGet)
		}
		return listTemplateSessions(ctx, r, t)
	}
	key, sub := segs[2], ""
	if len(segs) > 3 {
		sub = "/" + strings.Join(segs[3:], "/")
	}
	if key == "" {
		return nil, badRequest("empty session key")
	}
	switch {
	case sub == "" && r.Method == http.MethodGet:
		info, found, err := rt.Lookup(ctx, key)
		if err != nil {
			return nil, templateFailure(t, "looking up a session", err)
		}
		if !found {
			return nil, errorf(http.StatusNotFound, adminapi.CodeUnknownSession, "template %q has no session of that key", t.name)
		}
		return runtimeSessionOf(info), nil
	case sub == "" && r.Method == http.MethodDelete:
		if err := rt.Revoke(ctx, key); err != nil {
			return nil, templateFailure(t, "revoking a session", err)
		}
		t.logger().Info("run-time session revoked by operator", zap.String("template", t.name), zap.String("via", via))
		return adminapi.EraseResult{Template: t.name, Key: key, Done: "revoked"}, nil
	case sub == "":
		return nil, methodNotAllowed(r, "GET, DELETE")
	case sub == adminapi.RouteErase:
		if r.Method != http.MethodPost {
			return nil, methodNotAllowed(r, http.MethodPost)
		}
		if err := rt.Erase(ctx, key); err != nil {
			return nil, templateFailure(t, "erasing a session", err)
		}
		t.forgetOTP(key)
		t.logger().Info("run-time session erased by operator", zap.String("template", t.name), zap.String("via", via))
		return adminapi.EraseResult{Template: t.name, Key: key, Done: "erased"}, nil
	case !templateSessionOps[sub]:
		return nil, notFound
	}
	o := sessionOps[sub]
	if r.Method != o.method {
		return nil, methodNotAllowed(r, o.method)
	}
	if b := t.shared.settings().backendName; o.backend != "" && o.backend != b {
		return nil, errorf(http.StatusBadRequest, adminapi.CodeWrongBackend,
			"template %q uses the %s backend; %s is only for %s sessions", t.name, b, sub, o.backend)
	}
	s, err := t.opSession(key)
	if err != nil {
		return nil, templateFailure(t, "loading the session", err)
	}
	defer t.keepOTP(key, s)
	return o.handle(s.cache().WithDeviceID(ctx), opCall{s: s, r: r, via: via})
}

// templateSegments splits the path below /templates into its unescaped
// segments. The escaped form is split, so a key holding '/' (sent as
// %2F) stays one segment.
func templateSegments(r *http.Request, path string) ([]string, error) {
	rest := strings.TrimPrefix(path, "/templates")
	if esc, mount := r.URL.EscapedPath(), strings.TrimSuffix(r.URL.Path, path); strings.HasPrefix(esc, mount+"/templates") {
		rest = strings.TrimPrefix(esc, mount+"/templates")
	}
	rest = strings.TrimPrefix(rest, "/")
	if rest == "" {
		return nil, nil
	}
	segs := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	for i, s := range segs {
		v, err := url.PathUnescape(s)
		if err != nil {
			return nil, badRequest("path segment %d is not properly escaped", i+1)
		}
		segs[i] = v
	}
	return segs, nil
}

// listTemplateSessions answers one page of a template's sessions.
func listTemplateSessions(ctx context.Context, r *http.Request, t *runtimeTemplate) (any, error) {
	q := r.URL.Query()
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > maxPageSize {
			return nil, badRequest("limit must be a whole number from 1 to %d, got %q", maxPageSize, v)
		}
		limit = n
	}
	infos, next, err := t.runtime().List(ctx, q.Get("cursor"), limit)
	if err != nil {
		return nil, templateFailure(t, "listing sessions", err)
	}
	out := adminapi.RuntimeSessionList{Sessions: make([]adminapi.RuntimeSession, 0, len(infos)), Next: next}
	for _, info := range infos {
		out.Sessions = append(out.Sessions, runtimeSessionOf(info))
	}
	return out, nil
}

// templateOf is a template on the wire.
func templateOf(t *runtimeTemplate) adminapi.Template {
	set := t.shared.settings()
	rt := t.runtime()
	counts := rt.Counts()
	if counts == nil {
		counts = map[string]int{}
	}
	return adminapi.Template{Name: t.name, Resident: rt.Resident(), Counts: counts,
		Backend: set.backendName, BaseURL: set.baseURL}
}

// runtimeSessionOf is a run-time session on the wire.
func runtimeSessionOf(info tokencache.SessionInfo) adminapi.RuntimeSession {
	at := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return adminapi.RuntimeSession{Key: info.Key, State: info.State, Sub: info.Sub,
		CreatedAt: at(info.Created), LastUsed: at(info.LastUsed), ExpiresAt: at(info.Expires)}
}

// templateFailure is the answer to a template operation that failed: the
// token server's answer classified as for a named session when there was
// one, else a storage failure (500).
func templateFailure(t *runtimeTemplate, what string, err error) error {
	if errors.Is(err, tokencache.ErrUnknownSession) {
		return errorf(http.StatusNotFound, adminapi.CodeUnknownSession, "template %q has no session of that key", t.name)
	}
	if bf, ok := asBackendFailure(err); ok {
		return errorf(http.StatusBadGateway, adminapi.CodeBackendError, "template %q: %s failed at the token server %s: %s",
			t.name, what, bf.where(t.shared.settings().backendName), bf.words)
	}
	return errorf(http.StatusInternalServerError, adminapi.CodeInternal, "template %q: %s failed: %v", t.name, what, err)
}

// opSession is a session value through which the named-session operations
// (admin_ops.go) work on key's run-time session: its cache is the
// Runtime's, its settings the template's. A pending OTP login keeps its
// value until the code is checked (keepOTP).
func (t *runtimeTemplate) opSession(key string) (*session, error) {
	tc, err := t.runtime().Session(key)
	if err != nil {
		return nil, err
	}
	t.shared.mu.Lock()
	bindings := t.shared.bindings
	t.shared.mu.Unlock()
	t.mu.Lock()
	s := t.otps[key]
	t.mu.Unlock()
	if s == nil {
		s = &session{name: t.name + "/" + key}
	}
	s.tc.Store(tc)
	s.set.Store(t.shared.settings())
	s.mu.Lock()
	s.bindings = bindings
	s.mu.Unlock()
	return s, nil
}

// keepOTP remembers s while an OTP login of key waits for its code, and
// forgets it otherwise.
func (t *runtimeTemplate) keepOTP(key string, s *session) {
	pending := s.pendingOTP() != nil
	t.mu.Lock()
	defer t.mu.Unlock()
	if !pending {
		delete(t.otps, key)
		return
	}
	if t.otps == nil {
		t.otps = map[string]*session{}
	}
	if _, ok := t.otps[key]; !ok && len(t.otps) >= maxPendingOTP {
		for k, o := range t.otps {
			if o.pendingOTP() == nil {
				delete(t.otps, k)
			}
		}
		if len(t.otps) >= maxPendingOTP {
			return // the code of this one cannot be checked: a new start will tell
		}
	}
	t.otps[key] = s
}

// forgetOTP drops key's pending OTP login (the session was erased).
func (t *runtimeTemplate) forgetOTP(key string) {
	t.mu.Lock()
	delete(t.otps, key)
	t.mu.Unlock()
}
