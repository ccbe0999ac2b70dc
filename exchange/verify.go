package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenwarden/caddy-inject-token/internal/jwks"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
)

// Verify says how per-request subject tokens are checked before they are
// exchanged. One of JWKSURL, Issuer or Off is required with a subject
// header.
type Verify struct {
	// JWKSURL is where the subject issuer's signing keys are published.
	JWKSURL string `json:"jwks_url,omitempty"`
	// Issuer is the subjects' issuer: their iss must be it, and without
	// JWKSURL its keys are found through OpenID Connect discovery.
	Issuer string `json:"issuer,omitempty"`
	// Audiences: a subject's aud must contain one of them. Required
	// unless Off.
	Audiences []string `json:"audiences,omitempty"`
	// Off turns verification off: the token server alone judges subjects,
	// and exchanges for new subjects are rate-limited (miss_rate).
	Off bool `json:"off,omitempty"`
}

// keyRefetchEvery bounds how often an unknown key ID makes the verifier
// fetch the key set again: junk key IDs must not become a JWKS storm.
const keyRefetchEvery = 30 * time.Second

// algorithms a subject may be signed with.
var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// verifier checks JWT subjects against their issuer's published keys.
type verifier struct {
	jwksURL, issuer string
	auds            []string
	hc              *http.Client

	keys jwks.Cache
}

func newVerifier(cfg *Config) (*verifier, error) {
	v := cfg.Verify
	if v.JWKSURL == "" && v.Issuer == "" {
		return nil, errors.New("token_exchange: a subject header needs verify jwks_url or issuer (or verify off)")
	}
	if len(v.Audiences) == 0 {
		return nil, errors.New("token_exchange: verify needs the audiences a subject must be for")
	}
	for _, u := range []string{v.JWKSURL, v.Issuer} {
		if _, err := wire.CheckURL(u, true); u != "" && err != nil {
			return nil, fmt.Errorf("token_exchange verify %q: %w", u, err)
		}
	}
	ver := &verifier{jwksURL: v.JWKSURL, issuer: v.Issuer, auds: v.Audiences, hc: wire.NoPostRedirects(cfg.HTTPClient, 10*time.Second)}
	ver.keys = jwks.Cache{Fetch: ver.fetch, MinRefetch: keyRefetchEvery}
	return ver, nil
}

// verify checks subject's signature, exp (required), nbf, iss and aud.
func (v *verifier) verify(ctx context.Context, subject string, now time.Time) error {
	tok, err := jwt.ParseSigned(subject, algorithms)
	if err != nil || len(tok.Headers) != 1 {
		return invalid("not a signed JWT")
	}
	keys, err := v.keys.Keys(ctx, tok.Headers[0].KeyID, now)
	if err != nil {
		return &Error{Failure: failureRetry, detail: "subject keys: " + err.Error()}
	}
	var claims jwt.Claims
	verified := false
	for _, k := range keys {
		if tok.Claims(k.Key, &claims) == nil {
			verified = true
			break
		}
	}
	switch {
	case !verified:
		return invalid("signature")
	case claims.Expiry == nil:
		return invalid("no exp")
	}
	err = claims.ValidateWithLeeway(jwt.Expected{Issuer: v.issuer, AnyAudience: v.auds, Time: now}, 0)
	if err != nil {
		return invalid(err.Error())
	}
	return nil
}

// fetch reads the key set, discovering its URL from the issuer if needed.
func (v *verifier) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	u := v.jwksURL
	if u == "" {
		var meta struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := v.getJSON(ctx, strings.TrimSuffix(v.issuer, "/")+"/.well-known/openid-configuration", &meta); err != nil {
			return nil, err
		}
		if meta.JWKSURI == "" {
			return nil, errors.New("issuer metadata has no jwks_uri")
		}
		u = meta.JWKSURI
	}
	var set jose.JSONWebKeySet
	if err := v.getJSON(ctx, u, &set); err != nil {
		return nil, err
	}
	return &set, nil
}

func (v *verifier) getJSON(ctx context.Context, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := v.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
}
