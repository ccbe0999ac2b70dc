// Package exchange is the RFC 8693 token exchange backend: it trades a
// subject token — from a file its issuer rewrites in place (a Kubernetes
// projected service-account token, a SPIFFE JWT-SVID) or from each
// incoming request (a downstream user's JWT) — for an access token of the
// configured audience, scope and resource. Requests go through oauth's
// Client, so client authentication (a fresh private_key_jwt assertion per
// attempt), DPoP and the error classes are oauth's.
//
// A file subject is one session of the token engine like any other
// backend's. Per-request subjects are kept out of the engine: exchanged
// tokens have no refresh token to coordinate, so they live in a bounded,
// memory-only Cache of this process, one token per subject.
package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() { tokencache.Register(BackendName, Open) }

// BackendName is the name this backend is registered under.
const BackendName = "token_exchange"

// GrantType is RFC 8693's grant_type.
const GrantType = "urn:ietf:params:oauth:grant-type:token-exchange"

// Token type identifiers (RFC 8693 §3).
const (
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeIDToken     = "urn:ietf:params:oauth:token-type:id_token"
)

// Defaults for zero Config fields.
const (
	DefaultCacheSize   = 10000
	DefaultNegativeTTL = 30 * time.Second
	DefaultMissRate    = 10 // new subjects per second, verification off
	// DefaultLeeway is how long before its expiry a cached token is no
	// longer handed out: it must still be valid when the upstream sees it.
	DefaultLeeway = 10 * time.Second
)

// Config configures an Exchanger. The embedded oauth.Config names the token
// endpoint, the client and its authentication, the scope, the resources,
// extra parameters such as audience (all part of every cache key) and DPoP;
// its Grant is not used.
type Config struct {
	oauth.Config
	// SubjectFile holds the subject token, read again whenever it changes.
	// Exactly one of SubjectFile and SubjectHeader is set.
	SubjectFile string `json:"subject_file,omitempty"`
	// SubjectHeader names the request header carrying each request's
	// subject token ("Bearer " prefix optional).
	SubjectHeader string `json:"subject_header,omitempty"`
	// SubjectTokenType is the subject token's type; default TokenTypeJWT.
	SubjectTokenType string `json:"subject_token_type,omitempty"`
	// ActorFile optionally holds an actor token (RFC 8693 §1.1), read
	// again whenever it changes.
	ActorFile string `json:"actor_file,omitempty"`
	// ActorTokenType is the actor token's type; default TokenTypeJWT.
	ActorTokenType string `json:"actor_token_type,omitempty"`
	// RequestedTokenType is sent as requested_token_type when set; the
	// issued_token_type must then be the same. Without it the issued type
	// must be an access token or a JWT.
	RequestedTokenType string `json:"requested_token_type,omitempty"`

	// Verification of per-request subjects, before any exchange.
	Verify Verify `json:"verify,omitzero"`

	// CacheSize bounds the per-subject cache (least recently used
	// subjects go first); default DefaultCacheSize.
	CacheSize int `json:"cache_size,omitempty"`
	// NegativeTTL is how long a subject the server rejected is refused
	// without asking again; default DefaultNegativeTTL.
	NegativeTTL time.Duration `json:"negative_ttl,omitempty"`
	// MissRate and MissBurst bound the exchanges for new subjects per
	// second when verification is off; default DefaultMissRate, burst
	// the same.
	MissRate  float64 `json:"miss_rate,omitempty"`
	MissBurst int     `json:"miss_burst,omitempty"`

	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time `json:"-"`
}

// Exchanger exchanges subject tokens. With a subject file it is a
// tokencache.Backend; with a subject header its Cache serves each request.
type Exchanger struct {
	cfg     Config
	client  *oauth.Client
	subject *oauth.FileSource // nil with a subject header
	actor   *oauth.FileSource
	cache   *Cache // nil with a subject file
}

var (
	_ tokencache.Backend = (*Exchanger)(nil)
	_ tokencache.Scoped  = (*Exchanger)(nil)
)

// Open is the backend's tokencache.Factory: an Exchanger from a Config in
// JSON and env's nonce store and client key. It does no network I/O.
func Open(raw json.RawMessage, env tokencache.Env) (tokencache.Backend, error) {
	var cfg Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("token_exchange settings: %w", err)
	}
	cfg.Nonces = env.Nonces
	if env.ClientKey != nil {
		if len(cfg.ClientKeyPEM) > 0 {
			return nil, errors.New("token_exchange: a client key in the settings and one from a key source are exclusive")
		}
		cfg.ClientKey = env.ClientKey
	}
	return New(cfg)
}

// New validates cfg and returns an Exchanger. It does no network I/O.
func New(cfg Config) (*Exchanger, error) {
	if (cfg.SubjectFile == "") == (cfg.SubjectHeader == "") {
		return nil, errors.New("token_exchange: exactly one of subject_file and subject_header is required")
	}
	cfg.Grant = ""
	c, err := oauth.New(cfg.Config)
	if err != nil {
		return nil, err
	}
	if cfg.SubjectTokenType == "" {
		cfg.SubjectTokenType = TokenTypeJWT
	}
	if cfg.ActorTokenType == "" {
		cfg.ActorTokenType = TokenTypeJWT
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Exchanger{cfg: cfg, client: c}
	if cfg.ActorFile != "" {
		e.actor = &oauth.FileSource{Path: cfg.ActorFile, Name: "actor file"}
	}
	if cfg.SubjectFile != "" {
		e.subject = &oauth.FileSource{Path: cfg.SubjectFile, Name: "subject file"}
		return e, nil
	}
	if e.cache, err = newCache(&e.cfg, e.Exchange, e.TokenScope()); err != nil {
		return nil, err
	}
	return e, nil
}

// String identifies the exchanger without credentials.
func (e *Exchanger) String() string { return "exchange(" + e.client.String() + ")" }

// Cache is the per-request subjects' cache; nil with a subject file.
func (e *Exchanger) Cache() *Cache { return e.cache }

// SubjectHeader is the configured subject header ("" with a subject file).
func (e *Exchanger) SubjectHeader() string { return e.cfg.SubjectHeader }

// TokenScope implements tokencache.Scoped: what every exchanged token is
// for (scope, resources, params such as audience) and from which subject
// source and token types.
func (e *Exchanger) TokenScope() string {
	b, _ := json.Marshal([]any{e.client.TokenScope(), e.cfg.SubjectFile, e.cfg.SubjectHeader,
		e.cfg.SubjectTokenType, e.cfg.ActorFile, e.cfg.RequestedTokenType})
	return string(b)
}

// AutoLogin implements tokencache.Backend: with a subject file the session
// exchanges by itself; per-request subjects have no session login.
func (e *Exchanger) AutoLogin() tokencache.LoginFunc {
	if e.subject == nil {
		return nil
	}
	return func(ctx context.Context, key *dpop.Key, _ string) (*tokencache.Grant, error) {
		return e.Refresh(ctx, key, "")
	}
}

// Refresh implements tokencache.Backend: a new exchange of the subject
// file's current token (there is no refresh token).
func (e *Exchanger) Refresh(ctx context.Context, key *dpop.Key, _ string) (*tokencache.Grant, error) {
	if e.subject == nil {
		return nil, &Error{Failure: tokencache.Failure{Class: tokencache.ClassCredentialsRejected}, detail: "per-request subjects have no session"}
	}
	s, err := e.subject.Read()
	if err != nil {
		return nil, &Error{Failure: tokencache.Failure{Class: tokencache.ClassRetryLater}, detail: err.Error()}
	}
	return e.Exchange(ctx, key, s)
}

// Revoke implements tokencache.Backend: an exchanged token has nothing to
// revoke and expires on its own.
func (e *Exchanger) Revoke(context.Context, *dpop.Key, string) error { return nil }

// Exchange trades subject for a token (with the actor token, if
// configured). The token never outlives the subject's own exp. Errors are
// oauth's *Error, or an *Error of this package.
func (e *Exchanger) Exchange(ctx context.Context, key *dpop.Key, subject string) (*tokencache.Grant, error) {
	p := url.Values{"subject_token": {subject}, "subject_token_type": {e.cfg.SubjectTokenType}}
	if e.actor != nil {
		a, err := e.actor.Read()
		if err != nil {
			return nil, &Error{Failure: tokencache.Failure{Class: tokencache.ClassRetryLater}, detail: err.Error()}
		}
		p.Set("actor_token", a)
		p.Set("actor_token_type", e.cfg.ActorTokenType)
	}
	if e.cfg.RequestedTokenType != "" {
		p.Set("requested_token_type", e.cfg.RequestedTokenType)
	}
	g, issued, err := e.client.Exchange(ctx, key, GrantType, p)
	if err != nil {
		return nil, err
	}
	if !e.acceptable(issued) {
		// The server acted but issued something that cannot be presented
		// as configured: asking again gets the same.
		return nil, &Error{Failure: tokencache.Failure{Class: tokencache.ClassCredentialsRejected, Status: 200, Code: "issued_token_type"},
			detail: "issued_token_type " + wire.Scrub(issued, []string{subject, g.AccessToken}) + " is not the requested type"}
	}
	if exp, ok := wire.JWTExp(subject); ok && (g.Expiry.IsZero() || exp.Before(g.Expiry)) {
		g.Expiry = exp
	}
	return g, nil
}

// acceptable reports whether issued is the token type asked for.
func (e *Exchanger) acceptable(issued string) bool {
	if e.cfg.RequestedTokenType != "" {
		return issued == e.cfg.RequestedTokenType
	}
	return slices.Contains([]string{TokenTypeAccessToken, TokenTypeJWT}, issued)
}

// Error is a failure of this package's own (an unusable answer, a subject
// that failed verification, a new subject over the rate limit).
type Error struct {
	tokencache.Failure
	detail   string
	sentinel error // ErrSubjectInvalid, ErrTooManySubjects or nil
}

// Is matches the Failure's class, and ErrSubjectInvalid or
// ErrTooManySubjects.
func (e *Error) Is(target error) bool {
	return target != nil && target == e.sentinel || e.Failure.Is(target)
}

func (e *Error) Error() string { return "token exchange: " + e.Failure.Error() + ": " + e.detail }

// FailureReason is the metrics label.
func (e *Error) FailureReason() string { return wire.FailureReason(&e.Failure, nil) }

// failureRetry: nothing was asked of the token server; try again later.
var failureRetry = tokencache.Failure{Class: tokencache.ClassRetryLater}

// invalid is a subject that failed verification.
func invalid(why string) error {
	return &Error{Failure: tokencache.Failure{Class: tokencache.ClassDidNotAct, Code: "invalid_subject"}, detail: why, sentinel: ErrSubjectInvalid}
}
