package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TemplateSessions makes the handler serve sessions made at run time, one
// per user, instead of one named session: each request's session is found
// by its key (the user's id), and made on first use under the template
// (see docs/runtime-sessions.md). The backend, dpop, dpop_key,
// refresh_before and seal_key settings of the handler are the template's,
// for every one of its sessions.
type TemplateSessions struct {
	// Template names the template: its sessions are stored under
	// inject_token/<template>/ and managed under
	// /inject_token/templates/<template>/ in the admin API. Same syntax as
	// a session name, and not the name of a session. Excludes Session.
	Template string `json:"template,omitempty"`

	// Key says where a request's session key comes from: placeholders
	// resolved with the request's replacer, e.g.
	// "{http.request.header.X-User}" behind a trusted front proxy that
	// sets that header (and removes a client's own). A request for which
	// any placeholder of Key is empty or unknown is refused with 401: it
	// is never served by a shared session. Required with Template (but
	// for per_user, whose login gives the key). All handlers of a config
	// binding one template must take the key from the same source (one
	// namespace of user ids): a config binding it with two is refused.
	Key string `json:"key,omitempty"`

	// MaxResident bounds how many of the template's sessions are held in
	// memory; beyond it the least recently used idle one is dropped from
	// memory (it stays in storage). Default: 10000.
	MaxResident int `json:"max_resident,omitempty"`

	// IdleTimeout drops a session from memory once it has not been used
	// for this long (it stays in storage). Default: 30m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// Retention deletes a session not used for this long: revoked at its
	// server first, then erased from storage. Default: kept forever.
	Retention caddy.Duration `json:"retention,omitempty"`

	// UseWindow: a session is refreshed ahead of expiry only if it was
	// used within this window before its refresh time; otherwise at its
	// next use. Default: 10m.
	UseWindow caddy.Duration `json:"use_window,omitempty"`

	// MaxRefreshing bounds how many of the template's sessions the
	// scheduler refreshes at once (a refresh a request waits for is never
	// held back). Default: 32.
	MaxRefreshing int `json:"max_refreshing,omitempty"`
}

// maxKeyLen bounds a run-time session key: longer is refused like none.
const maxKeyLen = 512

// requestKey finds the run-time session key of a request. An error means
// the request has no user: it is answered 401, never served by a shared
// session. The key subdirective gives one (placeholderKey); a gateway
// login of its own can give another.
type requestKey func(r *http.Request) (string, error)

// placeholderKey is the requestKey of the key subdirective: tmpl resolved
// with the request's replacer, every placeholder in it required to be
// known and non-empty (so "tenant-{header}" cannot collapse to one shared
// "tenant-" key).
func placeholderKey(tmpl string) requestKey {
	if name, ok := strings.CutPrefix(tmpl, "{http.request.header."); ok && strings.HasSuffix(name, "}") &&
		!strings.ContainsAny(name[:len(name)-1], "{}") {
		// The common case, one header, read without the replacer's
		// parsing: as the placeholder does, values joined with ",".
		name = name[:len(name)-1]
		return func(r *http.Request) (string, error) {
			key := strings.Join(r.Header.Values(name), ",") // one value: no copy
			if key == "" {
				return "", fmt.Errorf("header %s is empty or missing", name)
			}
			if len(key) > maxKeyLen {
				return "", fmt.Errorf("key longer than %d bytes", maxKeyLen)
			}
			return key, nil
		}
	}
	return func(r *http.Request) (string, error) {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return "", errors.New("no replacer")
		}
		key, err := repl.ReplaceOrErr(tmpl, true, true)
		if err != nil {
			return "", err
		}
		if len(key) > maxKeyLen {
			return "", fmt.Errorf("key longer than %d bytes", maxKeyLen)
		}
		return key, nil
	}
}

// unmarshalTemplate reads one of the template subdirectives; the
// dispenser is on it. It reports false for other names.
func (ts *TemplateSessions) unmarshalTemplate(d *caddyfile.Dispenser) (bool, error) {
	sub := d.Val()
	one := func(example string) (string, error) {
		var v string
		if !d.AllArgs(&v) {
			return "", d.Errf("%s: expected exactly one value, e.g. '%s %s'", sub, sub, example)
		}
		return v, nil
	}
	count := func(dst *int) error {
		v, err := one("1000")
		if err != nil {
			return err
		}
		n, err := parsePositive(v)
		if err != nil {
			return d.Errf("%s: expected a positive whole number, got '%s'", sub, v)
		}
		*dst = n
		return nil
	}
	dur := func(dst *caddy.Duration) error {
		v, err := one("10m")
		if err != nil {
			return err
		}
		t, err := caddy.ParseDuration(v)
		if err != nil || t <= 0 {
			return d.Errf("%s: expected a positive duration such as 10m or 720h, got '%s'", sub, v)
		}
		*dst = caddy.Duration(t)
		return nil
	}
	switch sub {
	case "template":
		v, err := one("users")
		if err != nil {
			return true, err
		}
		if !validSessionName(v) {
			return true, d.Errf("invalid template name '%s': %s", v, sessionNameHint)
		}
		ts.Template = v
		return true, nil
	case "key":
		v, err := one("{http.request.header.X-User}")
		if err != nil {
			return true, err
		}
		if !strings.Contains(v, "{") {
			return true, d.Errf("key: '%s' has no placeholder, so every request would share one session; "+
				"expected a placeholder such as {http.request.header.X-User}", v)
		}
		ts.Key = v
		return true, nil
	case "max_resident":
		return true, count(&ts.MaxResident)
	case "max_refreshing":
		return true, count(&ts.MaxRefreshing)
	case "idle_timeout":
		return true, dur(&ts.IdleTimeout)
	case "retention":
		return true, dur(&ts.Retention)
	case "use_window":
		return true, dur(&ts.UseWindow)
	}
	return false, nil
}

func parsePositive(v string) (int, error) {
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil || n <= 0 || fmt.Sprint(n) != v {
		return 0, errors.New("not a positive number")
	}
	return n, nil
}

// templateOptions are the subdirectives that only make sense with a
// template, for the error naming the first one given without it.
func (ts *TemplateSessions) templateOption() string {
	switch {
	case ts.Key != "":
		return "key"
	case ts.MaxResident != 0:
		return "max_resident"
	case ts.IdleTimeout != 0:
		return "idle_timeout"
	case ts.Retention != 0:
		return "retention"
	case ts.UseWindow != 0:
		return "use_window"
	case ts.MaxRefreshing != 0:
		return "max_refreshing"
	}
	return ""
}

// check validates the template settings against the handler's session
// (the session name configured, "" if none) and automatic login; it is
// shared by the Caddyfile and JSON paths, so both refuse alike.
func (ts *TemplateSessions) check(session string, login, perUser bool) error {
	if ts.Template == "" {
		if perUser {
			return errors.New("per_user needs 'template <name>': each user gets a session of the template")
		}
		if opt := ts.templateOption(); opt != "" {
			return fmt.Errorf("%s is a template option: add 'template <name>'", opt)
		}
		return nil
	}
	switch {
	case !validSessionName(ts.Template):
		return fmt.Errorf("invalid template name %q: %s", ts.Template, sessionNameHint)
	case session != "":
		return errors.New("session and template cannot be combined: a handler serves one named session, or a template's sessions made at run time")
	case ts.Key == "" && !perUser:
		return errors.New("template needs 'key <placeholder>', e.g. 'key {http.request.header.X-User}': where each request's session key comes from")
	case ts.Key != "" && !strings.Contains(ts.Key, "{"):
		return fmt.Errorf("key %q has no placeholder, so every request would share one session", ts.Key)
	case login:
		return errors.New("login password is for a named session; a template's sessions log in one by one (admin API: POST /inject_token/templates/<template>/sessions/<key>/login/password)")
	case ts.MaxResident < 0 || ts.MaxRefreshing < 0 || ts.IdleTimeout < 0 || ts.Retention < 0 || ts.UseWindow < 0:
		return errors.New("max_resident, max_refreshing, idle_timeout, retention and use_window must not be negative")
	}
	return nil
}

// templates holds one *runtimeTemplate per template name: like sessions,
// it lives at package level so that a template's Runtime (its resident
// sessions and scheduler) survives config reloads.
var templates = caddy.NewUsagePool()

// runtimeTemplate is the pooled state of one template: its Runtime and
// what every one of its sessions shares.
type runtimeTemplate struct {
	name string
	// shared holds what the template's sessions share: the settings in
	// force (read at call time by its Backend, Login and KeySource, so a
	// reload swaps them without touching a session), the resource
	// servers' DPoP nonces and clock offsets, and the upstream-401 budget.
	// It has no cache of its own.
	shared *session
	rt     atomic.Pointer[tokencache.Runtime]

	mu       sync.Mutex // guards the fields below
	bindings []*templateBinding
	storage  *reloadStorage // what the current Runtime's storage points at
	secret   []byte         // the current Runtime's
	otps     map[string]*session
}

// templateBinding is what one live config contributes to a template.
type templateBinding struct {
	owner   configID
	refs    int
	set     *settings
	opts    TemplateSessions
	storage certmagic.Storage
	secret  []byte
	logger  *zap.Logger
}

// runtime returns the template's Runtime.
func (t *runtimeTemplate) runtime() *tokencache.Runtime { return t.rt.Load() }

// Destruct closes the Runtime once no config uses the template.
func (t *runtimeTemplate) Destruct() error {
	if rt := t.rt.Load(); rt != nil {
		rt.Close()
	}
	forgetTemplateMetrics(t.name)
	return nil
}

// lookupTemplate returns the live template called name.
func lookupTemplate(name string) (*runtimeTemplate, bool) {
	var found *runtimeTemplate
	templates.Range(func(key, val any) bool {
		if key == name {
			found = val.(*runtimeTemplate)
			return false
		}
		return true
	})
	return found, found != nil
}

// allTemplates returns every live template, sorted by name.
func allTemplates() []*runtimeTemplate {
	var all []*runtimeTemplate
	templates.Range(func(_, val any) bool {
		all = append(all, val.(*runtimeTemplate))
		return true
	})
	slices.SortFunc(all, func(a, b *runtimeTemplate) int { return strings.Compare(a.name, b.name) })
	return all
}

// acquireTemplate takes a reference on the template for the config of
// ctx: creating its Runtime if no config has it, or putting the new
// settings in force (in place when they allow it) if one does. On success
// the caller must call releaseTemplate exactly once.
func acquireTemplate(ctx caddy.Context, opts TemplateSessions, set *settings, logger *zap.Logger) (*runtimeTemplate, error) {
	name := opts.Template
	if _, clash := lookupSession(name); clash {
		return nil, fmt.Errorf("template %q has the name of a session: both would live under inject_token/%s/ in storage", name, name)
	}
	storage, err := templateStorage(ctx, set.sealer)
	if err != nil {
		return nil, err
	}
	secret, err := loadTemplateSecret(ctx, storage, name)
	if err != nil {
		return nil, fmt.Errorf("template %q: its HMAC secret: %w (check seal_key, and seal_key_previous during a rotation)", name, err)
	}
	b := &templateBinding{owner: configOf(ctx), refs: 1, set: set, opts: opts, storage: storage, secret: secret, logger: logger}
	val, loaded, err := templates.LoadOrNew(name, func() (caddy.Destructor, error) {
		t := &runtimeTemplate{name: name, shared: newSession(name), bindings: []*templateBinding{b}}
		if err := t.applyLocked(); err != nil {
			return nil, err
		}
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	t := val.(*runtimeTemplate)
	if !loaded {
		return t, nil
	}
	if err := t.bind(b); err != nil {
		_, _ = templates.Delete(name)
		return nil, err
	}
	return t, nil
}

// releaseTemplate undoes acquireTemplate for the config of owner.
func releaseTemplate(t *runtimeTemplate, owner configID) {
	t.unbind(owner)
	if _, err := templates.Delete(t.name); err != nil {
		t.logger().Error("releasing template", zap.String("template", t.name), zap.Error(err))
	}
}

// bind adds a config's binding, or counts one more handler of a config
// already bound; two handlers of one config must configure the template
// identically.
func (t *runtimeTemplate) bind(b *templateBinding) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, have := range t.bindings {
		if have.owner == b.owner {
			if have.opts.Key != b.opts.Key {
				return fmt.Errorf("template %q is bound with two key sources, %s and %s: a user id of one "+
					"could be another user's in the other, and would be served with that user's session; "+
					"give each key source its own template", t.name, keySource(have.opts.Key), keySource(b.opts.Key))
			}
			if !have.set.same(b.set) || !sameTemplateOptions(have.opts, b.opts) {
				return fmt.Errorf("template %q is configured more than once with different settings; "+
					"sites sharing a template must configure it identically", t.name)
			}
			have.refs++
			return nil
		}
	}
	t.bindings = append(t.bindings, b)
	return t.applyLocked()
}

// sameTemplateOptions compares what the Runtime is given (Key is checked
// apart, see bind; a new config may change it).
func sameTemplateOptions(a, b TemplateSessions) bool {
	a.Key, b.Key = "", ""
	return a == b
}

// keySource names where a template's session keys come from, for errors.
func keySource(key string) string {
	if key == "" {
		return "the per_user login (the verified sub)"
	}
	return "key " + key
}

// unbind drops one handler's reference to the binding of owner and, when
// the config no longer uses the template, puts the newest other binding
// back in force.
func (t *runtimeTemplate) unbind(owner configID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := slices.IndexFunc(t.bindings, func(b *templateBinding) bool { return b.owner == owner })
	if i < 0 {
		return
	}
	if t.bindings[i].refs--; t.bindings[i].refs > 0 {
		return
	}
	last := i == len(t.bindings)-1
	t.bindings = slices.Delete(t.bindings, i, i+1)
	if last && len(t.bindings) > 0 {
		if err := t.applyLocked(); err != nil {
			t.logger().Error("restoring previous template settings", zap.String("template", t.name), zap.Error(err))
		}
	}
}

// applyLocked puts the newest binding in force. With the same secret
// (the same storage) the Runtime is kept: its storage is re-pointed and
// its settings swapped in place (Runtime.Update), so a reload neither
// reloads nor re-checks a single stored session. Otherwise (another
// storage, or a refused update) a new Runtime is made and the old one
// closed. t.mu must be held (or t not yet shared).
func (t *runtimeTemplate) applyLocked() error {
	b := t.bindings[len(t.bindings)-1]
	t.shared.set.Store(b.set)
	t.shared.mu.Lock()
	t.shared.bindings = []*binding{{owner: b.owner, refs: 1, set: b.set, storage: b.storage, logger: b.logger}}
	t.shared.mu.Unlock()
	old := t.rt.Load()
	if old != nil && bytes.Equal(t.secret, b.secret) && t.storage.swap(b.storage) {
		err := old.Update(t.template(b, old))
		if err == nil {
			return nil
		}
		b.logger.Info("template settings need a new runtime; resident sessions are reloaded from storage on use",
			zap.String("template", t.name), zap.String("why", err.Error()))
	}
	st, rs := newReloadStorage(b.storage)
	tpl := t.template(b, nil)
	tpl.Storage = st
	rt, err := tokencache.NewRuntime(tpl)
	if err != nil {
		return fmt.Errorf("template %q: %w", t.name, err)
	}
	t.rt.Store(rt)
	t.storage, t.secret = rs, b.secret
	if old != nil {
		old.Close()
	}
	return nil
}

// template is the tokencache.Template of binding b; with old set, it
// keeps old's storage (re-pointed by the caller).
func (t *runtimeTemplate) template(b *templateBinding, old *tokencache.Runtime) tokencache.Template {
	s := t.shared
	tpl := tokencache.Template{
		Name:          t.name,
		Secret:        b.secret,
		Backend:       sessionBackend{s},
		RefreshBefore: b.set.refreshBefore,
		KeyAlgorithm:  b.set.dpopAlg,
		Logger:        b.logger,
		Observe:       observeRefresh(t.name),
		MaxResident:   b.opts.MaxResident,
		UseWindow:     time.Duration(b.opts.UseWindow),
		IdleTimeout:   time.Duration(b.opts.IdleTimeout),
		Retention:     time.Duration(b.opts.Retention),
		MaxRefreshing: b.opts.MaxRefreshing,
	}
	if old != nil {
		tpl.Storage = t.currentStorage()
	}
	if b.set.hasLogin() {
		tpl.Login = s.autoLogin
	}
	if b.set.keySource != nil {
		tpl.KeySource = sessionKeys{s}
	}
	return tpl
}

// currentStorage is the stable storage the current Runtime was given.
func (t *runtimeTemplate) currentStorage() certmagic.Storage {
	if _, ok := t.storage.inner().(tokencache.VersionedStorage); ok {
		return versionedReloadStorage{t.storage}
	}
	return t.storage
}

func (t *runtimeTemplate) logger() *zap.Logger { return t.shared.logger() }

// provisionTemplate binds the handler to its template (see Provision).
func (h *Handler) provisionTemplate(ctx caddy.Context, set *settings) error {
	if h.TokenExchange != nil {
		return errors.New("token_exchange cannot be a template's backend: its sessions exchange a subject token, not a user's login")
	}
	t, err := acquireTemplate(ctx, h.TemplateSessions, set, h.logger)
	if err != nil {
		return err
	}
	h.tmpl, h.sess, h.acquired, h.owner = t, t.shared, true, configOf(ctx)
	if h.keyOf == nil {
		h.keyOf = placeholderKey(h.Key)
	}
	h.injected = requestsTotal.WithLabelValues(h.Template, resultInjected)
	return nil
}

// templateCredential is ServeHTTP's part for a template: the token of the
// request's session by key, and the credential that hands it to the same
// transport path as a named session's.
func (h *Handler) templateCredential(r *http.Request, key string) (*credential, *tokencache.Token, error) {
	rt := h.tmpl.runtime()
	tok, err := rt.Token(r.Context(), key)
	if err != nil {
		return nil, nil, err
	}
	return &credential{sess: h.tmpl.shared, name: h.Template, rt: rt, key: key}, tok, nil
}

// noUserBody is the JSON answer to a request without a session key.
type noUserBody struct {
	Error    string `json:"error"`
	Template string `json:"template"`
}

// noUser answers a request whose session key could not be found: 401,
// through the server's error routes if it has any. The reason (which
// placeholder was empty) is logged at debug, not sent.
func (h *Handler) noUser(w http.ResponseWriter, r *http.Request, why error) error {
	countRequest(h.Template, resultNoUser)
	h.logger.Debug("no session key for this request; refused", zap.String("template", h.Template), zap.Error(why))
	err := fmt.Errorf("no user: the request carries no session key for template %q", h.Template)
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		return caddyhttp.Error(http.StatusUnauthorized, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusUnauthorized)
	return json.NewEncoder(w).Encode(noUserBody{Error: err.Error(), Template: h.Template})
}

// templatePlaceholders provides {http.inject_token.*} for the request of
// key: session and template are the template's name, key the request's
// session key; sub, sid and state those of its run-time session.
func (h *Handler) templatePlaceholders(key string) caddy.ReplacerFunc {
	return func(name string) (any, bool) {
		switch name {
		case "http.inject_token.session", "http.inject_token.template":
			return h.Template, true
		case "http.inject_token.key":
			return key, true
		case "http.inject_token.state":
			c, err := h.tmpl.runtime().Session(key)
			if err != nil {
				return "", true
			}
			return c.Status().State, true
		case "http.inject_token.sub", "http.inject_token.sid":
			tok, err := h.tmpl.runtime().Token(context.Background(), key)
			if err != nil {
				return "", true
			}
			if name == "http.inject_token.sub" {
				return tok.Subject, true
			}
			return tok.SessionID, true
		}
		return nil, false
	}
}

// Interface guards
var (
	_ caddy.Destructor = (*runtimeTemplate)(nil)
)

// isTemplateOption reports whether sub is one of the template
// subdirectives (each given at most once).
func isTemplateOption(sub string) bool {
	switch sub {
	case "template", "key", "max_resident", "idle_timeout", "retention", "use_window", "max_refreshing":
		return true
	}
	return false
}
