package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// t0 is the fixed clock of most tests: proofs are issued at t0 and
// verifiers see t0 as "now" unless a test moves it.
var t0 = time.Unix(1_700_000_000, 0)

// b64 is the JOSE base64url encoding (no padding).
var b64 = base64.RawURLEncoding

func mustKey(tb testing.TB, alg Algorithm) *Key {
	tb.Helper()
	k, err := GenerateKey(alg)
	if err != nil {
		tb.Fatalf("GenerateKey(%q): %v", alg, err)
	}
	return k
}

func mustReadFile(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func mustKeyFile(tb testing.TB, name string) *Key {
	tb.Helper()
	k, err := ParseKeyPEM(mustReadFile(tb, name))
	if err != nil {
		tb.Fatalf("ParseKeyPEM(%s): %v", name, err)
	}
	return k
}

func mustURL(tb testing.TB, raw string) *url.URL {
	tb.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		tb.Fatalf("url.Parse(%q): %v", raw, err)
	}
	return u
}

func mustProof(tb testing.TB, k *Key, method, target string, opts ProofOptions) string {
	tb.Helper()
	p, err := k.Proof(method, target, opts)
	if err != nil {
		tb.Fatalf("Proof(%s %s): %v", method, target, err)
	}
	return p
}

// verifierAt returns a fresh verifier whose clock is fixed at now.
func verifierAt(now time.Time) *Verifier {
	v := NewVerifier(0)
	v.Now = func() time.Time { return now }
	return v
}

// splitProof decodes a compact JWS into its header and claims (as generic
// JSON objects) and its raw signature bytes.
func splitProof(tb testing.TB, proof string) (hdr, claims map[string]any, sig []byte) {
	tb.Helper()
	parts := strings.Split(proof, ".")
	if len(parts) != 3 {
		tb.Fatalf("proof has %d segments, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&hdr, &claims} {
		raw, err := b64.DecodeString(parts[i])
		if err != nil {
			tb.Fatalf("segment %d not base64url: %v", i, err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			tb.Fatalf("segment %d not a JSON object: %v", i, err)
		}
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		tb.Fatalf("signature not base64url: %v", err)
	}
	return hdr, claims, sig
}

// handSign builds a compact JWS without go-jose, so tests can produce proofs
// Key.Proof refuses to make. header and claims are JSON-encoded unless they
// are strings, which are used verbatim. The signature is made with priv
// (ES256 raw r||s or Ed25519) whatever the header's alg says; a nil priv
// leaves the signature empty.
func handSign(tb testing.TB, priv crypto.Signer, header, claims any) string {
	tb.Helper()
	enc := func(v any) string {
		if s, ok := v.(string); ok {
			return b64.EncodeToString([]byte(s))
		}
		raw, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return b64.EncodeToString(raw)
	}
	input := enc(header) + "." + enc(claims)
	var sig []byte
	switch k := priv.(type) {
	case nil:
	case *ecdsa.PrivateKey:
		digest := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			tb.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	default:
		tb.Fatalf("handSign: unsupported key %T", priv)
	}
	return input + "." + b64.EncodeToString(sig)
}

// proofHeaderFor is the header Key.Proof would write for k, as a map tests
// can alter before handSign.
func proofHeaderFor(k *Key) map[string]any {
	return map[string]any{"typ": "dpop+jwt", "alg": string(k.Algorithm()), "jwk": k.PublicJWK()}
}

// claimsAt is a complete claim set for method and htu issued at t0.
func claimsAt(method, htu string) map[string]any {
	return map[string]any{"jti": NewJTI(), "htm": method, "htu": htu, "iat": t0.Unix()}
}

// privateJWK is k as a JWK with its private members.
func privateJWK(tb testing.TB, k *Key) json.RawMessage {
	tb.Helper()
	raw, err := jose.JSONWebKey{Key: k.private.Signer}.MarshalJSON()
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}
