package oauth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// maxIDToken bounds the ID token accepted (and so IDToken.Claims).
const maxIDToken = 16 << 10

// idTokenAlgorithms are the signature algorithms an ID token may use:
// asymmetric only (an HS256 token would be verifiable with the client
// secret, which this flow never uses as a key), never "none".
var idTokenAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// idClaims are the claims checked (OpenID Connect Core §3.1.3.7).
type idClaims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	Expiry    *jwt.NumericDate `json:"exp"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	Nonce     string           `json:"nonce"`
	AZP       string           `json:"azp"`
}

// verifyIDToken checks raw as OpenID Connect Core §3.1.3.7 asks of a
// confidential or public client that got it from the token endpoint.
func (a *AuthCode) verifyIDToken(ctx context.Context, m *metadata, raw, nonce string, now time.Time) (*IDToken, error) {
	bad := func(format string, args ...any) *Error {
		e := newError("id_token", KindRejected, 0, ErrIDTokenInvalid)
		e.detail = fmt.Sprintf(format, args...)
		return e
	}
	switch {
	case raw == "":
		return nil, bad("the token response has no id_token (is openid among the scopes?)")
	case len(raw) > maxIDToken:
		return nil, bad("larger than %d bytes", maxIDToken)
	}
	tok, err := jwt.ParseSigned(raw, idTokenAlgorithms)
	if err != nil || len(tok.Headers) != 1 {
		return nil, bad("not a JWS-signed JWT with an asymmetric algorithm")
	}
	keys, err := a.keys.Keys(ctx, tok.Headers[0].KeyID, now)
	if err != nil {
		var oe *Error
		if errors.As(err, &oe) {
			return nil, oe
		}
		e := newError("id_token", KindTransient, 0, err)
		e.detail = "fetching the issuer's keys: " + err.Error()
		return nil, e
	}
	var c idClaims
	var all map[string]any
	verified := false
	for _, k := range keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if tok.Claims(k.Key, &c, &all) == nil {
			verified = true
			break
		}
	}
	clientID := a.c.cfg.ClientID
	switch {
	case !verified:
		return nil, bad("the signature does not verify with any of the issuer's keys")
	case c.Issuer != m.issuer:
		return nil, bad("iss is not the issuer")
	case !slices.Contains(c.Audience, clientID):
		return nil, bad("aud does not contain this client")
	case len(c.Audience) > 1 && c.AZP == "", c.AZP != "" && c.AZP != clientID:
		return nil, bad("azp is not this client")
	case c.Expiry == nil || c.IssuedAt == nil:
		return nil, bad("exp and iat are required")
	case !now.Before(c.Expiry.Time().Add(a.skew)):
		return nil, bad("expired")
	case c.IssuedAt.Time().After(now.Add(a.skew)):
		return nil, bad("issued in the future")
	case c.NotBefore != nil && c.NotBefore.Time().After(now.Add(a.skew)):
		return nil, bad("not yet valid")
	case subtle.ConstantTimeCompare([]byte(c.Nonce), []byte(nonce)) != 1:
		return nil, bad("nonce is not this login's")
	case !validSubject(c.Subject):
		return nil, bad("sub is missing or not 1 to 255 printable ASCII characters")
	}
	id := &IDToken{Subject: c.Subject, Claims: all}
	id.Email, _ = all["email"].(string)
	id.Name, _ = all["name"].(string)
	id.EmailVerified, _ = all["email_verified"].(bool)
	if !plainClaim(id.Email, 320) || strings.ContainsRune(id.Email, ' ') {
		id.Email, id.EmailVerified = "", false
	}
	if !plainClaim(id.Name, 256) {
		id.Name = ""
	}
	return id, nil
}

// validSubject: OpenID Connect Core §2 caps sub at 255 ASCII characters;
// control characters are refused too, since callers key sessions by it.
func validSubject(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// plainClaim reports whether s is valid UTF-8 text of at most max runes
// with no control characters (it may go into a header or a page).
func plainClaim(s string, max int) bool {
	return utf8.ValidString(s) && utf8.RuneCountInString(s) <= max && strings.IndexFunc(s, unicode.IsControl) < 0
}

// fetchKeys reads the issuer's JWKS (jwks_uri from its metadata).
func (a *AuthCode) fetchKeys(ctx context.Context) (*jose.JSONWebKeySet, error) {
	m, err := a.c.metadata(ctx)
	if err != nil {
		return nil, err
	}
	if m.jwks == nil {
		return nil, errors.New("the issuer's metadata names no jwks_uri")
	}
	body, status, err := a.c.get(ctx, m.jwks)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", m.jwks.Redacted(), status)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%s is not a JWK set", m.jwks.Redacted())
	}
	return &set, nil
}
