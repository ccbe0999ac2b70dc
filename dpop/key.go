// Package dpop creates and verifies DPoP proofs (RFC 9449): key pairs and
// their JWK thumbprints, proof JWTs bound to one HTTP request, a per-origin
// store for server-issued nonces, and a verifier that checks every rule of
// RFC 9449 §4.3 with a distinct error per reason.
//
// JOSE work (JWK encoding, thumbprints, JWS signing and verification) is done
// by github.com/go-jose/go-jose/v4; this package adds the DPoP rules on top.
package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// Algorithm names a JWS signature algorithm usable for DPoP proofs.
type Algorithm string

// The algorithms a Key can be generated for.
const (
	// ES256 is ECDSA on P-256 with SHA-256; the default, and the only one
	// Prelude's SDKs use.
	ES256 Algorithm = "ES256"
	// EdDSA is Ed25519.
	EdDSA Algorithm = "EdDSA"
)

// Key is a DPoP key pair. It is safe for concurrent use. Its String and
// GoString methods never print private material.
type Key struct {
	alg        Algorithm
	private    *privateKey
	public     jose.JSONWebKey
	thumbprint string
	// header is the proof's JOSE header, base64url encoded, plus the ".":
	// it is the same for every proof, so it is encoded once.
	header string
	// ath is the last access token hashed into a proof, with its hash: a
	// session presents one token on every request until it is refreshed.
	// It is boxed so that a Key stays copyable by value (see privateKey).
	ath *athCache
}

// privateKey boxes the private key so that fmt prints only its address even
// when a Key is formatted by value (or sits, by value, in a struct): an
// ed25519.PrivateKey is a byte slice that fmt would otherwise print in full.
type privateKey struct{ crypto.Signer }

// GenerateKey creates a new key pair for alg (ES256 when alg is empty).
func GenerateKey(alg Algorithm) (*Key, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case "", ES256:
		alg = ES256
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("dpop: unsupported algorithm %q (want ES256 or EdDSA)", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("dpop: generating %s key: %w", alg, err)
	}
	return newKey(alg, priv)
}

// ParseKeyPEM decodes a PKCS#8 "PRIVATE KEY" PEM block holding a P-256 ECDSA
// or an Ed25519 private key. Errors never include key material.
func ParseKeyPEM(data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("dpop: key is not a PKCS#8 PEM \"PRIVATE KEY\" block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("dpop: key is not valid PKCS#8")
	}
	switch k := parsed.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("dpop: ECDSA key is not on curve P-256")
		}
		return newKey(ES256, k)
	case ed25519.PrivateKey:
		return newKey(EdDSA, k)
	default:
		return nil, fmt.Errorf("dpop: unsupported private key type %T", parsed)
	}
}

// NewKey wraps a signer whose private half may never leave its device (a
// PKCS#11 token, a KMS): proofs are signed through its Sign method. Its
// public key must be ECDSA P-256 (ES256) or Ed25519 (EdDSA). Such a key
// cannot be marshalled (MarshalPEM fails), which is the point.
func NewKey(signer crypto.Signer) (*Key, error) {
	switch pub := signer.Public().(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, errors.New("dpop: ECDSA key is not on curve P-256")
		}
		return newKey(ES256, signer)
	case ed25519.PublicKey:
		return newKey(EdDSA, signer)
	default:
		return nil, fmt.Errorf("dpop: unsupported public key type %T (want ECDSA P-256 or Ed25519)", pub)
	}
}

func newKey(alg Algorithm, priv crypto.Signer) (*Key, error) {
	pub := jose.JSONWebKey{Key: priv.Public(), Algorithm: string(alg)}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("dpop: thumbprint: %w", err)
	}
	// The header members go-jose's signer would write with EmbedJWK: the
	// jwk carries no alg or kid.
	hdr, err := json.Marshal(struct {
		Alg string          `json:"alg"`
		JWK jose.JSONWebKey `json:"jwk"`
		Typ string          `json:"typ"`
	}{string(alg), jose.JSONWebKey{Key: priv.Public()}, "dpop+jwt"})
	if err != nil {
		return nil, fmt.Errorf("dpop: encoding header: %w", err)
	}
	return &Key{
		alg:        alg,
		private:    &privateKey{priv},
		public:     pub,
		thumbprint: base64.RawURLEncoding.EncodeToString(tp),
		header:     base64.RawURLEncoding.EncodeToString(hdr) + ".",
		ath:        new(athCache),
	}, nil
}

// errNotExportable is MarshalPEM's error for a key whose private half its
// signer does not give out (hardware).
var errNotExportable = errors.New("not an in-memory ECDSA or Ed25519 key")

// MarshalPEM encodes the private key as a PKCS#8 "PRIVATE KEY" PEM block.
// Store it with mode 0600.
func (k *Key) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.private.Signer)
	if err != nil {
		// Never the key itself: the error names only its type.
		return nil, fmt.Errorf("dpop: the key cannot be exported (%T): %w", k.private.Signer, errNotExportable)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Algorithm returns the key's JWS algorithm.
func (k *Key) Algorithm() Algorithm { return k.alg }

// PublicJWK returns the public half as a JWK.
func (k *Key) PublicJWK() jose.JSONWebKey { return k.public }

// Thumbprint returns the RFC 7638 SHA-256 JWK thumbprint, base64url without
// padding: the "jkt" a server binds tokens to.
func (k *Key) Thumbprint() string { return k.thumbprint }

// String identifies the key by algorithm and thumbprint only.
func (k *Key) String() string { return fmt.Sprintf("dpop.Key(%s, jkt=%s)", k.alg, k.thumbprint) }

// GoString is like String so that %#v cannot leak the private key.
func (k *Key) GoString() string { return k.String() }
