package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

const (
	testTarget = "https://as.example/token"
	testToken  = "access-token-1"
	testNonce  = "nonce-1"
)

// verifyFixture is a key, a matching proof, and the Expect that accepts it
// at t0: POST testTarget with a required nonce, an access token and a
// pinned thumbprint, so every check is live.
type verifyFixture struct {
	key, other *Key
	exp        Expect
}

func newVerifyFixture(t *testing.T, alg Algorithm) *verifyFixture {
	t.Helper()
	k := mustKey(t, alg)
	return &verifyFixture{
		key:   k,
		other: mustKey(t, alg),
		exp: Expect{
			Method:      "POST",
			URL:         mustURL(t, testTarget),
			Nonce:       func(n string) bool { return n == testNonce },
			AccessToken: testToken,
			Thumbprint:  k.Thumbprint(),
		},
	}
}

func (f *verifyFixture) proof(t *testing.T) string {
	t.Helper()
	return mustProof(t, f.key, "POST", testTarget, ProofOptions{Now: t0, Nonce: testNonce, AccessToken: testToken})
}

// claims is the claim set of a valid proof, for hand-made variants.
func (f *verifyFixture) claims() map[string]any {
	c := claimsAt("POST", testTarget)
	c["nonce"] = testNonce
	c["ath"] = AccessTokenHash(testToken)
	return c
}

// sign hand-signs claims under header with the fixture key.
func (f *verifyFixture) sign(t *testing.T, header, claims any) string {
	t.Helper()
	return handSign(t, f.key.private.Signer, header, claims)
}

// header is proofHeaderFor(key) with the given members replaced, or
// removed when the value is nil.
func (f *verifyFixture) header(set map[string]any) map[string]any {
	h := proofHeaderFor(f.key)
	for name, v := range set {
		if v == nil {
			delete(h, name)
		} else {
			h[name] = v
		}
	}
	return h
}

// assertRejected checks err wraps want, and only want, and that Reason
// names it.
func assertRejected(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("Verify succeeded, want %v", want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("Verify error %q does not wrap %q", err, want)
	}
	if got := Reason(err); got == "" || got != reasons[want] {
		t.Fatalf("Reason(%q) = %q, want %q", err, got, reasons[want])
	}
	for other := range reasons {
		if other != want && errors.Is(err, other) {
			t.Fatalf("Verify error %q also wraps %q", err, other)
		}
	}
}

func TestVerifyAccepts(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			f := newVerifyFixture(t, alg)
			got, err := verifierAt(t0).Verify(f.proof(t), f.exp)
			if err != nil {
				t.Fatal(err)
			}
			if got.Thumbprint != f.key.Thumbprint() {
				t.Errorf("Thumbprint = %s, want %s", got.Thumbprint, f.key.Thumbprint())
			}
			c := got.Claims
			if c.HTM != "POST" || c.HTU != testTarget || c.IAT != t0.Unix() || c.Nonce != testNonce ||
				c.ATH != AccessTokenHash(testToken) || c.JTI == "" {
				t.Errorf("Claims = %+v", c)
			}
			if !got.Key.IsPublic() {
				t.Errorf("Verified.Key is not public")
			}
		})
	}
}

// TestVerifyAcceptsVariants covers inputs a strict-but-correct verifier must
// still accept.
func TestVerifyAcceptsVariants(t *testing.T) {
	k := mustKey(t, ES256)
	for _, tc := range []struct {
		name        string
		target      string // the client's URL
		request     string // the server's view
		proofAt     time.Time
		now         time.Time
		nonce       string
		expectNonce bool
	}{
		{"normalised URL", "HTTPS://AS.Example:443/token?a=1#f", "https://as.example/token?b=2", t0, t0, "", false},
		{"default http port", "http://as.example/x", "http://as.example:80/x", t0, t0, "", false},
		{"iat at max age", testTarget, testTarget, t0, t0.Add(60 * time.Second), "", false},
		{"iat at max future", testTarget, testTarget, t0.Add(5 * time.Second), t0, "", false},
		{"unrequested nonce ignored", testTarget, testTarget, t0, t0, "whatever", false},
		{"required nonce", testTarget, testTarget, t0, t0, testNonce, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustProof(t, k, "GET", tc.target, ProofOptions{Now: tc.proofAt, Nonce: tc.nonce, AccessToken: "ignored when not expected"})
			exp := Expect{Method: "GET", URL: mustURL(t, tc.request)}
			if tc.expectNonce {
				exp.Nonce = func(n string) bool { return n == testNonce }
			}
			if _, err := verifierAt(tc.now).Verify(p, exp); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	f := newVerifyFixture(t, ES256)
	withClaims := func(edit func(c map[string]any)) func(t *testing.T) string {
		return func(t *testing.T) string {
			c := f.claims()
			edit(c)
			return f.sign(t, f.header(nil), c)
		}
	}
	withHeader := func(set map[string]any) func(t *testing.T) string {
		return func(t *testing.T) string { return f.sign(t, f.header(set), f.claims()) }
	}
	literal := func(s string) func(*testing.T) string { return func(*testing.T) string { return s } }
	// Header JSON written by hand, so member names and order are exact.
	jwkJSON, err := f.key.PublicJWK().MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	rawHeader := func(members string) func(t *testing.T) string {
		return func(t *testing.T) string { return f.sign(t, "{"+members+`,"jwk":`+string(jwkJSON)+"}", f.claims()) }
	}
	ed := mustKey(t, EdDSA)

	for _, tc := range []struct {
		name  string
		proof func(t *testing.T) string
		edit  func(e *Expect)
		now   time.Time // zero: t0
		want  error
	}{
		{name: "empty", proof: literal(""), want: ErrMalformed},
		{name: "two segments", proof: literal("a.b"), want: ErrMalformed},
		{name: "four segments", proof: func(t *testing.T) string { return f.proof(t) + ".x" }, want: ErrMalformed},
		{name: "header not base64url", proof: literal("!!!." + b64.EncodeToString([]byte("{}")) + ".sig"), want: ErrMalformed},
		{name: "header not JSON", proof: literal(b64.EncodeToString([]byte("not json")) + ".e30.sig"), want: ErrMalformed},
		{name: "header not object", proof: func(t *testing.T) string { return f.sign(t, "[1,2]", f.claims()) }, want: ErrMalformed},
		{name: "no jwk", proof: withHeader(map[string]any{"jwk": nil}), want: ErrMalformed},
		{name: "jwk null", proof: rawHeader(`"typ":"dpop+jwt","alg":"ES256","jwk":null,"x":1`), want: ErrMalformed},
		{name: "jwk not object", proof: withHeader(map[string]any{"jwk": "key"}), want: ErrMalformed},
		{name: "jwk off curve", proof: withHeader(map[string]any{"jwk": map[string]string{
			"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(make([]byte, 32)), "y": b64.EncodeToString(make([]byte, 32)),
		}}), want: ErrMalformed},
		{name: "duplicate header member", proof: rawHeader(`"typ":"JWT","typ":"dpop+jwt","alg":"ES256"`), want: ErrMalformed},
		{name: "claims not JSON", proof: func(t *testing.T) string { return f.sign(t, f.header(nil), "not json") }, want: ErrMalformed},
		{name: "signature not base64url", proof: func(t *testing.T) string { return f.proof(t) + "!" }, want: ErrMalformed},

		{name: "typ JWT", proof: withHeader(map[string]any{"typ": "JWT"}), want: ErrBadType},
		{name: "typ not a string", proof: withHeader(map[string]any{"typ": []string{"dpop+jwt"}}), want: ErrBadType},
		{name: "typ missing", proof: withHeader(map[string]any{"typ": nil}), want: ErrBadType},
		{name: "typ only in other case", proof: rawHeader(`"TYP":"dpop+jwt","alg":"ES256"`), want: ErrBadType},
		{name: "typ JWT plus TYP", proof: rawHeader(`"typ":"JWT","TYP":"dpop+jwt","alg":"ES256"`), want: ErrBadType},

		{name: "alg none", proof: func(t *testing.T) string {
			return handSign(t, nil, f.header(map[string]any{"alg": "none"}), f.claims())
		}, want: ErrBadAlgorithm},
		{name: "alg missing", proof: withHeader(map[string]any{"alg": nil}), want: ErrBadAlgorithm},
		{name: "alg HS256", proof: func(t *testing.T) string {
			// A real HMAC over the input keyed with the public x coordinate:
			// the classic alg-confusion forgery.
			unsigned := handSign(t, nil, f.header(map[string]any{"alg": "HS256"}), f.claims())
			input := strings.TrimSuffix(unsigned, ".")
			mac := hmac.New(sha256.New, []byte(f.key.Thumbprint()))
			mac.Write([]byte(input))
			return input + "." + b64.EncodeToString(mac.Sum(nil))
		}, want: ErrBadAlgorithm},
		{name: "alg ES256K", proof: withHeader(map[string]any{"alg": "ES256K"}), want: ErrBadAlgorithm},
		{name: "alg lowercase", proof: withHeader(map[string]any{"alg": "es256"}), want: ErrBadAlgorithm},

		{name: "private EC jwk", proof: withHeader(map[string]any{"jwk": privateJWK(t, f.key)}), want: ErrPrivateKey},
		{name: "private Ed25519 jwk", proof: func(t *testing.T) string {
			h := map[string]any{"typ": "dpop+jwt", "alg": "EdDSA", "jwk": privateJWK(t, ed)}
			return handSign(t, ed.private.Signer, h, f.claims())
		}, want: ErrPrivateKey},
		{name: "private jwk next to JWK", proof: func(t *testing.T) string {
			return f.sign(t, `{"typ":"dpop+jwt","alg":"ES256","jwk":`+string(privateJWK(t, f.key))+`,"JWK":`+string(jwkJSON)+`}`, f.claims())
		}, want: ErrPrivateKey},
		{name: "symmetric jwk", proof: withHeader(map[string]any{"jwk": map[string]string{"kty": "oct", "k": "c2VjcmV0"}}), want: ErrPrivateKey},

		{name: "payload swapped", proof: func(t *testing.T) string {
			a, b := strings.Split(f.proof(t), "."), strings.Split(f.proof(t), ".")
			return a[0] + "." + b[1] + "." + a[2]
		}, want: ErrBadSignature},
		{name: "signed by another key", proof: func(t *testing.T) string {
			return handSign(t, f.other.private.Signer, f.header(nil), f.claims())
		}, want: ErrBadSignature},
		{name: "empty signature", proof: func(t *testing.T) string { return handSign(t, nil, f.header(nil), f.claims()) }, want: ErrBadSignature},
		{name: "alg does not fit key", proof: withHeader(map[string]any{"alg": "EdDSA"}), want: ErrBadSignature},

		{name: "jti missing", proof: withClaims(func(c map[string]any) { delete(c, "jti") }), want: ErrMissingClaim},
		{name: "htm missing", proof: withClaims(func(c map[string]any) { delete(c, "htm") }), want: ErrMissingClaim},
		{name: "htu missing", proof: withClaims(func(c map[string]any) { delete(c, "htu") }), want: ErrMissingClaim},
		{name: "iat missing", proof: withClaims(func(c map[string]any) { delete(c, "iat") }), want: ErrMissingClaim},

		{name: "htm other method", proof: f.proof, edit: func(e *Expect) { e.Method = "GET" }, want: ErrMethod},
		{name: "htm lowercase", proof: withClaims(func(c map[string]any) { c["htm"] = "post" }), want: ErrMethod},

		{name: "htu other path", proof: f.proof, edit: func(e *Expect) { e.URL = mustURL(t, "https://as.example/revoke") }, want: ErrURL},
		{name: "htu other host", proof: f.proof, edit: func(e *Expect) { e.URL = mustURL(t, "https://rs.example/token") }, want: ErrURL},
		{name: "htu other scheme", proof: f.proof, edit: func(e *Expect) { e.URL = mustURL(t, "http://as.example/token") }, want: ErrURL},
		{name: "htu other port", proof: f.proof, edit: func(e *Expect) { e.URL = mustURL(t, "https://as.example:8443/token") }, want: ErrURL},
		{name: "htu with query", proof: withClaims(func(c map[string]any) { c["htu"] = testTarget + "?x=1" }), want: ErrURL},
		{name: "htu relative", proof: withClaims(func(c map[string]any) { c["htu"] = "/token" }), want: ErrURL},
		{name: "htu unparsable", proof: withClaims(func(c map[string]any) { c["htu"] = "https://as.example/%zz" }), want: ErrURL},

		{name: "iat too old", proof: f.proof, now: t0.Add(61 * time.Second), want: ErrIssuedAt},
		{name: "iat in future", proof: f.proof, now: t0.Add(-6 * time.Second), want: ErrIssuedAt},
		{name: "iat negative", proof: withClaims(func(c map[string]any) { c["iat"] = -1 }), want: ErrIssuedAt},

		{name: "nonce missing", proof: withClaims(func(c map[string]any) { delete(c, "nonce") }), want: ErrNonceMissing},
		{name: "nonce invalid", proof: withClaims(func(c map[string]any) { c["nonce"] = "stale" }), want: ErrNonceInvalid},

		{name: "ath mismatch", proof: f.proof, edit: func(e *Expect) { e.AccessToken = "other-token" }, want: ErrTokenHash},
		{name: "ath missing", proof: withClaims(func(c map[string]any) { delete(c, "ath") }), want: ErrTokenHash},

		{name: "key mismatch", proof: f.proof, edit: func(e *Expect) { e.Thumbprint = f.other.Thumbprint() }, want: ErrKeyMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp := f.exp
			if tc.edit != nil {
				tc.edit(&exp)
			}
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			_, err := verifierAt(now).Verify(tc.proof(t), exp)
			assertRejected(t, err, tc.want)
		})
	}
}

func TestVerifyReplay(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			f := newVerifyFixture(t, alg)
			v := verifierAt(t0)
			p := f.proof(t)
			if _, err := v.Verify(p, f.exp); err != nil {
				t.Fatal(err)
			}
			_, err := v.Verify(p, f.exp)
			assertRejected(t, err, ErrReplay)
			// Later, while the proof is still inside its window.
			v.Now = func() time.Time { return t0.Add(60 * time.Second) }
			_, err = v.Verify(p, f.exp)
			assertRejected(t, err, ErrReplay)
			// A new proof, even with the same claims but another key, is
			// not a replay: jtis are per key.
			if _, err := v.Verify(f.proof(t), f.exp); err != nil {
				t.Errorf("fresh proof: %v", err)
			}
		})
	}
}

// TestVerifyRejectionKeepsJTI: a proof rejected for any reason must not
// enter the replay cache, or an attacker replaying a captured proof with a
// wrong method, URL or token could make the genuine request fail.
func TestVerifyRejectionKeepsJTI(t *testing.T) {
	f := newVerifyFixture(t, ES256)
	v := NewVerifier(0)
	var now time.Time
	v.Now = func() time.Time { return now }
	p := f.proof(t)
	for _, tc := range []struct {
		name string
		edit func(e *Expect)
		at   time.Duration
		want error
	}{
		{"htm", func(e *Expect) { e.Method = "GET" }, 0, ErrMethod},
		{"htu", func(e *Expect) { e.URL = mustURL(t, "https://as.example/other") }, 0, ErrURL},
		{"iat future", nil, -10 * time.Second, ErrIssuedAt},
		{"nonce", func(e *Expect) { e.Nonce = func(string) bool { return false } }, 0, ErrNonceInvalid},
		{"ath", func(e *Expect) { e.AccessToken = "x" }, 0, ErrTokenHash},
		{"key", func(e *Expect) { e.Thumbprint = f.other.Thumbprint() }, 0, ErrKeyMismatch},
	} {
		exp := f.exp
		if tc.edit != nil {
			tc.edit(&exp)
		}
		now = t0.Add(tc.at)
		_, err := v.Verify(p, exp)
		assertRejected(t, err, tc.want)
	}
	now = t0
	if _, err := v.Verify(p, f.exp); err != nil {
		t.Fatalf("valid proof after rejections: %v", err)
	}
	_, err := v.Verify(p, f.exp)
	assertRejected(t, err, ErrReplay)
}

func TestVerifierAlgorithms(t *testing.T) {
	f := newVerifyFixture(t, EdDSA)
	v := verifierAt(t0)
	v.Algorithms = []jose.SignatureAlgorithm{jose.ES256}
	_, err := v.Verify(f.proof(t), f.exp)
	assertRejected(t, err, ErrBadAlgorithm)
}

func TestReasonUnknown(t *testing.T) {
	if r := Reason(errors.New("other")); r != "" {
		t.Errorf("Reason(other) = %q, want empty", r)
	}
	if r := Reason(nil); r != "" {
		t.Errorf("Reason(nil) = %q, want empty", r)
	}
	seen := map[string]bool{}
	for e, r := range reasons {
		if r == "" || seen[r] {
			t.Errorf("reason %q for %v is empty or not unique", r, e)
		}
		seen[r] = true
	}
}

// Claim names are matched exactly: an upper-case twin must not stand in for
// the real claim (encoding/json alone would accept it).
func TestVerifyClaimNamesAreExact(t *testing.T) {
	k := mustKey(t, ES256)
	_, claims, _ := splitProof(t, mustProof(t, k, "POST", "https://as.example/token", ProofOptions{Now: t0}))
	hdr, _, _ := splitProof(t, mustProof(t, k, "POST", "https://as.example/token", ProofOptions{Now: t0}))
	claims["HTM"] = claims["htm"]
	delete(claims, "htm")
	proof := handSign(t, k.private.Signer, hdr, claims)
	_, err := verifierAt(t0).Verify(proof, Expect{Method: "POST", URL: mustURL(t, "https://as.example/token")})
	if !errors.Is(err, ErrMissingClaim) {
		t.Fatalf("err = %v, want ErrMissingClaim", err)
	}
}

// TestVerifyBoundJTI: with Expect.JTI a proof must carry that jti, and is
// kept out of the replay cache, so the same challenge-bound proof can be
// presented again (a retried code) while other proofs stay replay-checked.
func TestVerifyBoundJTI(t *testing.T) {
	f := newVerifyFixture(t, ES256)
	v := verifierAt(t0)
	c := f.claims()
	c["jti"] = "challenge-jti"
	bound := f.sign(t, f.header(nil), c)
	exp := f.exp
	exp.JTI = "challenge-jti"
	for range 2 {
		if _, err := v.Verify(bound, exp); err != nil {
			t.Fatalf("challenge-bound proof: %v", err)
		}
	}
	_, err := v.Verify(f.proof(t), exp)
	assertRejected(t, err, ErrJTIMismatch)
	if _, err := v.Verify(bound, f.exp); err != nil {
		t.Fatalf("unbound check of the proof: %v", err)
	}
	_, err = v.Verify(bound, f.exp)
	assertRejected(t, err, ErrReplay)
}
