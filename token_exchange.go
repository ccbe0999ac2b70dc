package injecttoken

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tokenwarden/caddy-inject-token/exchange"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TokenExchange configures the token_exchange backend (RFC 8693): the
// token endpoint and client as for oauth2 (grant, assertion_file and
// omit_resource_on_refresh do not apply), and where the subject token
// comes from. docs/grants.md describes it.
type TokenExchange struct {
	OAuth2

	// SubjectFile holds the subject token (a Kubernetes projected
	// service-account token, a SPIFFE JWT-SVID), read again whenever it
	// changes: the session exchanges it by itself and keeps the result
	// fresh. Exactly one of SubjectFile and SubjectHeader is set.
	SubjectFile string `json:"subject_file,omitempty"`

	// SubjectHeader names the request header carrying each request's
	// subject token (a downstream user's JWT; "Bearer " optional). Each
	// subject gets its own exchanged token, kept in this process's memory
	// only. The header never reaches the upstream.
	SubjectHeader string `json:"subject_header,omitempty"`

	// SubjectTokenType, ActorTokenType: RFC 8693 token type URIs; default
	// urn:ietf:params:oauth:token-type:jwt.
	SubjectTokenType string `json:"subject_token_type,omitempty"`
	ActorTokenType   string `json:"actor_token_type,omitempty"`

	// ActorFile optionally holds an actor token, read again whenever it
	// changes.
	ActorFile string `json:"actor_file,omitempty"`

	// RequestedTokenType is sent as requested_token_type; the server's
	// issued_token_type must match it (without it: an access token or a
	// JWT).
	RequestedTokenType string `json:"requested_token_type,omitempty"`

	// VerifyJWKSURL, VerifyIssuer, VerifyAudiences: a per-request subject
	// must be signed by a key of the JWKS (or of the issuer's, found by
	// OpenID Connect discovery), unexpired, from VerifyIssuer when set,
	// and for one of VerifyAudiences, before it is exchanged.
	VerifyJWKSURL   string   `json:"verify_jwks_url,omitempty"`
	VerifyIssuer    string   `json:"verify_issuer,omitempty"`
	VerifyAudiences []string `json:"verify_audiences,omitempty"`

	// VerifyOff leaves judging subjects to the token server; exchanges for
	// new subjects are then limited to MissRate per second.
	VerifyOff bool    `json:"verify_off,omitempty"`
	MissRate  float64 `json:"miss_rate,omitempty"`

	// CacheSize bounds the per-subject cache (default 10000 subjects).
	CacheSize int `json:"cache_size,omitempty"`

	// NegativeTTL is how long a subject the server rejected is refused
	// without asking again (default 30s).
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
}

// resolve fills set from the configuration, resolving global placeholders.
func (t *TokenExchange) resolve(repl *caddy.Replacer, set *settings, useDPoP bool) error {
	if t.Grant != "" || t.AssertionFile != "" || t.OmitResourceOnRefresh {
		return errors.New("token_exchange: grant, assertion_file and omit_resource_on_refresh are oauth2 options")
	}
	oc, err := t.OAuth2.config(repl, "token_exchange", useDPoP)
	if err != nil {
		return err
	}
	cfg := exchange.Config{Config: oc, SubjectHeader: t.SubjectHeader, SubjectTokenType: t.SubjectTokenType,
		ActorTokenType: t.ActorTokenType, RequestedTokenType: t.RequestedTokenType,
		Verify:    exchange.Verify{Audiences: t.VerifyAudiences, Off: t.VerifyOff},
		CacheSize: t.CacheSize, NegativeTTL: time.Duration(t.NegativeTTL), MissRate: t.MissRate}
	for _, f := range []struct {
		name     string
		src, dst *string
	}{{"subject_file", &t.SubjectFile, &cfg.SubjectFile}, {"actor_file", &t.ActorFile, &cfg.ActorFile},
		{"verify_jwks_url", &t.VerifyJWKSURL, &cfg.Verify.JWKSURL}, {"verify_issuer", &t.VerifyIssuer, &cfg.Verify.Issuer}} {
		if *f.dst, err = repl.ReplaceOrErr(*f.src, true, true); err != nil {
			return fmt.Errorf("token_exchange %s: %v", f.name, err)
		}
	}
	if t.SubjectHeader != "" && !validHeaderName(t.SubjectHeader) {
		return fmt.Errorf("token_exchange subject_header %q is not a header name", t.SubjectHeader)
	}
	if err := set.open(exchange.BackendName, oc.Endpoint, cfg, t.env()); err != nil {
		return fmt.Errorf("token_exchange: %w", err)
	}
	return nil
}

// perSubject is the handler's per-request token exchange.
type perSubject struct {
	cache  *exchange.Cache
	header string
}

// perSubjectOf returns the per-request exchange of set's backend, or nil.
func perSubjectOf(set *settings) *perSubject {
	e, ok := set.backend.(*exchange.Exchanger)
	if !ok || e.Cache() == nil {
		return nil
	}
	return &perSubject{cache: e.Cache(), header: e.SubjectHeader()}
}

// take removes the subject header from r and returns the subject token.
// It runs before the client's credentials are stripped, so the header may
// be Authorization; either way the user's own token never reaches the
// upstream.
func (p *perSubject) take(r *http.Request) string {
	subject := strings.TrimSpace(r.Header.Get(p.header))
	r.Header.Del(p.header)
	if len(subject) > 7 && strings.EqualFold(subject[:7], "bearer ") {
		subject = strings.TrimSpace(subject[7:])
	}
	return subject
}

// serve presents subject's exchanged token and passes the request on. A
// 401 from the upstream drops that subject's token only.
func (p *perSubject) serve(subject string, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if subject == "" {
		return caddyhttp.Error(http.StatusUnauthorized, fmt.Errorf("no subject token in %s", p.header))
	}
	g, err := p.cache.Get(r.Context(), subject)
	if err != nil {
		status := subjectStatus(err)
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1") // the miss rate refills every second
		}
		return caddyhttp.Error(status, err)
	}
	if g.TokenType != "Bearer" {
		// The proof would have to be signed for each attempt by the
		// transport; per-subject DPoP-bound tokens are not presented yet.
		return caddyhttp.Error(http.StatusBadGateway, errors.New("per-subject token is DPoP-bound: not supported"))
	}
	r.Header.Set("Authorization", "Bearer "+g.AccessToken)
	r.Header.Del("DPoP")
	// A transport inject_token in the reverse_proxy sends it as it is.
	caddyhttp.SetVar(r.Context(), credVar, &credential{name: "token_exchange", preset: true})
	sw := &statusWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err = next.ServeHTTP(sw, r)
	if sw.status == http.StatusUnauthorized {
		p.cache.Invalidate(subject, g.AccessToken)
	}
	return err
}

// subjectStatus is the client's answer to a subject that got no token.
func subjectStatus(err error) int {
	switch f, _ := tokencache.FailureOf(err); {
	case errors.Is(err, exchange.ErrSubjectInvalid):
		return http.StatusUnauthorized
	case errors.Is(err, exchange.ErrTooManySubjects):
		return http.StatusTooManyRequests
	case f != nil && f.Class == tokencache.ClassSessionDead:
		return http.StatusForbidden // the server refused this subject
	}
	return http.StatusServiceUnavailable
}

// parseTokenExchange reads a token_exchange block (oauth2's client options
// and its own); the dispenser is on "token_exchange".
func parseTokenExchange(d *caddyfile.Dispenser) (*TokenExchange, error) {
	t := &TokenExchange{}
	one := func(name string, dst *string) error {
		if *dst != "" {
			return d.Errf("token_exchange %s already specified", name)
		}
		if !d.AllArgs(dst) {
			return d.Errf("token_exchange %s: expected exactly one value", name)
		}
		return nil
	}
	o, err := parseOAuth2Block(d, "token_exchange", func(opt string) (bool, error) {
		switch opt {
		case "grant", "assertion_file", "omit_resource_on_refresh":
			return true, d.Errf("token_exchange: '%s' is an oauth2 option (a token exchange has its own grant)", opt)
		case "subject_file":
			return true, one(opt, &t.SubjectFile)
		case "subject_header":
			if err := one(opt, &t.SubjectHeader); err != nil {
				return true, err
			}
			if !validHeaderName(t.SubjectHeader) {
				return true, d.Errf("token_exchange subject_header: invalid header name '%s'", t.SubjectHeader)
			}
		case "subject_token_type":
			return true, one(opt, &t.SubjectTokenType)
		case "actor_file":
			return true, one(opt, &t.ActorFile)
		case "actor_token_type":
			return true, one(opt, &t.ActorTokenType)
		case "requested_token_type":
			return true, one(opt, &t.RequestedTokenType)
		case "verify":
			// verify jwks <url> | verify issuer <url> | verify audience <aud...> | verify off
			args := d.RemainingArgs()
			switch {
			case len(args) == 2 && args[0] == "jwks":
				t.VerifyJWKSURL = args[1]
			case len(args) == 2 && args[0] == "issuer":
				t.VerifyIssuer = args[1]
			case len(args) >= 2 && args[0] == "audience":
				t.VerifyAudiences = append(t.VerifyAudiences, args[1:]...)
			case len(args) == 1 && args[0] == "off":
				t.VerifyOff = true
			default:
				return true, d.Errf("token_exchange verify: expected 'verify jwks <url>', 'verify issuer <url>', 'verify audience <aud...>' or 'verify off'")
			}
		case "cache_size", "miss_rate":
			var v string
			if !d.AllArgs(&v) {
				return true, d.Errf("token_exchange %s: expected one number", opt)
			}
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 || opt == "cache_size" && n != float64(int(n)) {
				return true, d.Errf("token_exchange %s: '%s' is not a positive number", opt, v)
			}
			if opt == "cache_size" {
				t.CacheSize = int(n)
			} else {
				t.MissRate = n
			}
		case "negative_ttl":
			var v string
			if !d.AllArgs(&v) {
				return true, d.Errf("token_exchange negative_ttl: expected one duration")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return true, d.Errf("token_exchange negative_ttl: '%s' is not a positive duration", v)
			}
			t.NegativeTTL = caddy.Duration(dur)
		default:
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	t.OAuth2 = *o
	switch {
	case (t.SubjectFile == "") == (t.SubjectHeader == ""):
		return nil, d.Err("token_exchange: exactly one of subject_file and subject_header is required")
	case t.SubjectHeader != "" && !t.VerifyOff && t.VerifyJWKSURL == "" && t.VerifyIssuer == "":
		return nil, d.Err("token_exchange: subject_header needs 'verify jwks <url>' or 'verify issuer <url>' (or 'verify off', with miss_rate)")
	case t.SubjectHeader != "" && !t.VerifyOff && len(t.VerifyAudiences) == 0:
		return nil, d.Err("token_exchange: verification needs 'verify audience <aud...>'")
	}
	return t, nil
}
