package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// SubjectAudience is the aud of SubjectIssuer's tokens.
const SubjectAudience = "gateway"

// SubjectIssuer signs subject tokens for token exchange tests (standing in
// for the users' identity provider, or a cluster's service-account
// issuer) and publishes its public keys at URL on loopback. Pass JWKS as
// ProviderOptions.SubjectJWKS so oidc-provider accepts them.
type SubjectIssuer struct {
	// URL serves the JWKS.
	URL string
	// JWKS holds the public key.
	JWKS *jose.JSONWebKeySet

	signer jose.Signer
}

// NewSubjectIssuer starts a SubjectIssuer with a fresh ES256 key; it stops
// when the test ends.
func NewSubjectIssuer(t testing.TB) *SubjectIssuer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: "subj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "subj", Algorithm: "ES256", Use: "sig"}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(set) }))
	t.Cleanup(srv.Close)
	return &SubjectIssuer{URL: srv.URL, JWKS: set, signer: s}
}

// Token signs a subject token for sub, aud SubjectAudience, valid an hour.
func (si *SubjectIssuer) Token(t testing.TB, sub string) string {
	now := time.Now()
	tok, err := jwt.Signed(si.signer).Claims(jwt.Claims{Subject: sub, Audience: jwt.Audience{SubjectAudience},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now)}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
