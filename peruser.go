package injecttoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// PerUser makes a template's handler serve a legacy app's users in a
// browser: unidentified browsers are sent to the gateway's own login page,
// each user's tokens stay in the gateway (a run-time session of the
// template, keyed by the user's id) and the browser holds only a sealed
// cookie (see docs/per-user.md). With the template's key placeholder set,
// another handler identifies the user and the login page only links that
// user's upstream account. Requires seal_key.
type PerUser struct {
	// Path is where the gateway serves its own pages: Path/login, Path/
	// (the user's page: who am I, devices, log out), Path/logout, …
	// Default: /.inject_token.
	Path string `json:"path,omitempty"`

	// IdleTimeout ends a login not used for this long. Default: 8h.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// MaxLifetime ends any login this long after it was made. Default:
	// 168h (7 days).
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// IdentityHeaders are request headers the upstream receives with the
	// user's verified claims (sub, email, phone, name; key with a key
	// placeholder). A client's own copies are always removed.
	IdentityHeaders []IdentityHeader `json:"identity_headers,omitempty"`

	// ThrottleAccount bounds failed logins per account from one client
	// address (default 5 per 5m; ten times as many per account from all
	// addresses; as many codes sent per account); ThrottleAddress login
	// attempts per client address (default 30 per 1m). Refusals are
	// counted by caddy_inject_token_login_throttled_total. See
	// docs/per-user.md, Throttling.
	ThrottleAccount *Throttle `json:"throttle_account,omitempty"`
	ThrottleAddress *Throttle `json:"throttle_address,omitempty"`
}

// IdentityHeader is one identity header: Header carries Claim.
type IdentityHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}

// Throttle is at most Max events per Window.
type Throttle struct {
	Max    int            `json:"max"`
	Window caddy.Duration `json:"window"`
}

// perUserVar is the request variable carrying the user's session key from
// the per-user gateway to the template's lookup.
const perUserVar = "inject_token.per_user_key"

// provisionPerUser starts the handler's per-user gateway (after its
// template is bound).
func (h *Handler) provisionPerUser(ctx caddy.Context, set *settings) error {
	p := h.PerUser
	switch {
	case h.tmpl == nil:
		return errors.New("per_user needs 'template <name>': each user gets a session of the template")
	case set.sealer == nil:
		return errors.New("per_user requires seal_key (the same on every instance sharing the storage): " +
			"the login cookie's id and the stored records are sealed with it")
	}
	cfg := peruser.Config{
		Template: h.Template, Sessions: templateUsers{h.tmpl}, Sealer: set.sealer,
		KeyAlgorithm: set.dpopAlg, Prefix: p.Path, Logger: h.logger,
		IdleTimeout: time.Duration(p.IdleTimeout), MaxLifetime: time.Duration(p.MaxLifetime),
		Secure: viaTLS, ClientAddr: clientAddr,
	}
	var err error
	if cfg.Storage, err = templateStorage(ctx, set.sealer); err != nil {
		return err
	}
	h.tmpl.mu.Lock()
	cfg.Secret = h.tmpl.secret
	h.tmpl.mu.Unlock()
	switch b := set.backend.(type) {
	case prelude.Backend:
		cfg.Prelude = b.Client
	case oauth.AuthCodeFlow:
		cfg.OAuth = authCodeLogin{b.AuthCode()}
	default:
		return errors.New("per_user: the template's backend offers no login for users: " +
			"use prelude, or oauth2 with 'grant authorization_code' and 'redirect_uri <site>" + pagePath(p.Path) + "/callback'")
	}
	h.perUserSets = []string{"Cookie"}
	for _, ih := range p.IdentityHeaders {
		cfg.Headers = append(cfg.Headers, peruser.Header{Name: ih.Header, Claim: ih.Claim})
		h.perUserSets = append(h.perUserSets, ih.Header)
	}
	if t := p.ThrottleAccount; t != nil {
		cfg.AccountLimit, cfg.AccountWindow = t.Max, time.Duration(t.Window)
	}
	if t := p.ThrottleAddress; t != nil {
		cfg.AddressLimit, cfg.AddressWindow = t.Max, time.Duration(t.Window)
	}
	throttled := initThrottleMetrics(h.Template)
	cfg.OnThrottle = func(by string) { throttled(by) }
	if h.Key != "" {
		// Another handler knows the user: the login only links an account.
		pk := placeholderKey(h.Key)
		cfg.KeyFrom = func(r *http.Request) string {
			k, err := pk(r)
			if err != nil {
				return ""
			}
			return k
		}
	}
	if h.perUser, err = peruser.New(cfg); err != nil {
		return fmt.Errorf("per_user: %w", err)
	}
	h.keyOf = func(r *http.Request) (string, error) {
		if k, _ := caddyhttp.GetVar(r.Context(), perUserVar).(string); k != "" {
			return k, nil
		}
		return "", errors.New("no per-user login")
	}
	return nil
}

// servePerUser runs a request through the per-user gateway: its own pages,
// or the identified user's request on to the rest of the handler.
func (h *Handler) servePerUser(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if why := h.crossSite(r); why != "" && !navigation(r) {
		return h.forbidden(w, why)
	}
	// The gateway sets these (and the handler Authorization and DPoP): a
	// client listing one in Connection would have reverse_proxy drop the
	// verified value as hop-by-hop.
	dropConnectionNames(r.Header, h.perUserSets)
	return h.perUser.Serve(w, r, func(w http.ResponseWriter, r *http.Request, u *peruser.User) error {
		caddyhttp.SetVar(r.Context(), perUserVar, u.Key)
		return h.ServeHTTP(w, r, next)
	})
}

// navigation: a browser's top-level GET to the site, as a link from
// another site makes. Its cookie is sent (SameSite=Lax) as it is to any
// site; what protects state changes is that they are not GETs.
func navigation(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.Header.Get("Sec-Fetch-Mode") == "navigate" && r.Header.Get("Origin") == ""
}

// viaTLS: the browser reached Caddy over TLS, or reached a proxy that
// Caddy's trusted_proxies trusts and that says it terminated TLS.
func viaTLS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return trusted && strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// clientAddr is the client's IP for the login limits: Caddy's client IP
// when the peer is the client, or when trusted_proxies_strict makes it
// the rightmost untrusted entry of the client IP headers. Behind a
// trusted proxy without strict, Caddy's client IP is the leftmost entry,
// which the client wrote itself (a proxy that appends keeps it), so one
// guesser would be a new address per attempt; the rightmost entry, which
// the nearest trusted proxy wrote, is taken instead. Behind a chain of
// trusted proxies that entry may be a proxy, limiting its clients
// together: set trusted_proxies_strict (docs/per-user.md).
func clientAddr(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted && srv != nil && srv.TrustedProxiesStrict == 0 {
		headers := srv.ClientIPHeaders
		if len(headers) == 0 {
			headers = []string{"X-Forwarded-For"} // Caddy's default
		}
		if last := rightmostIP(r.Header, headers); last != "" {
			return last
		}
	}
	if ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// rightmostIP is the last valid IP in the first of headers that has one.
func rightmostIP(h http.Header, headers []string) string {
	for _, name := range headers {
		parts := strings.Split(strings.Join(h.Values(name), ","), ",")
		for _, part := range slices.Backward(parts) {
			host, _, err := net.SplitHostPort(strings.TrimSpace(part))
			if err != nil {
				host = strings.TrimSpace(part)
			}
			host, _, _ = strings.Cut(host, "%")
			if a, err := netip.ParseAddr(host); err == nil {
				return a.String()
			}
		}
	}
	return ""
}

// pagePath is the per-user pages' path prefix.
func pagePath(p string) string {
	if p == "" {
		return "/.inject_token"
	}
	return p
}

// authCodeLogin adapts oauth.AuthCode to the gateway's login hook: the
// Pending login travels as JSON (the gateway keeps it sealed in storage).
type authCodeLogin struct{ a *oauth.AuthCode }

func (l authCodeLogin) Begin(ctx context.Context, key *dpop.Key, returnTo string) (string, string, []byte, error) {
	u, p, err := l.a.Begin(ctx, key, returnTo)
	if err != nil {
		return "", "", nil, err
	}
	b, err := json.Marshal(p)
	return u, p.State, b, err
}

// Finish returns the ID token's verified sub and name, and its email only
// when the provider says it verified it.
func (l authCodeLogin) Finish(ctx context.Context, key *dpop.Key, pending []byte, callback url.Values) (*tokencache.Grant, map[string]string, error) {
	var p oauth.Pending
	if err := json.Unmarshal(pending, &p); err != nil {
		return nil, nil, err
	}
	g, id, err := l.a.Finish(ctx, key, p, callback)
	if err != nil {
		return nil, nil, err
	}
	claims := map[string]string{"sub": id.Subject, "name": id.Name}
	if id.EmailVerified {
		claims["email"] = id.Email
	}
	return g, claims, nil
}

// templateUsers gives the gateway the template's Runtime in force (a
// reload may replace it).
type templateUsers struct{ t *runtimeTemplate }

func (u templateUsers) Token(ctx context.Context, key string) (*tokencache.Token, error) {
	return u.t.runtime().Token(ctx, key)
}

func (u templateUsers) Adopt(ctx context.Context, key string, k *dpop.Key, g *tokencache.Grant) error {
	return u.t.runtime().Adopt(ctx, key, k, g)
}

func (u templateUsers) Session(key string) (*tokencache.Cache, error) {
	return u.t.runtime().Session(key)
}

// parsePerUser reads a per_user block; the dispenser is on "per_user".
//
//	per_user {
//		path             <path>
//		idle_timeout     <duration>
//		max_lifetime     <duration>
//		identity_header  <header> <claim>
//		throttle_account <max> <window>
//		throttle_address <max> <window>
//	}
func parsePerUser(d *caddyfile.Dispenser) (*PerUser, error) {
	p := &PerUser{}
	if d.NextArg() {
		return nil, d.Errf("per_user takes no arguments on its line (found '%s'); configure it in a block", d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "identity_header" {
			return nil, d.Errf("per_user: %s already specified", sub)
		}
		seen[sub] = true
		args := d.RemainingArgs()
		dur := func(v string, dst *caddy.Duration) error {
			t, err := caddy.ParseDuration(v)
			if err != nil || t <= 0 {
				return d.Errf("per_user %s: expected a positive duration such as 10m or 8h, got '%s'", sub, v)
			}
			*dst = caddy.Duration(t)
			return nil
		}
		switch sub {
		case "path":
			if len(args) != 1 || !strings.HasPrefix(args[0], "/") || len(args[0]) < 2 || strings.HasSuffix(args[0], "/") {
				return nil, d.Errf("per_user path: expected one path such as /.inject_token (starting with /, not ending with one)")
			}
			p.Path = args[0]
		case "idle_timeout", "max_lifetime":
			if len(args) != 1 {
				return nil, d.Errf("per_user %s: expected exactly one duration, e.g. '%s 8h'", sub, sub)
			}
			dst := &p.IdleTimeout
			if sub == "max_lifetime" {
				dst = &p.MaxLifetime
			}
			if err := dur(args[0], dst); err != nil {
				return nil, err
			}
		case "identity_header":
			if len(args) != 2 || !validHeaderName(args[0]) {
				return nil, d.Errf("per_user identity_header: expected a header and a claim, e.g. 'identity_header X-Forwarded-User sub'")
			}
			switch args[1] {
			case "sub", "email", "phone", "name", "key":
			default:
				return nil, d.Errf("per_user identity_header %s: unknown claim '%s' (expected sub, email, phone, name or key)", args[0], args[1])
			}
			p.IdentityHeaders = append(p.IdentityHeaders, IdentityHeader{Header: args[0], Claim: args[1]})
		case "throttle_account", "throttle_address":
			n, err := strconv.Atoi(firstOr(args, ""))
			if len(args) != 2 || err != nil || n <= 0 {
				return nil, d.Errf("per_user %s: expected a count and a window, e.g. '%s 5 5m'", sub, sub)
			}
			t := &Throttle{Max: n}
			if err := dur(args[1], &t.Window); err != nil {
				return nil, err
			}
			if sub == "throttle_account" {
				p.ThrottleAccount = t
			} else {
				p.ThrottleAddress = t
			}
		default:
			return nil, d.Errf("per_user: unrecognized subdirective '%s' (expected path, idle_timeout, max_lifetime, identity_header, throttle_account or throttle_address)", sub)
		}
	}
	return p, nil
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// initThrottleMetrics starts template's refusal counters at zero and
// returns the function counting one.
func initThrottleMetrics(template string) func(by string) {
	for _, by := range []string{"account", "address"} {
		loginThrottled.WithLabelValues(template, by)
	}
	return func(by string) { loginThrottled.WithLabelValues(template, by).Inc() }
}

// Interface guards
var (
	_ peruser.Sessions = templateUsers{}
	_ peruser.AuthCode = authCodeLogin{}
)
