package sandbox

import (
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AccessClaims are the claims of a sandbox access token.
type AccessClaims struct {
	// Claims holds iss (the base URL the token was issued on), sub (usr_…),
	// iat, nbf, exp and jti.
	jwt.Claims
	// SessionID is the sid claim (ses_…).
	SessionID string `json:"sid"`
	// Scope is the space-separated scope claim; always present, often "".
	Scope string `json:"scope"`
}

// challengeClaims are the claims of a login challenge token. grant_mode is
// what tells it apart from an access token, so neither can pass as the
// other.
type challengeClaims struct {
	jwt.Claims
	GrantMode string `json:"grant_mode"`
}

const grantSessionStart = "session-start"

var signingAlgs = []jose.SignatureAlgorithm{jose.EdDSA}

func (s *Sandbox) initSigning() error {
	pub := jose.JSONWebKey{Key: s.signKey.Public(), Algorithm: string(jose.EdDSA), Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return fmt.Errorf("sandbox: thumbprint: %w", err)
	}
	s.kid = base64.RawURLEncoding.EncodeToString(tp)
	pub.KeyID = s.kid
	s.jwks = jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}
	s.signer, err = jose.NewSigner(
		jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: s.signKey, KeyID: s.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return fmt.Errorf("sandbox: signer: %w", err)
	}
	return nil
}

// stdClaims are the registered claims every sandbox token carries.
func (s *Sandbox) stdClaims(r *http.Request, subject string, ttl time.Duration) jwt.Claims {
	now := s.now()
	return jwt.Claims{
		Issuer:    baseURL(r),
		Subject:   subject,
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		ID:        randomToken(),
	}
}

func (s *Sandbox) sign(claims any) (string, error) {
	return jwt.Signed(s.signer).Claims(claims).Serialize()
}

// mintAccess signs an access token for sess with its granted step-up
// scopes; callers hold mu (for ttl and the scopes).
func (s *Sandbox) mintAccess(r *http.Request, sess *session) (string, time.Time, error) {
	c := AccessClaims{Claims: s.stdClaims(r, sess.user.id, s.ttl), SessionID: sess.id, Scope: s.scopeClaim(sess)}
	tok, err := s.sign(c)
	return tok, c.Expiry.Time(), err
}

// parseToken checks the signature and time claims of a sandbox JWT and
// decodes its claims into dest. No leeway: the sandbox clock is the truth,
// and clients are expected to refresh before exp, not at it.
func (s *Sandbox) parseToken(token string, std *jwt.Claims, dest any) error {
	t, err := jwt.ParseSigned(token, signingAlgs)
	if err != nil {
		return err
	}
	if len(t.Headers) != 1 || t.Headers[0].KeyID != s.kid {
		return errors.New("unknown signing key")
	}
	if err := t.Claims(s.signKey.Public(), dest); err != nil {
		return err
	}
	if std.Expiry == nil || std.NotBefore == nil {
		return errors.New("exp and nbf are required")
	}
	return std.ValidateWithLeeway(jwt.Expected{Time: s.now()}, 0)
}

// VerifyAccessToken checks an access token's signature (the sandbox's own
// key) and its exp and nbf against the sandbox clock. Session state is not
// consulted: like the real service, a token outlives its session's
// revocation until exp.
func (s *Sandbox) VerifyAccessToken(token string) (*AccessClaims, error) {
	var c struct {
		AccessClaims
		GrantMode *string `json:"grant_mode"`
	}
	if err := s.parseToken(token, &c.Claims, &c); err != nil {
		return nil, fmt.Errorf("sandbox: invalid access token: %w", err)
	}
	if c.GrantMode != nil || c.Subject == "" || c.SessionID == "" {
		return nil, errors.New("sandbox: invalid access token: not an access token")
	}
	return &c.AccessClaims, nil
}

// mintChallenge signs the single-use token that finalize exchanges for a
// session; callers hold mu.
func (s *Sandbox) mintChallenge(r *http.Request, u *user) (string, error) {
	c := challengeClaims{Claims: s.stdClaims(r, u.id, challengeLifetime), GrantMode: grantSessionStart}
	tok, err := s.sign(c)
	if err != nil {
		return "", err
	}
	s.challenges[c.ID] = &challenge{user: u}
	return tok, nil
}

// bearer authenticates the access token in the Authorization header.
func (s *Sandbox) bearer(w http.ResponseWriter, r *http.Request) (*AccessClaims, *apiError) {
	auth, _, aerr := singleHeader(r, "Authorization")
	if aerr != nil {
		return nil, aerr
	}
	scheme, token, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		// RFC 6750 §3.1: no error code when no credentials were sent.
		w.Header().Set("WWW-Authenticate", `Bearer realm="prelude_sandbox"`)
		return nil, errUnauthorized("missing_access_token", "an Authorization: Bearer access token is required")
	}
	c, err := s.VerifyAccessToken(token)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		return nil, errUnauthorized("invalid_access_token", err.Error())
	}
	return c, nil
}

func (s *Sandbox) handleJWKS(w http.ResponseWriter, _ *http.Request) *apiError {
	writeJSON(w, http.StatusOK, s.jwks)
	return nil
}

// handleWhoami is the demo resource: it shows a proxy's effect by echoing
// the verified claims and every header that arrived.
func (s *Sandbox) handleWhoami(w http.ResponseWriter, r *http.Request) *apiError {
	c, aerr := s.bearer(w, r)
	if aerr != nil {
		return aerr
	}
	headers := map[string]string{"Host": r.Host}
	for name, vals := range r.Header {
		headers[http.CanonicalHeaderKey(name)] = strings.Join(vals, ", ")
	}
	writeJSON(w, http.StatusOK, map[string]any{"claims": c, "headers": headers})
	return nil
}
