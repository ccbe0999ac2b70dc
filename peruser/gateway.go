package peruser

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Sessions is what the gateway needs of the users' run-time sessions;
// *tokencache.Runtime implements it.
type Sessions interface {
	// Token returns a valid token of key's session.
	Token(ctx context.Context, key string) (*tokencache.Token, error)
	// Adopt makes g, obtained by a login the gateway ran with DPoP key k,
	// key's session.
	Adopt(ctx context.Context, key string, k *dpop.Key, g *tokencache.Grant) error
	// Session returns key's session (for Logout and Forget).
	Session(key string) (*tokencache.Cache, error)
}

// Header is one identity header the upstream receives.
type Header struct {
	// Name is the request header, e.g. X-Forwarded-User.
	Name string
	// Claim is the verified claim it carries: sub, email, phone, name, or
	// (with KeyFrom) key.
	Claim string
}

// Claims a Header may name.
var knownClaims = map[string]bool{"sub": true, "email": true, "phone": true, "name": true, "key": true}

// Config configures a Gateway.
type Config struct {
	// Template names the template, in storage paths and metrics.
	Template string
	// Sessions holds the users' sessions. Required.
	Sessions Sessions
	// Storage keeps cookie records and OAuth logins in progress; give it a
	// seal.Storage sealing inject_token/. Required.
	Storage certmagic.Storage
	// Sealer seals the cookie's id (the seal_key). Required: without it a
	// cookie would be a bare id.
	Sealer *seal.Sealer
	// Secret keys the HMACs naming records in storage and the CSRF tokens
	// (≥ 16 bytes; the template's secret). Required.
	Secret []byte

	// Prelude, when set, offers the Prelude logins: password and one-time
	// code by email or phone.
	Prelude *prelude.Client
	// OAuth, when set, offers the OAuth 2.0 authorization code login.
	OAuth AuthCode
	// KeyAlgorithm is the DPoP key type of new logins (default ES256).
	KeyAlgorithm dpop.Algorithm

	// Prefix is the path under which the gateway serves its own pages
	// (default /.inject_token): Prefix/login, Prefix/ (the user's page),
	// Prefix/logout, …
	Prefix string
	// IdleTimeout ends a cookie not used for this long (default 8h);
	// MaxLifetime ends any cookie this long after its login (default 7
	// days).
	IdleTimeout, MaxLifetime time.Duration
	// Headers are the identity headers sent upstream. Client-sent copies
	// are always removed.
	Headers []Header

	// KeyFrom, when set, gives the user's id from the request (another
	// handler authenticated the user); the login page then only links
	// that user's upstream account, and no cookie is set.
	KeyFrom func(*http.Request) string
	// Secure reports whether the browser reached the site over TLS
	// (directly or through a trusted proxy). Default: r.TLS != nil. Over
	// plain http the cookie is set only for loopback hosts.
	Secure func(*http.Request) bool
	// ClientAddr is the client's address for throttling (default the
	// connection's remote IP).
	ClientAddr func(*http.Request) string

	// AccountLimit failed logins per AccountWindow for one account from
	// one client address (default 5 per 5m), and AccountCeiling for one
	// account from all addresses together (default 10 × AccountLimit): a
	// stranger's wrong passwords lock the owner's own address out only
	// once the ceiling is reached. One-time codes sent to an account are
	// counted apart, AccountLimit per AccountWindow, so asking for codes
	// never blocks a password. AddressLimit login attempts per
	// AddressWindow from one client address (default 30 per 1m; an IPv6
	// client's address is its /64).
	AccountLimit, AccountCeiling, AddressLimit int
	AccountWindow, AddressWindow               time.Duration
	// OnThrottle is called for every refused login, with "account" or
	// "address" (the metric).
	OnThrottle func(by string)

	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *zap.Logger
}

// Gateway serves the per-user pages and identifies the user of every other
// request.
type Gateway struct {
	cfg       Config
	prefix    string
	byAddress *limiter // login attempts per client address
	byAccount *limiter // failed logins per (account, client address)
	byCeil    *limiter // failed logins per account
	bySends   *limiter // one-time codes sent per account

	mu    sync.Mutex
	flows map[string]*otpFlow // one-time-code logins waiting for their code

	stop chan struct{}
	done chan struct{}
}

// New checks cfg and returns a Gateway. Close it to stop its sweeper.
func New(cfg Config) (*Gateway, error) {
	switch {
	case cfg.Sessions == nil || cfg.Storage == nil:
		return nil, errors.New("peruser: Sessions and Storage are required")
	case cfg.Sealer == nil:
		return nil, errors.New("peruser: a seal key is required: the cookie's id is sealed with it")
	case len(cfg.Secret) < 16:
		return nil, errors.New("peruser: Secret must be at least 16 bytes")
	case cfg.Prelude == nil && cfg.OAuth == nil:
		return nil, errors.New("peruser: no login method (Prelude or OAuth)")
	case cfg.Template == "":
		return nil, errors.New("peruser: Template is required")
	}
	for _, h := range cfg.Headers {
		if !knownClaims[h.Claim] {
			return nil, fmt.Errorf("peruser: identity header %s: unknown claim %q (want sub, email, phone, name or key)", h.Name, h.Claim)
		}
		if h.Claim == "key" && cfg.KeyFrom == nil {
			return nil, fmt.Errorf("peruser: identity header %s: claim key needs a key placeholder", h.Name)
		}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/.inject_token"
	}
	if !strings.HasPrefix(cfg.Prefix, "/") || strings.HasSuffix(cfg.Prefix, "/") || strings.ContainsAny(cfg.Prefix, "?#\\") {
		return nil, fmt.Errorf("peruser: path %q must start with / and not end with one", cfg.Prefix)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	def(&cfg.IdleTimeout, 8*time.Hour)
	def(&cfg.MaxLifetime, 7*24*time.Hour)
	def(&cfg.AccountWindow, 5*time.Minute)
	def(&cfg.AddressWindow, time.Minute)
	defInt(&cfg.AccountLimit, 5)
	defInt(&cfg.AddressLimit, 30)
	defInt(&cfg.AccountCeiling, 10*cfg.AccountLimit)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Secure == nil {
		cfg.Secure = func(r *http.Request) bool { return r.TLS != nil }
	}
	if cfg.ClientAddr == nil {
		cfg.ClientAddr = func(r *http.Request) string {
			host, _, err := net.SplitHostPort(r.RemoteAddr)
			if err != nil {
				return r.RemoteAddr
			}
			return host
		}
	}
	if cfg.KeyAlgorithm == "" {
		cfg.KeyAlgorithm = dpop.ES256
	}
	g := &Gateway{
		cfg: cfg, prefix: cfg.Prefix,
		byAddress: newLimiter(cfg.AddressLimit, cfg.AddressWindow),
		byAccount: newLimiter(cfg.AccountLimit, cfg.AccountWindow),
		byCeil:    newLimiter(cfg.AccountCeiling, cfg.AccountWindow),
		bySends:   newLimiter(cfg.AccountLimit, cfg.AccountWindow),
		flows:     map[string]*otpFlow{},
		stop:      make(chan struct{}), done: make(chan struct{}),
	}
	go g.sweeper()
	return g, nil
}

// Close stops the sweeper of expired records.
func (g *Gateway) Close() {
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	<-g.done
}

// User is the identified user of a request.
type User struct {
	// Key is the user's session key (the user's id).
	Key string
	// Token is the session's valid token, for the caller to present.
	Token *tokencache.Token
}

// Next is what handles an identified user's request (the rest of the
// route: the proxy to the legacy app).
type Next func(w http.ResponseWriter, r *http.Request, u *User) error

// Serve serves the gateway's own pages, and passes every other request of
// an identified user to next with that user's identity headers set and
// client-sent copies removed. An unidentified browser is redirected (303)
// to the login page; any other client gets 401 with a JSON body naming the
// login page.
func (g *Gateway) Serve(w http.ResponseWriter, r *http.Request, next Next) error {
	for _, h := range g.cfg.Headers {
		r.Header.Del(h.Name)
	}
	if p := r.URL.Path; p == g.prefix || strings.HasPrefix(p, g.prefix+"/") {
		g.page(w, r, strings.TrimPrefix(p, g.prefix))
		return nil
	}
	id, err := g.identify(w, r)
	if err != nil {
		if errors.Is(err, errLoggedOut) {
			g.loginRequired(w, r)
			return nil
		}
		return g.unavailable(w, r, err)
	}
	for _, h := range g.cfg.Headers {
		if v := id.claims[h.Claim]; v != "" {
			r.Header.Set(h.Name, v)
		}
	}
	g.stripOwnCookies(r)
	return next(w, r, &User{Key: id.key, Token: id.tok})
}

// errLoggedOut: the request has no user, or the user's session has ended.
var errLoggedOut = errors.New("logged out")

// identity is who a request is from.
type identity struct {
	key    string
	claims map[string]string
	tok    *tokencache.Token
	cookie string // the cookie's id (mode 1), for the CSRF token
	sid    string // the upstream session the cookie's login made
	jkt    string // the DPoP key thumbprint of the session it made
}

// identify finds the request's user and that user's token. A user whose
// session has ended is logged out: the cookie record is deleted. When the
// session has no valid token just now, the error comes with the identity
// found (without a token).
func (g *Gateway) identify(w http.ResponseWriter, r *http.Request) (*identity, error) {
	var id *identity
	if g.cfg.KeyFrom != nil {
		key := g.cfg.KeyFrom(r)
		if key == "" {
			return nil, errLoggedOut
		}
		id = &identity{key: key, claims: map[string]string{"key": key}}
	} else {
		cid, rec := g.readCookie(r)
		if rec == nil {
			return nil, errLoggedOut
		}
		id = &identity{key: rec.Key, claims: rec.Claims, cookie: cid, sid: rec.SID, jkt: rec.JKT}
		if id.claims == nil {
			id.claims = map[string]string{}
		}
		id.claims["sub"] = rec.Key
	}
	tok, err := g.cfg.Sessions.Token(r.Context(), id.key)
	if err != nil {
		if loggedOut(err) {
			if id.cookie != "" {
				g.deleteRecord(r.Context(), id.cookie)
				g.clearCookie(w, r)
			}
			return nil, errLoggedOut
		}
		return id, err // who, without a token just now
	}
	if id.madeOther(tok) {
		// The user logged in again since (elsewhere): the session this
		// cookie's login made has been replaced, or has ended and another
		// been made.
		g.deleteRecord(r.Context(), id.cookie)
		g.clearCookie(w, r)
		return nil, errLoggedOut
	}
	id.tok = tok
	if g.cfg.KeyFrom != nil && tok.Subject != "" {
		id.claims["sub"] = tok.Subject
	}
	return id, nil
}

// madeOther reports whether tok is of a session other than the one the
// cookie's login made: another upstream session id, or another DPoP key
// (which every login makes anew, tokens with a sid or not).
func (id *identity) madeOther(tok *tokencache.Token) bool {
	return id.sid != "" && tok.SessionID != "" && tok.SessionID != id.sid ||
		id.jkt != "" && (tok.Key == nil || tok.Key.Thumbprint() != id.jkt)
}

// keyThumbprint is the DPoP key thumbprint of the session the request's
// login made: the cookie's, or that of the token found for it.
func (id *identity) keyThumbprint() string {
	if id.jkt == "" && id.tok != nil && id.tok.Key != nil {
		return id.tok.Key.Thumbprint()
	}
	return id.jkt
}

// loggedOut reports whether a Token error means the session has ended (as
// opposed to a token server that cannot be reached just now).
func loggedOut(err error) bool {
	if errors.Is(err, tokencache.ErrLoggedOut) {
		return true
	}
	var ue *tokencache.UnavailableError
	return errors.As(err, &ue) && ue.State == tokencache.StateLoggedOut
}

// wantsHTML: a browser navigating, as opposed to an API client.
func wantsHTML(r *http.Request) bool {
	return strings.Contains(strings.ToLower(strings.Join(r.Header.Values("Accept"), ",")), "text/html")
}

// loginRequired sends a browser to the login page, coming back to where it
// was going; other clients get 401 with the login page's path.
func (g *Gateway) loginRequired(w http.ResponseWriter, r *http.Request) {
	login := g.prefix + "/login"
	if wantsHTML(r) {
		if back := r.URL.RequestURI(); (r.Method == http.MethodGet || r.Method == http.MethodHead) && safeReturn(back) {
			login += "?return=" + url.QueryEscape(back)
		}
		noStore(w)
		http.Redirect(w, r, login, http.StatusSeeOther)
		return
	}
	noStore(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("WWW-Authenticate", `Cookie realm="`+g.cfg.Template+`"`)
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": "login required", "login": login})
}

// unavailable answers a user whose session exists but has no valid token
// just now (the token server cannot be reached).
func (g *Gateway) unavailable(w http.ResponseWriter, r *http.Request, err error) error {
	retry := time.Second
	var ue *tokencache.UnavailableError
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		retry = ue.RetryAfter
	}
	g.cfg.Logger.Warn("per-user session has no valid token", zap.String("template", g.cfg.Template), zap.Error(err))
	noStore(w)
	w.Header().Set("Retry-After", strconv.FormatInt(max(int64((retry+time.Second-1)/time.Second), 1), 10))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	return json.NewEncoder(w).Encode(map[string]string{"error": "no valid access token for this user just now; try again"})
}

// mac is the keyed hash naming stored things and CSRF tokens: label keeps
// the uses apart.
func (g *Gateway) mac(label, v string) []byte {
	m := hmac.New(sha256.New, g.cfg.Secret)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write([]byte(v))
	return m.Sum(nil)
}

func (g *Gateway) storageKey(kind, v string) string {
	return tokencache.StoragePrefix + "/" + certmagic.StorageKeys.Safe(g.cfg.Template) + "/peruser/" + kind + "/" +
		hex.EncodeToString(g.mac(kind, v)[:16])
}

func noStore(w http.ResponseWriter) { w.Header().Set("Cache-Control", "no-store") }

// Interface guards
var _ Sessions = (*tokencache.Runtime)(nil)
