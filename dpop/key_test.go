package dpop

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func TestGenerateKey(t *testing.T) {
	for _, tc := range []struct {
		alg  Algorithm
		want Algorithm
		kty  string
	}{
		{"", ES256, "EC"},
		{ES256, ES256, "EC"},
		{EdDSA, EdDSA, "OKP"},
	} {
		t.Run(string(tc.want)+"/"+string(tc.alg), func(t *testing.T) {
			k := mustKey(t, tc.alg)
			if k.Algorithm() != tc.want {
				t.Errorf("Algorithm() = %q, want %q", k.Algorithm(), tc.want)
			}
			pub := k.PublicJWK()
			if !pub.IsPublic() || !pub.Valid() {
				t.Errorf("PublicJWK is not a valid public key: %+v", pub)
			}
			raw, err := pub.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(raw), `"kty":"`+tc.kty+`"`) {
				t.Errorf("PublicJWK = %s, want kty %s", raw, tc.kty)
			}
			if k.Thumbprint() == "" || k.Thumbprint() == mustKey(t, tc.alg).Thumbprint() {
				t.Errorf("thumbprint %q is empty or not unique per key", k.Thumbprint())
			}
		})
	}
	for _, bad := range []Algorithm{"RS256", "HS256", "none", "es256"} {
		if k, err := GenerateKey(bad); err == nil {
			t.Errorf("GenerateKey(%q) = %v, want error", bad, k)
		}
	}
}

func TestPEMRoundTrip(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			k := mustKey(t, alg)
			data, err := k.MarshalPEM()
			if err != nil {
				t.Fatal(err)
			}
			if block, _ := pem.Decode(data); block == nil || block.Type != "PRIVATE KEY" {
				t.Fatalf("MarshalPEM did not write a PRIVATE KEY block:\n%s", data)
			}
			back, err := ParseKeyPEM(data)
			if err != nil {
				t.Fatal(err)
			}
			if back.Thumbprint() != k.Thumbprint() || back.Algorithm() != alg {
				t.Errorf("round trip: %v, want %v", back, k)
			}
			// The reloaded key signs proofs the original's thumbprint accepts.
			p := mustProof(t, back, "POST", "https://as.example/token", ProofOptions{Now: t0})
			exp := Expect{Method: "POST", URL: mustURL(t, "https://as.example/token"), Thumbprint: k.Thumbprint()}
			if _, err := verifierAt(t0).Verify(p, exp); err != nil {
				t.Errorf("proof by reloaded key: %v", err)
			}
		})
	}
}

// TestThumbprintKnownAnswers pins thumbprints computed outside this package.
func TestThumbprintKnownAnswers(t *testing.T) {
	// RFC 8037 §A.3: the Ed25519 key of §A.1.
	if got, want := mustKeyFile(t, "ed25519-rfc8037.pem").Thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Errorf("RFC 8037 Ed25519 thumbprint = %s, want %s", got, want)
	}
	// testdata/p256.pem, computed with Python's hashlib over
	// {"crv":"P-256","kty":"EC","x":"bvCGdFAyTCZEsVxRF2VNojVbJ0iXk0nDLmfpQJZ9xbY","y":"Q8VPjeO-AM8s0InToU78ihJ9grmvz7LvtuqGmS33Ev8"}.
	if got, want := mustKeyFile(t, "p256.pem").Thumbprint(), "TBal8fRnUxFLeqZ5iOGLKeLNENK44HNsOxhVhpjfaXI"; got != want {
		t.Errorf("P-256 thumbprint = %s, want %s", got, want)
	}
	// RFC 7638 §3.1 (RSA). Keys are never RSA here, but Verify takes the
	// thumbprint of RS256 proof keys with the same go-jose call.
	var rsa jose.JSONWebKey
	if err := rsa.UnmarshalJSON([]byte(`{"kty":"RSA","e":"AQAB","alg":"RS256","kid":"2011-04-29",` +
		`"n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}`)); err != nil {
		t.Fatal(err)
	}
	tp, err := rsa.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b64.EncodeToString(tp), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Errorf("RFC 7638 RSA thumbprint = %s, want %s", got, want)
	}
}

// TestThumbprintCanonicalEC recomputes the RFC 7638 thumbprint of fresh
// P-256 keys from the canonical JSON, written out by hand.
func TestThumbprintCanonicalEC(t *testing.T) {
	for range 20 {
		k := mustKey(t, ES256)
		pub := k.private.Signer.Public().(*ecdsa.PublicKey)
		raw, err := pub.Bytes() // 0x04 || X || Y, fixed 32-byte coordinates
		if err != nil {
			t.Fatal(err)
		}
		canonical := `{"crv":"P-256","kty":"EC","x":"` + b64.EncodeToString(raw[1:33]) + `","y":"` + b64.EncodeToString(raw[33:]) + `"}`
		sum := sha256.Sum256([]byte(canonical))
		if want := b64.EncodeToString(sum[:]); k.Thumbprint() != want {
			t.Fatalf("thumbprint = %s, want %s (of %s)", k.Thumbprint(), want, canonical)
		}
	}
}

func TestParseKeyPEMRejects(t *testing.T) {
	pkcs8 := func(key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("SECRET-MATERIAL-SECRET-MATERIAL!")
	for name, data := range map[string][]byte{
		"empty":          nil,
		"not PEM":        secret,
		"SEC1 block":     pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
		"PKCS#8 garbage": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: secret}),
		"P-384":          pkcs8(p384),
		"X25519":         pkcs8(x25519),
	} {
		t.Run(name, func(t *testing.T) {
			k, err := ParseKeyPEM(data)
			if err == nil {
				t.Fatalf("ParseKeyPEM = %v, want error", k)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "dpop: ") {
				t.Errorf("error %q lacks the package prefix", msg)
			}
			// No part of the input may be echoed: not the raw bytes, not
			// the PEM body, not a hex dump.
			block, _ := pem.Decode(data)
			leaks := []string{"SECRET", base64.StdEncoding.EncodeToString(secret)[:12], hex.EncodeToString(secret)[:12]}
			if block != nil {
				leaks = append(leaks, base64.StdEncoding.EncodeToString(block.Bytes)[8:24], hex.EncodeToString(block.Bytes)[8:24])
			}
			for _, l := range leaks {
				if strings.Contains(msg, l) {
					t.Errorf("error %q leaks input bytes %q", msg, l)
				}
			}
		})
	}
}

// TestKeyFormattingHidesPrivateKey checks every fmt route to a Key, by
// pointer and by value, directly and inside structs.
func TestKeyFormattingHidesPrivateKey(t *testing.T) {
	for _, alg := range []Algorithm{ES256, EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			k := mustKey(t, alg)
			pemData, err := k.MarshalPEM()
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(pemData)
			var secrets [][]byte // encodings-independent views of the private key
			switch p := k.private.Signer.(type) {
			case *ecdsa.PrivateKey:
				d, err := p.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				secrets = append(secrets, d)
			case ed25519.PrivateKey:
				secrets = append(secrets, p.Seed())
			}
			var leaks []string
			for _, s := range secrets {
				leaks = append(leaks,
					fmt.Sprint(s)[:40], // "[12 34 ...": how fmt prints byte slices
					hex.EncodeToString(s)[:16],
					strings.ToUpper(hex.EncodeToString(s)[:16]),
					new(big.Int).SetBytes(s).String()[:16],
					b64.EncodeToString(s)[:16],
					base64.StdEncoding.EncodeToString(s)[:16])
			}
			leaks = append(leaks, base64.StdEncoding.EncodeToString(block.Bytes)[20:40])

			want := fmt.Sprintf("dpop.Key(%s, jkt=%s)", alg, k.Thumbprint())
			for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
				if got := fmt.Sprintf(verb, k); got != want {
					t.Errorf("Sprintf(%q, key) = %q, want %q", verb, got, want)
				}
			}
			type exported struct{ K *Key }
			type byValue struct{ K Key }
			type hidden struct{ k Key }
			all := fmt.Sprintf("%v %+v %#v | %v %+v %#v | %v %+v %#v | %v %+v %#v",
				*k, *k, *k,
				exported{k}, exported{k}, exported{k},
				byValue{*k}, byValue{*k}, byValue{*k},
				hidden{*k}, hidden{*k}, hidden{*k})
			for _, l := range leaks {
				if strings.Contains(all, l) {
					t.Errorf("formatted key leaks private material %q:\n%s", l, all)
				}
			}
		})
	}
}
