package injecttoken

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults.
const (
	// DefaultSession is the session name used when none is configured.
	DefaultSession = "default"
	// DefaultRefreshBefore is how long before expiry a token is refreshed.
	DefaultRefreshBefore = 60 * time.Second
)

// Handler injects the access token of a logged-in session (Prelude, or any
// OAuth 2.0 server) into every request it handles. Put it in front of
// reverse_proxy, and give that reverse_proxy "transport inject_token": the
// transport presents the token as each attempt leaves (Bearer, or DPoP
// with a proof signed for the request exactly as the upstream receives it)
// and, when the upstream rejects the token, fetches a fresh one and retries
// once. Without the transport a Bearer token is set here and a rejection
// only makes the next request use a fresh token; a DPoP-bound token is then
// refused with 502, never sent unsigned.
//
// Before anything else it refuses requests a browser marks as cross-site
// (403; see AllowBrowserOrigins) and TRACE (405), and removes the client's
// own Authorization and DPoP headers (and any listed in strip_headers),
// also as trailers and from the Connection header, so a client can never
// choose, drop or see the credentials sent upstream. The token comes from a cache that is
// refreshed in the background ahead of expiry; reading it takes no lock.
// When there is no valid token (logged out, or refreshing has failed past
// expiry) the request is not forwarded: the answer is 503 with Retry-After
// and a JSON body {"error", "session", "state"}, or, if the server has
// error routes (handle_errors), an error with status 503 for them to shape.
//
// Sessions are shared by name: handlers (in any site, and across config
// reloads) naming the same session share one token, and Caddy instances
// sharing storage share one session. A reload does not log out or refresh.
//
// With template (see TemplateSessions) the handler serves one session per
// user instead: each request's session is found by its key and made at run
// time; a request without a key is refused with 401.
//
// The session can be inspected and managed through the admin API under
// /inject_token/ (status, refresh, login, logout, Prelude session listing
// and revocation).
//
// This handler sets these placeholders:
//
// Placeholder | Description
// ------------|-------------
// `{http.inject_token.session}` | The session name (with a template, the template's)
// `{http.inject_token.template}` | With a template: the template's name
// `{http.inject_token.key}` | With a template: the request's session key (its user)
// `{http.inject_token.sub}` | The token's subject (user ID)
// `{http.inject_token.sid}` | The token's Prelude session ID
// `{http.inject_token.state}` | The session state (`active` or `logged_out`)
type Handler struct {
	// Session names the session: its key in storage and in the admin API.
	// Lowercase letters, digits, '.', '_' and '-' (no ".."), at most 64.
	// Default: "default".
	Session string `json:"session,omitempty"`

	// Prelude is the base URL of the Prelude Auth frontend API, e.g.
	// "https://acme.session.prelude.dev": absolute http or https, without
	// query or fragment. Global placeholders such as {env.PRELUDE_URL}
	// are resolved when the config is loaded. Exactly one of Prelude and
	// OAuth2 is required.
	Prelude string `json:"prelude,omitempty"`

	// Login, when set, logs the session in automatically: at first start
	// and whenever the session ends (revoked, expired), except after an
	// operator's logout through the admin API. Without it the session is
	// logged in through the admin API.
	Login *Login `json:"login,omitempty"`

	// RefreshBefore is how long before expiry the token is refreshed.
	// A token is never refreshed before half its lifetime. Default: 60s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`

	// StripHeaders are more client request headers to remove before the
	// request goes on (Authorization and DPoP always are).
	StripHeaders []string `json:"strip_headers,omitempty"`

	// OAuth2 gets tokens from any OAuth 2.0 authorization server instead
	// of Prelude. Exactly one of Prelude and OAuth2 is set.
	OAuth2 *OAuth2 `json:"oauth2,omitempty"`

	// TokenExchange gets tokens by RFC 8693 token exchange of a subject
	// token from a file or from each request. Exactly one of Prelude,
	// OAuth2 and TokenExchange is set.
	TokenExchange *TokenExchange `json:"token_exchange,omitempty"`

	// DPoP is the DPoP key type: "ES256" (default), "EdDSA", or "off"
	// (oauth2 only: plain Bearer tokens). A DPoP-bound token (token_type
	// DPoP) needs "transport inject_token" in reverse_proxy, which signs a
	// proof for each request as the upstream receives it.
	DPoP string `json:"dpop,omitempty"`

	// DPoPKey is where the session's one DPoP key lives when it must never
	// be in a file: a module in the inject_token.dpop_keys namespace (such
	// as pkcs11, built in with xcaddy --with …/pkcs11) that provides a
	// tokencache.KeySource. Without it a key is generated at each login
	// and kept in storage.
	DPoPKey json.RawMessage `json:"dpop_key,omitempty" caddy:"namespace=inject_token.dpop_keys inline_key=source"`

	// AllowBrowserOrigins are the browser origins (e.g.
	// "https://app.example.com", or "*" for any) allowed to send requests
	// that a browser marks as cross-site. Anything that can make a request
	// to the gateway acts as the session's user, so by default a request
	// with "Sec-Fetch-Site: cross-site" or "same-site", or with an Origin
	// whose host is not the request's Host, is refused with 403. Clients
	// that send neither header (anything but a browser) are never affected.
	AllowBrowserOrigins []string `json:"allow_browser_origins,omitempty"`

	// Sealing seals this session's storage; without a seal_key here, the
	// inject_token app's (global option) applies.
	Sealing

	// TemplateSessions, with template set, serves one session per user,
	// made at run time, instead of one named session.
	TemplateSessions

	// PerUser, with a template, makes the gateway log each browser user
	// in itself (login pages, cookie, identity headers, the user's page).
	PerUser *PerUser `json:"per_user,omitempty"`

	allowAll bool
	allowed  map[string]bool // lowercased origins
	// placeholders provides {http.inject_token.*} on demand, so a
	// request that uses none costs nothing for them.
	placeholders func(string) (any, bool)
	auth         *authHeader
	injected     prometheus.Counter // requests_total{session, injected}
	sess         *session
	tmpl         *runtimeTemplate // with a template; sess is then tmpl.shared
	keyOf        requestKey       // with a template: the request's session key
	perSubject   *perSubject      // per-request subjects of token_exchange, or nil
	perUser      *peruser.Gateway
	perUserSets  []string // headers the gateway sets upstream (identity headers, Cookie)
	acquired     bool
	owner        configID
	logger       *zap.Logger
}

// Login configures automatic login.
type Login struct {
	// Method is the login method; only "password" is supported.
	Method string `json:"method"`

	// Email is the account's email address. Placeholders such as
	// {env.SVC_EMAIL} are resolved when the config is loaded.
	Email string `json:"email,omitempty"`

	// Password is the account's password. Use a placeholder such as
	// {env.SVC_PASSWORD} or {file./run/secrets/pw}: it is resolved when
	// the config is loaded and kept only in memory, whereas a literal (or
	// a Caddyfile {$VAR}) ends up in the JSON config.
	Password string `json:"password,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.inject_token",
		New: func() caddy.Module { return new(Handler) },
	}
}

var sessionNameRE = regexp.MustCompile(`^[a-z0-9_.-]{1,64}$`)

// validSessionName reports whether name can be a session name: 1-64
// lowercase letters, digits, '.', '_' or '-', without "..". Storage keys
// are sanitised by lowercasing and dropping "..", so "Api" and "api" (or
// "a..b" and "ab") would otherwise share one stored session.
func validSessionName(name string) bool {
	return sessionNameRE.MatchString(name) && !strings.Contains(name, "..")
}

// sessionNameHint says what validSessionName accepts, for error messages.
const sessionNameHint = "use 1-64 lowercase letters, digits, '.', '_' or '-' (no '..')"

// Provision resolves placeholders, validates the configuration and binds
// the handler to its session, creating it from storage if needed. It does
// no network I/O.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.TemplateSessions.check(h.Session, h.Login != nil, h.PerUser != nil); err != nil {
		return err
	}
	if h.Session == "" && h.Template == "" {
		h.Session = DefaultSession
	}
	if h.Template == "" && !validSessionName(h.Session) {
		return fmt.Errorf("invalid session name %q: %s", h.Session, sessionNameHint)
	}
	if h.RefreshBefore < 0 {
		return fmt.Errorf("refresh_before must not be negative")
	}
	if h.RefreshBefore == 0 {
		h.RefreshBefore = caddy.Duration(DefaultRefreshBefore)
	}
	if o := h.OAuth2; o != nil && o.ClientKeySource != nil {
		mod, err := ctx.LoadModule(o, "ClientKeySource")
		if err != nil {
			return fmt.Errorf("oauth2 client_key_source: %w", err)
		}
		src, ok := mod.(interface{ Signer() crypto.Signer })
		if !ok {
			return fmt.Errorf("oauth2 client_key_source: module %T gives no signer", mod)
		}
		o.clientSigner = src.Signer()
	}
	set, err := h.resolve()
	if err != nil {
		return err
	}
	h.warnLiteralSecrets()
	if h.DPoPKey != nil {
		if h.DPoP == "off" {
			return errors.New("dpop_key: the session has dpop off")
		}
		mod, err := ctx.LoadModule(h, "DPoPKey")
		if err != nil {
			return fmt.Errorf("dpop_key: %w", err)
		}
		src, ok := mod.(tokencache.KeySource)
		if !ok {
			return fmt.Errorf("dpop_key: module %T is not a key source", mod)
		}
		set.keySource = src
	}
	if err := h.provisionOrigins(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		h.logger.Warn("metrics unavailable", zap.Error(err))
	}
	// Loading the app makes Caddy start it with this config, which starts
	// the background refresher; validation never starts apps.
	app, err := ctx.App("inject_token")
	if err != nil {
		return err
	}
	if set.sealer, err = h.Sealing.sealer(ctx, caddy.NewReplacer(), app.(*App).sealer); err != nil {
		return err
	}
	h.auth = new(authHeader)
	if h.Template != "" {
		if err := h.provisionTemplate(ctx, set); err != nil || h.PerUser == nil {
			return err
		}
		return h.provisionPerUser(ctx, set)
	}
	s, err := acquireSession(ctx, h.Session, set, h.logger)
	if err != nil {
		return err
	}
	h.sess, h.acquired, h.owner = s, true, configOf(ctx)
	h.perSubject = perSubjectOf(set)
	// Resolved once: a label lookup per request is measurable on the hot path.
	h.injected = requestsTotal.WithLabelValues(h.Session, resultInjected)
	h.placeholders = func(key string) (any, bool) {
		switch key {
		case "http.inject_token.session":
			return h.Session, true
		case "http.inject_token.state":
			return s.cache().Status().State, true
		case "http.inject_token.sub", "http.inject_token.sid":
			// Lazily, from the token in force: most requests never ask.
			tok, err := s.cache().Token(context.Background())
			if err != nil {
				return "", true
			}
			if key == "http.inject_token.sub" {
				return tok.Subject, true
			}
			return tok.SessionID, true
		}
		return nil, false
	}
	return nil
}

// resolve turns the configuration into settings, resolving global
// placeholders ({env.*}, {file.*}). Errors never quote resolved values.
func (h *Handler) resolve() (*settings, error) {
	repl := caddy.NewReplacer()
	if n := btoi(h.Prelude != "") + btoi(h.OAuth2 != nil) + btoi(h.TokenExchange != nil); n != 1 {
		return nil, errors.New("exactly one of prelude, oauth2 and token_exchange must be configured")
	}
	set := &settings{refreshBefore: time.Duration(h.RefreshBefore)}
	switch h.DPoP {
	case "", string(dpop.ES256), string(dpop.EdDSA):
		set.dpopAlg = dpop.Algorithm(h.DPoP)
	case "off":
		if h.Prelude != "" {
			return nil, errors.New("dpop off: Prelude always binds its sessions to a DPoP key")
		}
	default:
		return nil, fmt.Errorf("dpop: unsupported value %q (want ES256, EdDSA or off)", h.DPoP)
	}
	if h.OAuth2 != nil {
		if h.Login != nil {
			return nil, errors.New("login password is for the prelude backend; oauth2 logs in with its grant")
		}
		return set, h.OAuth2.resolve(repl, set, h.DPoP != "off")
	}
	if h.TokenExchange != nil {
		if h.Login != nil {
			return nil, errors.New("login password is for the prelude backend")
		}
		return set, h.TokenExchange.resolve(repl, set, h.DPoP != "off")
	}
	base, err := repl.ReplaceOrErr(h.Prelude, true, true)
	if err != nil {
		return nil, fmt.Errorf("prelude: %v", err)
	}
	if err := checkBaseURL(base); err != nil {
		return nil, fmt.Errorf("prelude %q: %v", h.Prelude, err)
	}
	ps := prelude.Settings{URL: base}
	if h.Login != nil {
		if h.Login.Method != "password" {
			return nil, fmt.Errorf("login: unsupported method %q (want \"password\")", h.Login.Method)
		}
		if ps.Email, err = repl.ReplaceOrErr(h.Login.Email, true, true); err != nil {
			return nil, fmt.Errorf("login email: %v", err)
		}
		if ps.Password, err = repl.ReplaceOrErr(h.Login.Password, true, true); err != nil {
			return nil, fmt.Errorf("login password: %v", err)
		}
	}
	return set, set.open(prelude.BackendName, base, ps, tokencache.Env{Nonces: asNonces()})
}

// checkBaseURL accepts absolute http(s) URLs without query, fragment or
// user info. Its errors never quote s, which may be a resolved placeholder:
// callers quote the configured text.
func checkBaseURL(s string) error {
	if s == "" {
		return errors.New("a base URL is required")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil && !strings.Contains(s, "://"), err == nil && u.Host == "" && u.Opaque != "":
		return errors.New("base URL has no scheme: write http:// or https:// before the host")
	case err != nil:
		return errors.New("base URL does not parse")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("base URL must start with http:// or https://")
	case u.Host == "":
		return errors.New("base URL has no host")
	case u.User != nil:
		return errors.New("base URL must not contain user info")
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("base URL must not have a query")
	case u.Fragment != "" || u.RawFragment != "":
		return errors.New("base URL must not have a fragment")
	}
	return nil
}

// Cleanup releases the session; the last config using it stops its
// refresher.
func (h *Handler) Cleanup() error {
	if h.perUser != nil {
		h.perUser.Close()
		h.perUser = nil
	}
	if h.acquired {
		h.acquired = false
		if h.tmpl != nil {
			releaseTemplate(h.tmpl, h.owner)
		} else {
			releaseSession(h.sess, h.owner)
		}
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.perUser != nil && caddyhttp.GetVar(r.Context(), perUserVar) == nil {
		return h.servePerUser(w, r, next)
	}
	if why := h.crossSite(r); why != "" && (h.perUser == nil || !navigation(r)) {
		return h.forbidden(w, why)
	}
	if r.Method == http.MethodTrace {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errTrace)
	}
	var subject, key string
	if h.perSubject != nil {
		subject = h.perSubject.take(r)
	}
	if h.keyOf != nil {
		// Before stripping: the key may come from a header stripped.
		var err error
		if key, err = h.keyOf(r); err != nil || key == "" {
			return h.noUser(w, r, err)
		}
	}
	stripClientCredentials(r.Header, h.StripHeaders)
	stripTrailers(r, h.StripHeaders)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if h.tmpl != nil {
		repl.Map(h.templatePlaceholders(key))
	} else {
		repl.Map(h.placeholders)
	}
	if h.perSubject != nil {
		return h.perSubject.serve(subject, w, r, next)
	}

	var c *credential
	var tok *tokencache.Token
	var err error
	if h.tmpl != nil {
		c, tok, err = h.templateCredential(r, key)
	} else {
		c = &credential{sess: h.sess, name: h.Session}
		tok, err = h.sess.cache().Token(r.Context())
	}
	if err != nil {
		return h.unavailable(w, r, err, key)
	}
	caddyhttp.SetVar(r.Context(), credVar, c)
	if !isDPoP(tok) {
		// For a reverse_proxy without the transport; the transport
		// replaces it with the token current when each attempt leaves.
		presentBearer(r.Header, tok, h.auth)
	} else if liveTransports.Load() == 0 {
		h.logger.Error("DPoP-bound token but no 'transport inject_token' in any reverse_proxy; refusing to forward",
			zap.String("session", h.name()))
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("session %q has a DPoP-bound token: "+
			"reverse_proxy needs 'transport inject_token' to sign proofs", h.name()))
	}
	h.injected.Inc()

	c.w.ResponseWriter = w
	err = next.ServeHTTP(&c.w, r)
	if !c.presented.Load() {
		h.presentedHere(r, c, tok)
	}
	return err
}

// presentedHere learns from the answer to a request that no transport
// presented: a Bearer token set here and answered 401 is invalidated, so
// the next request gets a fresh one (there is no retry: the request has
// been through the rest of the chain). A DPoP-bound token was not sent at
// all, so its 401 says nothing about the token.
func (h *Handler) presentedHere(r *http.Request, c *credential, tok *tokencache.Token) {
	if isDPoP(tok) {
		h.logger.Error("DPoP-bound token was not presented: the reverse_proxy that handled this request "+
			"has no 'transport inject_token'", zap.String("session", h.name()), zap.String("uri", r.RequestURI))
		return
	}
	if c.w.status == http.StatusUnauthorized {
		c.rejected(tok, h.logger)
	}
}

// unavailableBody is the JSON answer when there is no token.
type unavailableBody struct {
	Error   string `json:"error"`
	Session string `json:"session"`
	State   string `json:"state"`
}

// unavailable answers a request for which no valid token exists: 503 with
// Retry-After, through the server's error routes if it has any.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, err error, key string) error {
	name := h.name()
	countRequest(name, resultUnavailable)
	tc := h.sessionCache(key)
	var state string
	retry := time.Second
	var ue *tokencache.UnavailableError
	switch {
	case errors.As(err, &ue):
		state, retry = ue.State, ue.RetryAfter
	case tc != nil:
		state = tc.Status().State
	default:
		state = "unavailable"
	}
	retry = retryHint(tc, state, retry)
	secs := max(int64((retry+time.Second-1)/time.Second), 1)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	if c := h.logger.Check(zapcore.DebugLevel, "no valid token; not forwarding"); c != nil {
		c.Write(zap.String("session", name), zap.String("state", state), zap.Error(err))
	}
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(unavailableBody{
		Error:   fmt.Sprintf("no valid access token for session %q", name),
		Session: name,
		State:   state,
	})
	return nil
}

// name is the session's name, or the template's: what metrics and logs
// call it (never a user's key).
func (h *Handler) name() string {
	if h.tmpl != nil {
		return h.Template
	}
	return h.Session
}

// sessionCache is the cache of the request's session (key: a template's
// run-time session), nil if it cannot be had.
func (h *Handler) sessionCache(key string) *tokencache.Cache {
	if h.tmpl == nil {
		return h.sess.cache()
	}
	c, err := h.tmpl.runtime().Session(key)
	if err != nil {
		return nil
	}
	return c
}

// literalWarned holds the session and field of every literal secret
// warned about, so that a reload does not repeat the warning.
var literalWarned sync.Map

// warnLiteralSecrets warns, once per session and field, of a password or
// client secret written into the configuration itself: Caddy keeps it in
// its /config/ API and in autosave.json. A placeholder is resolved at load
// time and kept out of both.
func (h *Handler) warnLiteralSecrets() {
	warn := func(field, value, env string) {
		if value == "" || strings.Contains(value, "{") && strings.Contains(value, "}") {
			return
		}
		if _, done := literalWarned.LoadOrStore(h.name()+" "+field, true); done {
			return
		}
		h.logger.Warn("literal secret in the configuration: Caddy shows it in /config/ and autosave.json; use a placeholder",
			zap.String("session", h.name()), zap.String("field", field),
			zap.String("instead", "{env."+env+"} or {file./run/secrets/"+strings.ToLower(env)+"}"))
	}
	if h.Login != nil {
		warn("login password", h.Login.Password, "INJECT_TOKEN_PASSWORD")
	}
	if o := h.OAuth2; o != nil {
		warn("oauth2 client_secret", o.ClientSecret, "INJECT_TOKEN_CLIENT_SECRET")
		warn("oauth2 client_key", o.ClientKey, "INJECT_TOKEN_CLIENT_KEY")
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
