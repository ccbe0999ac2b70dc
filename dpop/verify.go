package dpop

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Verification failures. Every error Verify returns wraps exactly one of
// these, so callers can map it to a response with errors.Is and count it with
// Reason.
var (
	ErrMalformed    = errors.New("malformed proof")
	ErrBadType      = errors.New("typ is not dpop+jwt")
	ErrBadAlgorithm = errors.New("alg is not an accepted asymmetric algorithm")
	ErrPrivateKey   = errors.New("jwk contains private key material")
	ErrBadSignature = errors.New("signature does not verify")
	ErrMissingClaim = errors.New("required claim missing")
	ErrMethod       = errors.New("htm does not match the request method")
	ErrURL          = errors.New("htu does not match the request URL")
	ErrIssuedAt     = errors.New("iat outside the accepted window")
	ErrReplay       = errors.New("jti already used")
	ErrNonceMissing = errors.New("nonce required")
	ErrNonceInvalid = errors.New("nonce invalid or stale")
	ErrTokenHash    = errors.New("ath does not match the access token")
	ErrKeyMismatch  = errors.New("proof key does not match the bound key")
	ErrJTIMismatch  = errors.New("jti is not the one the proof is bound to")
)

var reasons = map[error]string{
	ErrMalformed:    "malformed",
	ErrBadType:      "bad_typ",
	ErrBadAlgorithm: "bad_alg",
	ErrPrivateKey:   "private_jwk",
	ErrBadSignature: "bad_signature",
	ErrMissingClaim: "missing_claim",
	ErrMethod:       "htm_mismatch",
	ErrURL:          "htu_mismatch",
	ErrIssuedAt:     "iat_window",
	ErrReplay:       "jti_replay",
	ErrNonceMissing: "nonce_missing",
	ErrNonceInvalid: "nonce_invalid",
	ErrTokenHash:    "ath_mismatch",
	ErrKeyMismatch:  "key_mismatch",
	ErrJTIMismatch:  "jti_mismatch",
}

// Reason returns a short stable label for a verification error (for
// metrics and test assertions), or "" if err is not one of this package's.
func Reason(err error) string {
	for e, r := range reasons {
		if errors.Is(err, e) {
			return r
		}
	}
	return ""
}

// DefaultAlgorithms are the algorithms a Verifier accepts when none are set.
var DefaultAlgorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.RS256, jose.PS256}

// Verifier checks DPoP proofs. Set it up once and share it: it holds the jti
// replay cache. The zero value is not usable; use NewVerifier.
type Verifier struct {
	// Algorithms accepted in the proof header.
	Algorithms []jose.SignatureAlgorithm
	// MaxAge is how far in the past iat may be.
	MaxAge time.Duration
	// MaxFuture is how far in the future iat may be (clock skew allowance).
	MaxFuture time.Duration
	// Now returns the current time; tests replace it.
	Now func() time.Time

	replay *ReplayCache
}

// NewVerifier returns a Verifier with a 60 s past and 5 s future iat window
// and a jti replay cache of at most capacity entries (100 000 when ≤ 0).
func NewVerifier(capacity int) *Verifier {
	return &Verifier{
		Algorithms: DefaultAlgorithms,
		MaxAge:     60 * time.Second,
		MaxFuture:  5 * time.Second,
		Now:        time.Now,
		replay:     NewReplayCache(capacity),
	}
}

// Expect is what a proof must match.
type Expect struct {
	// Method is the request's HTTP method.
	Method string
	// URL is the request URL as the server sees it (scheme, Host header and
	// path); query and fragment are ignored.
	URL *url.URL
	// Nonce, when non-nil, is called with the proof's nonce claim and
	// reports whether it is current. A nil func means nonces are not
	// required (a nonce the client sends anyway is ignored).
	Nonce func(nonce string) bool
	// AccessToken, when set, must hash to the proof's ath claim.
	AccessToken string
	// Thumbprint, when set, is the key the proof must be signed with (the
	// session's pinned key, or an access token's cnf.jkt).
	Thumbprint string
	// JTI, when set, is the jti the proof must carry: a challenge-bound
	// proof, as Prelude's step-up OTP check sends, whose jti is the
	// challenge token's. Such a proof is not entered in the replay cache:
	// the single-use challenge is what the server spends, and a mistyped
	// code is retried with the same challenge and so the same jti.
	JTI string
}

// Verified is what a valid proof tells the server.
type Verified struct {
	// Thumbprint is the RFC 7638 thumbprint of the proof's key.
	Thumbprint string
	// Key is the proof's public key.
	Key jose.JSONWebKey
	// Claims are the proof's claims.
	Claims Claims
}

// proofHeader holds the header members Verify checks itself.
type proofHeader struct {
	Typ string
	Alg string
	JWK json.RawMessage
}

// parseProofHeader reads typ, alg and jwk by their exact names. (Decoding
// into a struct would not do: encoding/json matches field names
// case-insensitively, so {"TYP":"dpop+jwt"} would pass the typ check while
// go-jose, which matches names exactly, sees no typ at all.) A typ or alg
// that is not a string reads as "".
func parseProofHeader(raw []byte) (proofHeader, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return proofHeader{}, err
	}
	var h proofHeader
	_ = json.Unmarshal(m["typ"], &h.Typ)
	_ = json.Unmarshal(m["alg"], &h.Alg)
	h.JWK = m["jwk"]
	return h, nil
}

// parseClaims reads the proof claims by their exact names, for the same
// reason as parseProofHeader: {"HTM":"POST"} must not count as htm. A claim
// of the wrong JSON type is an error (malformed); null counts as absent.
func parseClaims(raw []byte) (Claims, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Claims{}, err
	}
	var c Claims
	var iat float64 // NumericDate may carry a fraction
	for name, dst := range map[string]any{"jti": &c.JTI, "htm": &c.HTM, "htu": &c.HTU, "iat": &iat, "nonce": &c.Nonce, "ath": &c.ATH} {
		if v, ok := m[name]; ok {
			if err := json.Unmarshal(v, dst); err != nil {
				return Claims{}, fmt.Errorf("claim %s has the wrong type", name)
			}
		}
	}
	c.IAT = int64(iat)
	return c, nil
}

// privateMembers are JWK members that only private keys have (RFC 7518 §6).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// Verify checks proof against exp following RFC 9449 §4.3 and returns the
// proof's key thumbprint and claims. The jti is recorded only when every
// other check passed, so a rejected proof cannot burn a jti.
func (v *Verifier) Verify(proof string, exp Expect) (*Verified, error) {
	parts := strings.Split(proof, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	rawHeader, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header is not base64url", ErrMalformed)
	}
	hdr, err := parseProofHeader(rawHeader)
	if err != nil {
		return nil, fmt.Errorf("%w: header is not JSON", ErrMalformed)
	}
	if hdr.Typ != "dpop+jwt" {
		return nil, fmt.Errorf("%w: got %q", ErrBadType, hdr.Typ)
	}
	if !v.algAllowed(hdr.Alg) {
		return nil, fmt.Errorf("%w: got %q", ErrBadAlgorithm, hdr.Alg)
	}
	if len(hdr.JWK) == 0 || bytes.Equal(hdr.JWK, []byte("null")) {
		return nil, fmt.Errorf("%w: no jwk header", ErrMalformed)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(hdr.JWK, &members); err != nil {
		return nil, fmt.Errorf("%w: jwk is not an object", ErrMalformed)
	}
	for _, m := range privateMembers {
		if _, ok := members[m]; ok {
			return nil, fmt.Errorf("%w: member %q", ErrPrivateKey, m)
		}
	}
	jws, err := jose.ParseSignedCompact(proof, v.Algorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(jws.Signatures) != 1 || jws.Signatures[0].Header.JSONWebKey == nil {
		return nil, fmt.Errorf("%w: no usable jwk", ErrMalformed)
	}
	jwk := jws.Signatures[0].Header.JSONWebKey
	if !jwk.Valid() || !jwk.IsPublic() {
		return nil, fmt.Errorf("%w: jwk is not a valid public key", ErrMalformed)
	}
	payload, err := jws.Verify(jwk)
	if err != nil {
		return nil, ErrBadSignature
	}
	c, err := parseClaims(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: claims are not a JSON object", ErrMalformed)
	}
	if err := v.checkClaims(&c, exp); err != nil {
		return nil, err
	}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: thumbprint: %v", ErrMalformed, err)
	}
	thumb := base64.RawURLEncoding.EncodeToString(tp)
	if exp.Thumbprint != "" && thumb != exp.Thumbprint {
		return nil, ErrKeyMismatch
	}
	if exp.JTI != "" && c.JTI != exp.JTI {
		return nil, ErrJTIMismatch
	}
	if exp.JTI == "" && !v.replay.Add(thumb+"|"+c.JTI, time.Unix(c.IAT, 0).Add(v.MaxAge+v.MaxFuture), v.now()) {
		return nil, ErrReplay
	}
	return &Verified{Thumbprint: thumb, Key: *jwk, Claims: c}, nil
}

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func (v *Verifier) algAllowed(alg string) bool {
	if alg == "" || alg == "none" || strings.HasPrefix(alg, "HS") {
		return false
	}
	for _, a := range v.Algorithms {
		if string(a) == alg {
			return true
		}
	}
	return false
}

func (v *Verifier) checkClaims(c *Claims, exp Expect) error {
	switch {
	case c.JTI == "":
		return fmt.Errorf("%w: jti", ErrMissingClaim)
	case c.HTM == "":
		return fmt.Errorf("%w: htm", ErrMissingClaim)
	case c.HTU == "":
		return fmt.Errorf("%w: htu", ErrMissingClaim)
	case c.IAT == 0:
		return fmt.Errorf("%w: iat", ErrMissingClaim)
	}
	if c.HTM != exp.Method {
		return fmt.Errorf("%w: proof %q, request %q", ErrMethod, c.HTM, exp.Method)
	}
	if exp.URL == nil {
		return fmt.Errorf("%w: no request URL to compare with", ErrURL)
	}
	want, err := NormalizeHTU(exp.URL)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrURL, err)
	}
	got, err := url.Parse(c.HTU)
	if err != nil {
		return fmt.Errorf("%w: unparsable htu", ErrURL)
	}
	if norm, err := NormalizeHTU(got); err != nil || norm != want || got.RawQuery != "" || got.Fragment != "" {
		return fmt.Errorf("%w: proof %q, request %q", ErrURL, c.HTU, want)
	}
	now := v.now()
	iat := time.Unix(c.IAT, 0)
	if iat.Before(now.Add(-v.MaxAge)) || iat.After(now.Add(v.MaxFuture)) {
		return fmt.Errorf("%w: iat %d, now %d", ErrIssuedAt, c.IAT, now.Unix())
	}
	if exp.Nonce != nil {
		if c.Nonce == "" {
			return ErrNonceMissing
		}
		if !exp.Nonce(c.Nonce) {
			return ErrNonceInvalid
		}
	}
	if exp.AccessToken != "" && c.ATH != AccessTokenHash(exp.AccessToken) {
		return ErrTokenHash
	}
	return nil
}
