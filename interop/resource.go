package interop

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// ResourceServerOptions configure a ResourceServer.
type ResourceServerOptions struct {
	// JWKSURL is where the access-token signing keys are fetched from (the
	// provider's JWKSURL). Keys are cached; an unknown kid triggers one
	// refetch, at most every 10 s.
	JWKSURL string
	// KeySet, when set, is used instead of fetching JWKSURL.
	KeySet *jose.JSONWebKeySet
	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Audience, when set, must be one of the token's aud values (the
	// resource indicator the token was requested for).
	Audience string
	// RequireNonce makes the server demand its own DPoP nonce: a proof
	// without a current one gets 401 use_dpop_nonce and a DPoP-Nonce.
	RequireNonce bool
	// AllowBearer accepts "Authorization: Bearer" tokens that are not
	// DPoP-bound (a bound token presented as Bearer is always rejected,
	// RFC 9449 §7.2).
	AllowBearer bool
	// Scheme is the scheme the server is reached with, for the expected
	// htu; default "http". The host is the Host header received, the path
	// the escaped request path: exactly what a real server behind no
	// rewriting proxy sees.
	Scheme string
	// Verifier checks proofs; nil means dpop.NewVerifier(0). It holds the
	// jti replay cache.
	Verifier *dpop.Verifier
	// Now is the clock for token exp/nbf; nil means time.Now.
	Now func() time.Time
	// ClockOffset puts the server's clock this far ahead of Now (behind
	// when negative): token exp/nbf, the proofs' iat window, nonces and
	// the Date header all read the shifted clock, as on a server whose
	// clock is off.
	ClockOffset time.Duration
}

// ResourceServer is an http.Handler that accepts requests only with a valid
// DPoP-bound JWT access token (RFC 9068 "at+jwt", as oidc-provider issues
// for resource indicators) and a valid DPoP proof, as RFC 9449 §7 asks of a
// resource server:
//
//   - Authorization: DPoP <token> (scheme case-insensitive) and exactly one
//     DPoP header;
//   - token: signature against the JWKS, typ at+jwt, exp/nbf, iss and aud
//     when configured, and a cnf.jkt; a token with cnf x5t#S256 (RFC 8705
//     §3) only over TLS with that client certificate
//     (StartTLSResourceServer), and as Bearer unless also DPoP-bound;
//   - proof (dpop.Verifier): typ, alg, signature, htm = the method, htu =
//     scheme + Host header + escaped path, iat window, jti not replayed,
//     ath = hash of the token, key thumbprint = cnf.jkt, and the server's
//     nonce when RequireNonce.
//
// A success answers 200 with JSON {"sub", "client_id", "scope", "htu",
// "method", "path", "query", "headers"}; "headers" echoes the request
// headers with Authorization cut to its scheme and DPoP to "[proof]".
// Failures answer 401 with WWW-Authenticate: DPoP error="invalid_token",
// "invalid_dpop_proof" or "use_dpop_nonce" (plus algs), and are counted by
// reason (see Stats). It is safe for concurrent use.
//
// It is written to be copied: nothing in it is specific to tests.
type ResourceServer struct {
	// URL is the base URL when started with StartResourceServer.
	URL string

	opts     ResourceServerOptions
	verifier *dpop.Verifier
	client   *http.Client

	mu        sync.Mutex
	keys      *jose.JSONWebKeySet
	fetchedAt time.Time
	nonces    map[string]time.Time // issued nonce → expiry
	stats     map[string]int64
}

// Reasons counted by Stats besides dpop.Reason labels.
const (
	ReasonAccepted         = "accepted"
	ReasonMissingToken     = "missing_token"
	ReasonBadScheme        = "bad_scheme"
	ReasonBearerNotAllowed = "bearer_not_allowed"
	ReasonBoundAsBearer    = "bound_token_as_bearer"
	ReasonInvalidToken     = "invalid_token"
	ReasonUnboundToken     = "unbound_token"
	ReasonProofCount       = "proof_count"
	ReasonNonceChallenge   = "use_dpop_nonce"
	// ReasonCertificate: a certificate-bound token (cnf x5t#S256, RFC
	// 8705 §3) came without the TLS client certificate it is bound to.
	ReasonCertificate = "certificate_mismatch"
)

// nonceLifetime is how long an RS nonce is accepted after it was issued.
const nonceLifetime = 5 * time.Minute

// NewResourceServer returns a ResourceServer for opts.
func NewResourceServer(opts ResourceServerOptions) *ResourceServer {
	rs := &ResourceServer{
		opts:     opts,
		verifier: opts.Verifier,
		client:   &http.Client{Timeout: 10 * time.Second},
		keys:     opts.KeySet,
		nonces:   map[string]time.Time{},
		stats:    map[string]int64{},
	}
	if rs.opts.Scheme == "" {
		rs.opts.Scheme = "http"
	}
	if rs.opts.Now == nil {
		rs.opts.Now = time.Now
	}
	if off := opts.ClockOffset; off != 0 {
		now := rs.opts.Now
		rs.opts.Now = func() time.Time { return now().Add(off) }
	}
	if rs.verifier == nil {
		rs.verifier = dpop.NewVerifier(0)
		rs.verifier.Now = rs.opts.Now
	}
	return rs
}

// StartResourceServer starts rs (built from opts) on a 127.0.0.1 port,
// sets its URL, and closes it when the test ends.
func StartResourceServer(t testing.TB, opts ResourceServerOptions) *ResourceServer {
	t.Helper()
	rs := NewResourceServer(opts)
	srv := httptest.NewServer(rs)
	t.Cleanup(srv.Close)
	rs.URL = srv.URL
	return rs
}

// Stats returns how many requests were accepted (ReasonAccepted) and
// rejected, by reason: the Reason* constants and dpop.Reason labels
// ("htu_mismatch", "htm_mismatch", "ath_mismatch", "jti_replay",
// "key_mismatch", ...).
func (rs *ResourceServer) Stats() map[string]int64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return maps.Clone(rs.stats)
}

func (rs *ResourceServer) count(reason string) {
	rs.mu.Lock()
	rs.stats[reason]++
	rs.mu.Unlock()
}

// tokenClaims are the RFC 9068 claims checked or echoed.
type tokenClaims struct {
	Iss      string          `json:"iss"`
	Sub      string          `json:"sub"`
	ClientID string          `json:"client_id"`
	Scope    string          `json:"scope"`
	Aud      json.RawMessage `json:"aud"`
	Exp      *float64        `json:"exp"`
	Nbf      *float64        `json:"nbf"`
	Cnf      struct {
		JKT string `json:"jkt"`
		X5T string `json:"x5t#S256"`
	} `json:"cnf"`
}

// ServeHTTP implements http.Handler.
func (rs *ResourceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Date on the server's own clock (net/http would send the host's).
	w.Header().Set("Date", rs.opts.Now().UTC().Format(http.TimeFormat))
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	bearer := strings.EqualFold(scheme, "Bearer")
	switch {
	case token == "":
		rs.reject(w, ReasonMissingToken, "", "")
		return
	case bearer && !rs.opts.AllowBearer:
		rs.reject(w, ReasonBearerNotAllowed, "invalid_token", "DPoP-bound token required")
		return
	case !bearer && !strings.EqualFold(scheme, "DPoP"):
		rs.reject(w, ReasonBadScheme, "invalid_token", "unsupported authorization scheme")
		return
	}
	claims, err := rs.verifyToken(r.Context(), token)
	switch {
	case err != nil:
		rs.reject(w, ReasonInvalidToken, "invalid_token", err.Error())
	case claims.Cnf.X5T != "" && claims.Cnf.X5T != certificateOf(r):
		// RFC 8705 §3: only the holder of the bound certificate's key.
		rs.reject(w, ReasonCertificate, "invalid_token", "token is bound to another TLS client certificate")
	case bearer && claims.Cnf.JKT != "":
		// RFC 9449 §7.2: a stolen bound token must not work without its key.
		rs.reject(w, ReasonBoundAsBearer, "invalid_token", "DPoP-bound token presented as Bearer")
	case bearer:
		rs.accept(w, r, claims, "")
	case claims.Cnf.JKT == "" && claims.Cnf.X5T != "":
		rs.reject(w, ReasonBadScheme, "invalid_token", "a certificate-bound token is presented as Bearer")
	case claims.Cnf.JKT == "":
		rs.reject(w, ReasonUnboundToken, "invalid_token", "token is not DPoP-bound")
	default:
		rs.serveDPoP(w, r, token, claims)
	}
}

// serveDPoP checks the proof of a request whose bound token verified.
func (rs *ResourceServer) serveDPoP(w http.ResponseWriter, r *http.Request, token string, claims *tokenClaims) {
	proofs := r.Header.Values("DPoP")
	if len(proofs) != 1 {
		rs.reject(w, ReasonProofCount, "invalid_dpop_proof", "exactly one DPoP header is required")
		return
	}
	exp := dpop.Expect{
		Method:      r.Method,
		URL:         &url.URL{Scheme: rs.opts.Scheme, Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath},
		AccessToken: token,
		Thumbprint:  claims.Cnf.JKT,
	}
	if rs.opts.RequireNonce {
		exp.Nonce = rs.nonceValid
	}
	v, err := rs.verifier.Verify(proofs[0], exp)
	switch {
	case errors.Is(err, dpop.ErrNonceMissing) || errors.Is(err, dpop.ErrNonceInvalid):
		w.Header().Set("DPoP-Nonce", rs.newNonce())
		rs.reject(w, ReasonNonceChallenge, "use_dpop_nonce", "resource server requires a nonce")
	case err != nil:
		rs.reject(w, dpop.Reason(err), "invalid_dpop_proof", err.Error())
	default:
		rs.accept(w, r, claims, v.Claims.HTU)
	}
}

// accept writes the 200 echo.
func (rs *ResourceServer) accept(w http.ResponseWriter, r *http.Request, c *tokenClaims, htu string) {
	rs.count(ReasonAccepted)
	if rs.opts.RequireNonce {
		// Servers may rotate nonces on success too (RFC 9449 §8.2).
		w.Header().Set("DPoP-Nonce", rs.newNonce())
	}
	headers := map[string][]string{}
	for k, vs := range r.Header {
		switch k {
		case "Authorization":
			s, _, _ := strings.Cut(vs[0], " ")
			headers[k] = []string{s}
		case "Dpop":
			headers[k] = []string{"[proof]"}
		default:
			headers[k] = vs
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"sub": c.Sub, "client_id": c.ClientID, "scope": c.Scope,
		"htu": htu, "method": r.Method, "path": r.URL.EscapedPath(), "query": r.URL.RawQuery,
		"headers": headers,
	})
}

// reject answers 401 with an RFC 9449 §7.1 challenge and counts reason.
func (rs *ResourceServer) reject(w http.ResponseWriter, reason, code, desc string) {
	rs.count(reason)
	algs := make([]string, len(rs.verifier.Algorithms))
	for i, a := range rs.verifier.Algorithms {
		algs[i] = string(a)
	}
	challenge := fmt.Sprintf("DPoP algs=%q", strings.Join(algs, " "))
	if code != "" {
		challenge += fmt.Sprintf(", error=%q, error_description=%q", code, strings.ReplaceAll(desc, `"`, "'"))
	}
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc, "reason": reason})
}

// verifyToken checks an RFC 9068 JWT access token.
func (rs *ResourceServer) verifyToken(ctx context.Context, token string) (*tokenClaims, error) {
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.EdDSA, jose.RS256, jose.PS256})
	if err != nil {
		return nil, errors.New("token is not a signed JWT")
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	hdr := jws.Signatures[0].Header
	typ, _ := hdr.ExtraHeaders[jose.HeaderType].(string)
	if t := strings.ToLower(typ); t != "at+jwt" && t != "application/at+jwt" {
		// RFC 9068 §4: keeps ID tokens and other JWTs from passing as
		// access tokens.
		return nil, fmt.Errorf("token typ %q is not at+jwt", typ)
	}
	key, err := rs.key(ctx, hdr.KeyID)
	if err != nil {
		return nil, err
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return nil, errors.New("token signature does not verify")
	}
	var c tokenClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, errors.New("token claims are not JSON")
	}
	now := float64(rs.opts.Now().Unix())
	switch {
	case c.Exp == nil:
		return nil, errors.New("token has no exp")
	case *c.Exp <= now:
		return nil, errors.New("token expired")
	case c.Nbf != nil && *c.Nbf > now+5:
		return nil, errors.New("token not yet valid")
	case rs.opts.Issuer != "" && c.Iss != rs.opts.Issuer:
		return nil, fmt.Errorf("token issuer %q not accepted", c.Iss)
	case rs.opts.Audience != "" && !hasAudience(c.Aud, rs.opts.Audience):
		return nil, errors.New("token audience does not include this resource")
	}
	return &c, nil
}

// hasAudience reports whether aud (a string or an array) contains want.
func hasAudience(aud json.RawMessage, want string) bool {
	var one string
	if json.Unmarshal(aud, &one) == nil {
		return one == want
	}
	var many []string
	return json.Unmarshal(aud, &many) == nil && slices.Contains(many, want)
}

// key returns the verification key for kid, refetching the JWKS once when
// kid is unknown (the provider may have rotated keys).
func (rs *ResourceServer) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if k := lookupKey(rs.keys, kid); k != nil {
		return k, nil
	}
	if rs.opts.JWKSURL == "" || time.Since(rs.fetchedAt) < 10*time.Second {
		return nil, fmt.Errorf("no signing key %q", kid)
	}
	rs.fetchedAt = time.Now()
	set, err := fetchJWKS(ctx, rs.client, rs.opts.JWKSURL)
	if err != nil {
		return nil, err
	}
	rs.keys = set
	if k := lookupKey(set, kid); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("no signing key %q", kid)
}

func lookupKey(set *jose.JSONWebKeySet, kid string) *jose.JSONWebKey {
	if set == nil {
		return nil
	}
	for _, k := range set.Keys {
		if (kid == "" || k.KeyID == kid) && k.Use != "enc" {
			return &k
		}
	}
	return nil
}

// fetchJWKS GETs a JWK set (bounded to 1 MiB).
func fetchJWKS(ctx context.Context, hc *http.Client, u string) (*jose.JSONWebKeySet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching JWKS: HTTP %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("decoding JWKS: %w", err)
	}
	return &set, nil
}

// newNonce issues a random nonce valid for nonceLifetime. The set is
// bounded: expired nonces are dropped as new ones are issued.
func (rs *ResourceServer) newNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	n := base64.RawURLEncoding.EncodeToString(b[:])
	now := rs.opts.Now()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for k, exp := range rs.nonces {
		if now.After(exp) || len(rs.nonces) > 10_000 {
			delete(rs.nonces, k)
		}
	}
	rs.nonces[n] = now.Add(nonceLifetime)
	return n
}

// nonceValid reports whether n was issued here and has not expired.
func (rs *ResourceServer) nonceValid(n string) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	exp, ok := rs.nonces[n]
	return ok && rs.opts.Now().Before(exp)
}
