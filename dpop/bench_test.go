package dpop

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// benchTarget and benchToken are a typical proxied request: a path with a
// few segments and a JWT-sized access token hashed into ath.
const benchTarget = "https://api.example.com/v1/accounts/acct_123/sessions?limit=20"

var benchToken = string(make([]byte, 800))

func benchProof(b *testing.B, alg Algorithm) {
	k := mustKey(b, alg)
	opts := ProofOptions{AccessToken: benchToken, Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Proof("POST", benchTarget, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPayload is a signing input of the size a proof signs, so the raw
// benchmarks below are the floor the proof benchmarks are compared with.
func benchPayload(b *testing.B, alg Algorithm) []byte {
	p := mustProof(b, mustKey(b, alg), "POST", benchTarget, ProofOptions{AccessToken: benchToken, Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v"})
	return []byte(p[:len(p)-len(b64.EncodeToString(make([]byte, 64)))-1])
}

func BenchmarkProofES256(b *testing.B) { benchProof(b, ES256) }
func BenchmarkProofEdDSA(b *testing.B) { benchProof(b, EdDSA) }

// benchProofGoJose is Key.Proof as it was with a go-jose Signer (EmbedJWK,
// typ dpop+jwt), kept as the reference that justifies Key.sign.
func benchProofGoJose(b *testing.B, alg Algorithm) {
	k := mustKey(b, alg)
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: k.private.Signer}, opts)
	if err != nil {
		b.Fatal(err)
	}
	u := mustURL(b, benchTarget)
	b.ReportAllocs()
	for b.Loop() {
		htu, _ := NormalizeHTU(u)
		payload, _ := json.Marshal(Claims{JTI: NewJTI(), HTM: "POST", HTU: htu, IAT: time.Now().Unix(),
			Nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v", ATH: AccessTokenHash(benchToken)})
		jws, err := signer.Sign(payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := jws.CompactSerialize(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProofES256GoJose(b *testing.B) { benchProofGoJose(b, ES256) }
func BenchmarkProofEdDSAGoJose(b *testing.B) { benchProofGoJose(b, EdDSA) }

func BenchmarkRawSignES256(b *testing.B) {
	priv := mustKey(b, ES256).private.Signer.(*ecdsa.PrivateKey)
	payload := benchPayload(b, ES256)
	b.ReportAllocs()
	for b.Loop() {
		digest := sha256.Sum256(payload)
		if _, err := ecdsa.SignASN1(rand.Reader, priv, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawSignEdDSA(b *testing.B) {
	priv := mustKey(b, EdDSA).private.Signer.(ed25519.PrivateKey)
	payload := benchPayload(b, EdDSA)
	b.ReportAllocs()
	for b.Loop() {
		ed25519.Sign(priv, payload)
	}
}

func BenchmarkVerifyES256(b *testing.B) {
	k := mustKey(b, ES256)
	exp := Expect{Method: "POST", URL: mustURL(b, benchTarget), AccessToken: benchToken, Thumbprint: k.Thumbprint()}
	v := NewVerifier(0)
	proofs := make([]string, 0, 1024)
	for range cap(proofs) {
		proofs = append(proofs, mustProof(b, k, "POST", benchTarget, ProofOptions{AccessToken: benchToken}))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(proofs) { // each proof verifies once: start a new cache
			b.StopTimer()
			v = NewVerifier(0)
			i = 0
			b.StartTimer()
		}
		if _, err := v.Verify(proofs[i], exp); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
