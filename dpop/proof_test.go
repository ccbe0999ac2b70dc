package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"

	"encoding/json"
	"github.com/go-jose/go-jose/v4"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

func TestProofHeader(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			k := mustKey(t, alg)
			hdr, _, _ := splitProof(t, mustProof(t, k, "GET", "https://rs.example/x", ProofOptions{}))
			if hdr["typ"] != "dpop+jwt" {
				t.Errorf("typ = %v, want dpop+jwt", hdr["typ"])
			}
			if hdr["alg"] != string(alg) {
				t.Errorf("alg = %v, want %s", hdr["alg"], alg)
			}
			jwk, ok := hdr["jwk"].(map[string]any)
			if !ok {
				t.Fatalf("jwk = %#v, want an object", hdr["jwk"])
			}
			for _, m := range privateMembers {
				if _, ok := jwk[m]; ok {
					t.Errorf("jwk carries private member %q: %v", m, jwk)
				}
			}
			wantKty := map[Algorithm]string{ES256: "EC", EdDSA: "OKP"}[alg]
			if jwk["kty"] != wantKty || jwk["x"] == nil {
				t.Errorf("jwk = %v, want a %s public key", jwk, wantKty)
			}
			for name := range hdr {
				if name != "typ" && name != "alg" && name != "jwk" {
					t.Errorf("unexpected header %q", name)
				}
			}
		})
	}
}

func TestProofClaims(t *testing.T) {
	k := mustKey(t, ES256)
	iat := time.Unix(1_712_345_678, 999_000_000)
	for _, tc := range []struct {
		name      string
		opts      ProofOptions
		wantNonce any
		wantATH   any
	}{
		{"bare", ProofOptions{Now: iat}, nil, nil},
		{"nonce", ProofOptions{Now: iat, Nonce: "n-1"}, "n-1", nil},
		// RFC 9449 §7.1 example access token and its ath.
		{"ath", ProofOptions{Now: iat, AccessToken: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"}, nil, "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"},
		{"both", ProofOptions{Now: iat, Nonce: "n-2", AccessToken: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"}, "n-2", "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c, _ := splitProof(t, mustProof(t, k, "PATCH", "HTTPS://Rs.Example:443/a/b?q=1#frag", tc.opts))
			if c["htm"] != "PATCH" {
				t.Errorf("htm = %v, want PATCH (verbatim)", c["htm"])
			}
			if c["htu"] != "https://rs.example/a/b" {
				t.Errorf("htu = %v, want normalised https://rs.example/a/b", c["htu"])
			}
			if c["iat"] != float64(1_712_345_678) {
				t.Errorf("iat = %v, want 1712345678 (whole seconds)", c["iat"])
			}
			if c["nonce"] != tc.wantNonce {
				t.Errorf("nonce = %#v, want %#v", c["nonce"], tc.wantNonce)
			}
			if c["ath"] != tc.wantATH {
				t.Errorf("ath = %#v, want %#v", c["ath"], tc.wantATH)
			}
			if jti, _ := c["jti"].(string); len(jti) == 0 {
				t.Errorf("jti missing: %v", c)
			}
			if len(c) != 4+btoi(tc.wantNonce != nil)+btoi(tc.wantATH != nil) {
				t.Errorf("unexpected claims: %v", c)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestProofDefaultIAT(t *testing.T) {
	k := mustKey(t, EdDSA)
	before := time.Now().Unix()
	_, c, _ := splitProof(t, mustProof(t, k, "GET", "https://rs.example/", ProofOptions{}))
	after := time.Now().Unix()
	if iat := int64(c["iat"].(float64)); iat < before || iat > after {
		t.Errorf("iat = %d, want within [%d, %d]", iat, before, after)
	}
}

// TestProofJTI: ≥ 96 random bits and unique across 10 000 proofs.
func TestProofJTI(t *testing.T) {
	t.Parallel()
	n := 10_000
	if testing.Short() {
		n = 1_000
	}
	k := mustKey(t, EdDSA) // the cheaper signer; the jti source is shared
	seen := make(map[string]bool, n)
	for i := range n {
		p := mustProof(t, k, "GET", "https://rs.example/", ProofOptions{Now: t0})
		payload, err := b64.DecodeString(strings.Split(p, ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		// Cheaper than a JSON decode; the claims' order is fixed.
		jti, _, _ := strings.Cut(strings.TrimPrefix(string(payload), `{"jti":"`), `"`)
		if i == 0 {
			raw, err := b64.DecodeString(jti)
			if err != nil || len(raw)*8 < 96 {
				t.Fatalf("jti %q: %d bits (err %v), want ≥ 96", jti, len(raw)*8, err)
			}
		}
		if seen[jti] {
			t.Fatalf("jti %q repeated after %d proofs", jti, i)
		}
		seen[jti] = true
	}
}

// TestProofSignatureFormat: ES256 is raw r||s (64 bytes, RFC 7518 §3.4), not
// ASN.1, and both algorithms verify with the embedded key by hand.
func TestProofSignatureFormat(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		k := mustKey(t, alg)
		p := mustProof(t, k, "GET", "https://rs.example/", ProofOptions{})
		_, _, sig := splitProof(t, p)
		if len(sig) != 64 {
			t.Fatalf("%s signature is %d bytes, want 64", alg, len(sig))
		}
		input := p[:strings.LastIndexByte(p, '.')]
		// go-jose, on its own, parses the proof and verifies it with the
		// key from its embedded jwk header.
		jws, err := jose.ParseSignedCompact(p, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA})
		if err != nil {
			t.Fatalf("%s: go-jose parse: %v", alg, err)
		}
		got, err := jws.Verify(jws.Signatures[0].Header.JSONWebKey)
		if err != nil {
			t.Fatalf("%s: go-jose verify: %v", alg, err)
		}
		if b64.EncodeToString(got) != strings.Split(p, ".")[1] {
			t.Errorf("%s: go-jose verified payload %s", alg, got)
		}
		if jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType] != "dpop+jwt" {
			t.Errorf("%s: go-jose sees typ %v", alg, jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType])
		}
		switch pub := k.private.Signer.Public().(type) {
		case *ecdsa.PublicKey:
			digest := sha256.Sum256([]byte(input))
			r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			if !ecdsa.Verify(pub, digest[:], r, s) {
				t.Errorf("ES256 r||s does not verify")
			}
		case ed25519.PublicKey:
			if !ed25519.Verify(pub, []byte(input), sig) {
				t.Errorf("EdDSA signature does not verify")
			}
		}
	}
}

func TestProofRejectsBadTarget(t *testing.T) {
	k := mustKey(t, ES256)
	for _, target := range []string{"ftp://x/", "/relative", "https:///nohost", "https://x/%zz", "://x"} {
		if p, err := k.Proof("GET", target, ProofOptions{}); err == nil {
			t.Errorf("Proof(%q) = %s, want error", target, p)
		}
	}
}

func TestNormalizeHTU(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://example.com/p", "https://example.com/p"},
		{"HTTPS://EXAMPLE.COM/Path", "https://example.com/Path"}, // path case kept
		{"https://example.com:443/p", "https://example.com/p"},
		{"http://example.com:80/p", "http://example.com/p"},
		{"https://example.com:8443/p", "https://example.com:8443/p"},
		{"http://example.com:443/p", "http://example.com:443/p"},
		{"https://example.com:80/p", "https://example.com:80/p"},
		{"https://example.com/p?q=1&r=2#frag", "https://example.com/p"},
		{"https://example.com?q", "https://example.com/"},
		{"https://example.com", "https://example.com/"},
		{"https://example.com/a%2Fb", "https://example.com/a%2Fb"},
		{"https://example.com/a%20b/c", "https://example.com/a%20b/c"},
		{"https://example.com/a b", "https://example.com/a%20b"},
		{"https://[::1]:443/p", "https://[::1]/p"},
		{"https://[::1]/p", "https://[::1]/p"},
		{"https://[::1]:8443/p", "https://[::1]:8443/p"},
		{"http://[FE80::1]:80/", "http://[fe80::1]/"},
		{"https://user:pw@example.com/p", "https://example.com/p"},
	} {
		got, err := NormalizeHTU(mustURL(t, tc.in))
		if err != nil || got != tc.want {
			t.Errorf("NormalizeHTU(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"ftp://example.com/", "wss://example.com/", "example.com/p", "/p", "https:///p", "mailto:a@example.com", ""} {
		if got, err := NormalizeHTU(mustURL(t, bad)); err == nil {
			t.Errorf("NormalizeHTU(%q) = %q, want error", bad, got)
		}
	}
}

func TestAccessTokenHash(t *testing.T) {
	// RFC 9449 §7.1.
	if got := AccessTokenHash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"); got != "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo" {
		t.Errorf("AccessTokenHash(RFC 9449 example) = %s", got)
	}
	// SHA-256 of "" is e3b0c442…: base64url, no padding.
	if got := AccessTokenHash(""); got != "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU" {
		t.Errorf("AccessTokenHash(\"\") = %s", got)
	}
}

// The hand-written claims JSON decodes to exactly what was put in, for
// plain values and for ones that need escaping.
func TestClaimsJSONDecodes(t *testing.T) {
	for _, tc := range []struct{ htm, htu, nonce, ath string }{
		{"GET", "https://rs.example/a/b%20c", "", ""},
		{"POST", "https://rs.example/", "n-1_.~", "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"},
		{"PUT", "https://rs.example/\"q\"\\<&>", "tab\there\nnl", "é\u2028\x00"},
	} {
		raw := appendClaims(nil, tc.htm, tc.htu, 1_712_345_678, tc.nonce, tc.ath)
		var c Claims
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		jti, err := b64.DecodeString(c.JTI)
		if c.HTM != tc.htm || c.HTU != tc.htu || c.IAT != 1_712_345_678 || c.Nonce != tc.nonce || c.ATH != tc.ath || err != nil || len(jti) != 16 {
			t.Errorf("%s decoded to %+v", raw, c)
		}
	}
}

// derToFixed right-aligns R and S, including values with leading zero
// bytes (one signature in 256) and the DER sign byte.
func TestDERToFixed(t *testing.T) {
	for _, tc := range [][2]*big.Int{
		{big.NewInt(1), big.NewInt(2)},
		{new(big.Int).Lsh(big.NewInt(1), 255), new(big.Int).Lsh(big.NewInt(1), 200)}, // sign byte on R
		{new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1)), big.NewInt(0x7f)},
	} {
		var b cryptobyte.Builder
		b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1BigInt(tc[0])
			b.AddASN1BigInt(tc[1])
		})
		der := b.BytesOrPanic()
		var got, want [64]byte
		tc[0].FillBytes(want[:32])
		tc[1].FillBytes(want[32:])
		if !derToFixed(got[:], der) || got != want {
			t.Errorf("r=%x s=%x: got %x", tc[0], tc[1], got)
		}
	}
	if derToFixed(make([]byte, 64), []byte{0x30, 0x03, 0x02, 0x01}) {
		t.Error("accepted truncated DER")
	}
}

// Many ES256 proofs all verify: among them are signatures whose R or S
// has leading zero bytes.
func TestManyES256ProofsVerify(t *testing.T) {
	k := mustKey(t, ES256)
	pub := k.private.Signer.Public().(*ecdsa.PublicKey)
	for range 1000 {
		p := mustProof(t, k, "GET", "https://rs.example/", ProofOptions{})
		_, _, sig := splitProof(t, p)
		digest := sha256.Sum256([]byte(p[:strings.LastIndexByte(p, '.')]))
		if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatalf("proof %s does not verify", p)
		}
	}
}

// opaqueSigner hides the key's type, as a hardware token's signer does:
// only Public and Sign are reachable.
type opaqueSigner struct{ s crypto.Signer }

func (o opaqueSigner) Public() crypto.PublicKey { return o.s.Public() }
func (o opaqueSigner) Sign(r io.Reader, d []byte, opts crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, d, opts)
}

// TestSignerKey: a key whose private half is reachable only through
// crypto.Signer signs proofs go-jose verifies, has the thumbprint of its
// public key, and cannot be exported.
func TestSignerKey(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		mem := mustKey(t, alg)
		k, err := NewKey(opaqueSigner{mem.private.Signer})
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if k.Algorithm() != alg || k.Thumbprint() != mem.Thumbprint() {
			t.Fatalf("%s: NewKey gives %s %s, want %s", alg, k.Algorithm(), k.Thumbprint(), mem.Thumbprint())
		}
		p, err := k.Proof("POST", "https://as.example/token", ProofOptions{Nonce: "n", AccessToken: "at"})
		if err != nil {
			t.Fatalf("%s: signing through crypto.Signer: %v", alg, err)
		}
		jws, err := jose.ParseSignedCompact(p, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jws.Verify(mem.PublicJWK()); err != nil {
			t.Fatalf("%s: proof signed through crypto.Signer does not verify: %v", alg, err)
		}
		if pem, err := k.MarshalPEM(); err == nil || len(pem) != 0 {
			t.Fatalf("%s: a signer-only key was exported", alg)
		}
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewKey(opaqueSigner{rk}); err == nil {
		t.Fatal("NewKey accepted an RSA key")
	}
}
