package oauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/jwks"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() { tokencache.Register(AuthCodeBackendName, OpenAuthCode) }

// AuthCodeBackendName is the name the authorization code grant's backend
// is registered under. What tokencache.NewBackend builds under it
// implements AuthCodeFlow.
const AuthCodeBackendName = "oauth2_authorization_code"

// Defaults applied by NewAuthCode for zero AuthCodeConfig fields.
const (
	// DefaultIDTokenSkew is the clock tolerance for an ID token's exp,
	// iat and nbf.
	DefaultIDTokenSkew = 2 * time.Minute
	// DefaultPendingLifetime is how long a login may take from Begin to
	// Finish: long enough to type a password and pass a second factor.
	DefaultPendingLifetime = 10 * time.Minute
)

// Errors of Finish (and Begin) that are not the server's, matched with
// errors.Is on the *Error returned.
var (
	// ErrStateMismatch: the callback's state is not the one this login
	// began with (a forged or crossed callback, RFC 6749 §10.12).
	ErrStateMismatch = errors.New("state does not match the login this browser started")
	// ErrIssuerMismatch: the callback's iss is not the configured issuer,
	// or is missing although the server promised it (RFC 9207 mix-up
	// protection).
	ErrIssuerMismatch = errors.New("the authorization response's iss is not the configured issuer")
	// ErrLoginExpired: the pending login is older than PendingLifetime,
	// or incomplete.
	ErrLoginExpired = errors.New("the login expired or was not started here")
	// ErrAuthorizationFailed: the server answered the authorization
	// request with an error (access_denied, login_required, ...); the
	// *Error's Code and Message hold its error and cleaned description.
	ErrAuthorizationFailed = errors.New("the authorization server refused the login")
	// ErrNoCode: a callback with neither a code nor an error.
	ErrNoCode = errors.New("the callback carries no authorization code")
	// ErrIDTokenInvalid: the ID token failed verification (signature,
	// iss, aud, azp, exp, iat, nbf, nonce or sub). The tokens issued with
	// it are discarded (the refresh token is revoked).
	ErrIDTokenInvalid = errors.New("ID token rejected")
)

// AuthCodeConfig configures an AuthCode.
type AuthCodeConfig struct {
	// Config is the client, as for New, with these differences:
	// Settings.Endpoint must be the issuer URL (the flow needs its
	// metadata: the authorization, token, PAR and revocation endpoints,
	// the JWKS and the issuer the ID token names); Grant is "" or
	// "authorization_code"; RedirectURI is required; AuthorizeParams are
	// added to every authorization request; Scopes default to "openid
	// offline_access", and "openid" is added when missing (the ID token
	// names the user). With DPoP the code is bound to the key Begin is
	// given (dpop_jkt, RFC 9449 §10) and the tokens to the key Finish is
	// given: the same one.
	Config
	// IDTokenSkew is the clock tolerance for the ID token's exp, iat and
	// nbf; DefaultIDTokenSkew when zero.
	IDTokenSkew time.Duration `json:"id_token_skew,omitempty"`
	// PendingLifetime bounds the time from Begin to Finish;
	// DefaultPendingLifetime when zero.
	PendingLifetime time.Duration `json:"pending_lifetime,omitempty"`
	// JWKSRefetch is the least time between two fetches of the issuer's
	// keys caused by an unknown key ID; jwks.DefaultMinRefetch (30 s) when
	// zero.
	JWKSRefetch time.Duration `json:"jwks_refetch,omitempty"`
	// Now is the clock for the ID token, the pending login's age and the
	// JWKS refetch limit; time.Now when nil.
	Now func() time.Time `json:"-"`
}

// AuthCode runs the authorization code flow (RFC 6749 §4.1) of one client
// against one OpenID Connect issuer: PKCE S256 (RFC 7636), state and
// nonce, pushed authorization requests (RFC 9126) when the server
// advertises them, DPoP-bound codes and tokens (RFC 9449 §10) with
// Config.DPoP, the iss callback parameter (RFC 9207), and the user named
// by the verified ID token's sub. It holds no per-login state: Begin
// returns the Pending login the caller keeps (server-side, sealed) and
// hands back to Finish. It is safe for concurrent use.
type AuthCode struct {
	c        *Client // grant refresh_token: token requests, refresh, revocation, discovery
	redirect string
	params   map[string]string
	skew     time.Duration
	lifetime time.Duration
	now      func() time.Time
	keys     jwks.Cache
}

// Pending is one login between Begin and Finish. The caller keeps it on
// the server (sealed, keyed by something only this browser holds): of
// its fields only State travels through the browser. With DPoP the caller
// keeps the key given to Begin too: the code is bound to it, so Finish
// needs the same key, and the session that starts lives with it.
type Pending struct {
	// State is the authorization request's state: Finish compares it,
	// in constant time, with the callback's.
	State string `json:"state"`
	// Nonce is the ID token's expected nonce.
	Nonce string `json:"nonce"`
	// Verifier is the PKCE code verifier.
	Verifier string `json:"verifier"`
	// RedirectURI is the redirect_uri the login was begun with.
	RedirectURI string `json:"redirect_uri"`
	// ReturnTo is the caller's, as given to Begin (checked by the caller:
	// this package does not judge return URLs).
	ReturnTo string `json:"return_to,omitempty"`
	// Created is when Begin ran.
	Created time.Time `json:"created"`
}

// IDToken is what a verified ID token says about the user.
type IDToken struct {
	// Subject is the sub claim: the user's stable id at the issuer (1 to
	// 255 printable ASCII characters; anything else is refused).
	Subject string
	// Email and Name are the email and name claims when present and
	// plain text (no control characters, bounded); "" otherwise.
	Email, Name string
	// EmailVerified is the email_verified claim.
	EmailVerified bool
	// Claims are all the token's claims, verified (the token is at most
	// 16 KiB).
	Claims map[string]any
}

// AuthCodeFlow is implemented by the backend the registry builds under
// AuthCodeBackendName (and by AuthCode.Backend's): the per-user login
// reaches Begin and Finish through it.
type AuthCodeFlow interface {
	AuthCode() *AuthCode
}

// authorizeReserved are the authorization request parameters the flow sets
// itself; AuthorizeParams may not set them.
var authorizeReserved = map[string]bool{
	"response_type": true, "client_id": true, "redirect_uri": true, "scope": true,
	"state": true, "nonce": true, "code_challenge": true, "code_challenge_method": true,
	"dpop_jkt": true, "request_uri": true, "request": true, "resource": true, "response_mode": true,
}

// NewAuthCode validates c and returns an AuthCode. It does no network I/O
// (discovery happens on the first Begin, and is retried after a failure);
// ctx is not kept.
func NewAuthCode(_ context.Context, c AuthCodeConfig) (*AuthCode, error) {
	cfg := c.Config
	if cfg.Grant != "" && cfg.Grant != GrantAuthorizationCode {
		return nil, fmt.Errorf("oauth: NewAuthCode runs Grant authorization_code, not %q", cfg.Grant)
	}
	if cfg.RedirectURI == "" {
		return nil, errors.New("oauth: RedirectURI is required for Grant authorization_code")
	}
	if u, err := wire.CheckURL(cfg.RedirectURI, true); err != nil || u.Fragment != "" {
		return nil, errors.New("oauth: RedirectURI must be an absolute http or https URL without a fragment")
	}
	if u, err := url.Parse(cfg.Endpoint); err == nil && looksLikeTokenEndpoint(u) {
		return nil, errors.New("oauth: Grant authorization_code needs the issuer URL as Endpoint, not a token endpoint")
	}
	params := map[string]string{}
	for k, v := range cfg.AuthorizeParams {
		if authorizeReserved[k] {
			return nil, fmt.Errorf("oauth: AuthorizeParams may not set %q", k)
		}
		params[k] = v
	}
	switch {
	case len(cfg.Scopes) == 0:
		cfg.Scopes = []string{"openid", "offline_access"}
	case !slices.Contains(cfg.Scopes, "openid"):
		cfg.Scopes = append([]string{"openid"}, cfg.Scopes...)
	}
	redirect := cfg.RedirectURI
	cfg.Grant, cfg.RedirectURI, cfg.AuthorizeParams = GrantRefreshToken, "", nil
	client, err := New(cfg)
	if err != nil {
		return nil, err
	}
	a := &AuthCode{c: client, redirect: redirect, params: params, skew: c.IDTokenSkew, lifetime: c.PendingLifetime, now: c.Now}
	if a.skew <= 0 {
		a.skew = DefaultIDTokenSkew
	}
	if a.lifetime <= 0 {
		a.lifetime = DefaultPendingLifetime
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.keys = jwks.Cache{Fetch: a.fetchKeys, MinRefetch: c.JWKSRefetch}
	return a, nil
}

// String identifies the flow without its credentials.
func (a *AuthCode) String() string {
	return fmt.Sprintf("oauth.AuthCode(%s, client_id=%s, redirect_uri=%s)", a.c.endpoint.Redacted(), a.c.cfg.ClientID, a.redirect)
}

// Client is the token client the flow uses (refresh_token grant,
// revocation), for callers that need its endpoints or skew.
func (a *AuthCode) Client() *Client { return a.c }

// Begin starts a login: it returns the URL to send the browser to and the
// Pending login to keep until Finish. The request carries PKCE S256, a
// fresh state and nonce, the configured scopes, resources and
// AuthorizeParams, and with DPoP the key's thumbprint as dpop_jkt, which
// binds the code to key (RFC 9449 §10). When the server advertises a
// pushed_authorization_request_endpoint, the parameters are pushed there
// first (RFC 9126, with client authentication) and the URL carries only
// client_id and request_uri; a server that requires pushed requests but
// advertises no endpoint is a configuration error.
func (a *AuthCode) Begin(ctx context.Context, key *dpop.Key, returnTo string) (string, Pending, error) {
	c := a.c
	if c.cfg.DPoP && key == nil {
		return "", Pending{}, configError("authorize", "DPoP is enabled but no key was given")
	}
	m, err := c.metadata(ctx)
	if err != nil {
		return "", Pending{}, err
	}
	if err := authCodeReady(m); err != nil {
		return "", Pending{}, configError("authorize", err.Error())
	}
	p := Pending{State: randomValue(), Nonce: randomValue(), Verifier: randomValue(), RedirectURI: a.redirect, ReturnTo: returnTo, Created: a.now()}
	challenge := sha256.Sum256([]byte(p.Verifier))
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {c.cfg.ClientID},
		"redirect_uri":          {p.RedirectURI},
		"scope":                 {strings.Join(c.cfg.Scopes, " ")},
		"state":                 {p.State},
		"nonce":                 {p.Nonce},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(challenge[:])},
		"code_challenge_method": {"S256"},
	}
	if rs := c.cfg.resources(); len(rs) > 0 {
		q["resource"] = rs
	}
	if c.cfg.DPoP {
		q.Set("dpop_jkt", key.Thumbprint())
	}
	for k, v := range a.params {
		q.Set(k, v)
	}
	if m.par != nil {
		uri, err := a.push(ctx, m, q)
		if err != nil {
			return "", Pending{}, err
		}
		q = url.Values{"client_id": {c.cfg.ClientID}, "request_uri": {uri}}
	}
	// RFC 6749 §3.1: the endpoint's own query is kept.
	u := *m.authorization
	all := u.Query()
	for k, vs := range q {
		all[k] = vs
	}
	u.RawQuery = all.Encode()
	return u.String(), p, nil
}

// authCodeReady says what m lacks for the authorization code flow.
func authCodeReady(m *metadata) error {
	switch {
	case m.issuer == "":
		return errors.New("grant authorization_code needs the issuer's metadata (RFC 8414 or OpenID Connect discovery); none was found")
	case m.authorization == nil:
		return errors.New("the issuer's metadata names no authorization_endpoint")
	case m.jwks == nil:
		return errors.New("the issuer's metadata names no jwks_uri (needed to verify ID tokens)")
	case m.requirePAR && m.par == nil:
		return errors.New("the issuer requires pushed authorization requests but names no pushed_authorization_request_endpoint")
	case len(m.pkceMethods) > 0 && !slices.Contains(m.pkceMethods, "S256"):
		return errors.New("the issuer does not support PKCE S256")
	}
	return nil
}

// push posts the authorization request to the PAR endpoint and returns
// its request_uri.
func (a *AuthCode) push(ctx context.Context, m *metadata, q url.Values) (string, error) {
	c := a.c
	x := &exchange{op: "par", target: m.par, secrets: c.secrets()}
	x.form = func() (url.Values, http.Header, error) {
		f := url.Values{}
		for k, vs := range q {
			f[k] = vs
		}
		h, err := c.authenticate(f, m, x)
		return f, h, err
	}
	resp, err := c.do(ctx, x)
	if err != nil {
		return "", err
	}
	var body struct {
		RequestURI string `json:"request_uri"`
	}
	if resp.BodyErr != nil || wire.UnmarshalExact(resp.Body, &body) != nil || body.RequestURI == "" || len(body.RequestURI) > 2048 {
		return "", x.fail(KindRejected, resp.Status, errors.New("malformed pushed authorization response: no usable request_uri"))
	}
	return body.RequestURI, nil
}

// Finish completes the login the browser's callback (its query parameters)
// answers. In order, before anything is sent:
// p must be complete and younger than PendingLifetime; the callback's
// state must equal p.State (constant time); its iss, when present or
// promised by the server's metadata, must be the issuer (RFC 9207); an
// error parameter ends the login (ErrAuthorizationFailed, the server's
// text cleaned and scrubbed). Then the code is exchanged, with p.Verifier
// and, with DPoP, a proof signed with key (a use_dpop_nonce challenge is
// answered once), and the ID token is verified: signature against the
// issuer's JWKS (fetched again, rate-limited, for an unknown key ID), iss,
// aud containing the client, azp, exp, iat and nbf within IDTokenSkew,
// nonce = p.Nonce, and a usable sub. A token that fails is discarded (the
// refresh token is revoked). On success the grant is the new session's and
// the IDToken names its user; on failure nothing is returned. Errors are
// *Error (Op "authorize", "token", "id_token" or "discover").
func (a *AuthCode) Finish(ctx context.Context, key *dpop.Key, p Pending, callback url.Values) (*tokencache.Grant, *IDToken, error) {
	c := a.c
	now := a.now()
	secrets := c.secrets(p.State, p.Nonce, p.Verifier)
	reject := func(cause error, detail string) *Error {
		e := newError("authorize", KindRejected, 0, cause)
		e.detail = cause.Error()
		if detail != "" {
			e.detail += ": " + wire.Scrub(detail, secrets)
		}
		return e
	}
	switch {
	case p.State == "" || p.Nonce == "" || p.Verifier == "" || p.RedirectURI == "":
		return nil, nil, reject(ErrLoginExpired, "incomplete pending login")
	case now.Sub(p.Created) > a.lifetime || p.Created.After(now.Add(a.skew)):
		return nil, nil, reject(ErrLoginExpired, fmt.Sprintf("begun %s ago (limit %s)", now.Sub(p.Created).Round(time.Second), a.lifetime))
	}
	if st := callback["state"]; len(st) != 1 || subtle.ConstantTimeCompare([]byte(st[0]), []byte(p.State)) != 1 {
		return nil, nil, reject(ErrStateMismatch, "")
	}
	m, err := c.metadata(ctx)
	if err != nil {
		return nil, nil, err
	}
	switch iss := callback["iss"]; {
	case len(iss) > 1, len(iss) == 1 && iss[0] != m.issuer:
		return nil, nil, reject(ErrIssuerMismatch, "")
	case len(iss) == 0 && m.issParameter:
		return nil, nil, reject(ErrIssuerMismatch, "iss is missing although the server's metadata promises it")
	}
	if callback.Has("error") {
		e := reject(ErrAuthorizationFailed, "")
		e.Code = errorCode(callback.Get("error"))
		e.Message = wire.Scrub(plainText(callback.Get("error_description")), secrets)
		return nil, nil, e
	}
	code := callback["code"]
	if len(code) != 1 || code[0] == "" || len(code[0]) > 4096 {
		return nil, nil, reject(ErrNoCode, "")
	}
	if c.cfg.DPoP && key == nil {
		return nil, nil, configError("token", "DPoP is enabled but no key was given")
	}
	g, tr, err := c.request(ctx, key, false, []string{code[0], p.Verifier, p.State, p.Nonce}, func(f url.Values, _ *exchange, _ *metadata) error {
		f.Set("grant_type", GrantAuthorizationCode)
		f.Set("code", code[0])
		f.Set("redirect_uri", p.RedirectURI)
		f.Set("code_verifier", p.Verifier)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	id, err := a.verifyIDToken(ctx, m, tr.IDToken, p.Nonce, now)
	if err != nil {
		// The tokens belong to no verified user: give them up.
		_ = c.Revoke(ctx, key, g.RefreshToken)
		return nil, nil, err
	}
	return g, id, nil
}

// configError is a KindConfig *Error of op saying detail.
func configError(op, detail string) *Error {
	e := newError(op, KindConfig, 0, nil)
	e.detail = detail
	return e
}

// randomValue is 256 bits from crypto/rand, base64url: a state, a nonce,
// a PKCE verifier (43 characters, RFC 7636 §4.1).
func randomValue() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// errorCode is the callback's error parameter when it is a plausible OAuth
// error code (RFC 6749 §4.1.2.1: lower-case letters, digits, '_', '.',
// '-', at most 64), else "invalid_error_code": it reaches logs and pages.
func errorCode(s string) string {
	if s == "" || len(s) > 64 || strings.IndexFunc(s, func(r rune) bool {
		return !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '_' || r == '.' || r == '-')
	}) >= 0 {
		return "invalid_error_code"
	}
	return s
}

// plainText keeps of an untrusted description only letters, digits, space
// and harmless punctuation: no markup, quotes, escapes or control
// characters survive to a page or a log line, whoever forgets to escape.
func plainText(s string) string {
	if len(s) > 1024 {
		s = s[:1024]
	}
	return strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', strings.ContainsRune(".,:;!?()-_'/", r):
			return r
		}
		return ' '
	}, s)), " ")
}

// Backend is the tokencache.Backend of the sessions Finish starts: it
// refreshes them (refresh_token grant, DPoP with the session's key,
// rotation) and revokes them (RFC 7009). It has no automatic login (only
// the user can log in); it implements tokencache.Scoped and AuthCodeFlow.
func (a *AuthCode) Backend() tokencache.Backend { return authCodeBackend{a} }

// OpenAuthCode is the tokencache.Factory of AuthCodeBackendName: an
// AuthCode from an AuthCodeConfig in JSON (the fields that have a JSON
// name) and env, as Open. It does no network I/O.
func OpenAuthCode(raw json.RawMessage, env tokencache.Env) (tokencache.Backend, error) {
	var cfg AuthCodeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("oauth settings: %w", err)
	}
	if err := cfg.Config.useEnv(env); err != nil {
		return nil, err
	}
	a, err := NewAuthCode(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return a.Backend(), nil
}

type authCodeBackend struct{ a *AuthCode }

var (
	_ tokencache.Backend = authCodeBackend{}
	_ tokencache.Scoped  = authCodeBackend{}
	_ AuthCodeFlow       = authCodeBackend{}
)

// AuthCode implements AuthCodeFlow.
func (b authCodeBackend) AuthCode() *AuthCode { return b.a }

// Refresh implements tokencache.Backend: the refresh_token grant.
func (b authCodeBackend) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	return b.a.c.Token(ctx, key, refreshToken)
}

// Revoke implements tokencache.Backend (see Client.Revoke).
func (b authCodeBackend) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	return b.a.c.Revoke(ctx, key, refreshToken)
}

// AutoLogin implements tokencache.Backend: nil, only the user logs in.
func (authCodeBackend) AutoLogin() tokencache.LoginFunc { return nil }

// TokenScope implements tokencache.Scoped.
func (b authCodeBackend) TokenScope() string { return b.a.c.TokenScope() }
