package oauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// assertionType is the client_assertion_type of RFC 7523 §2.2.
const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionLifetime is how long a client assertion is valid. Short, because
// a captured assertion can be replayed until it expires (servers that
// remember jti values stop that, but not all do); RFC 7523 leaves it to us.
const assertionLifetime = 60 * time.Second

// assertionSigner signs private_key_jwt client assertions.
type assertionSigner struct {
	signer jose.Signer
}

// newAssertionSigner picks the JWS algorithm from the key type: ES256/ES384
// for P-256/P-384, EdDSA for Ed25519, RS256 for RSA.
func newAssertionSigner(cfg Config) (*assertionSigner, error) {
	key := cfg.ClientKey
	if key == nil {
		if len(cfg.ClientKeyPEM) == 0 {
			return nil, errors.New("oauth: Auth private_key_jwt needs ClientKey or ClientKeyPEM")
		}
		var err error
		if key, err = parsePrivateKeyPEM(cfg.ClientKeyPEM); err != nil {
			return nil, err
		}
	}
	// The algorithm follows the public key, and go-jose signs through
	// crypto.Signer (cryptosigner), so a key held in hardware signs like
	// one in memory.
	var alg jose.SignatureAlgorithm
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		default:
			return nil, errors.New("oauth: ECDSA client key must be on P-256 or P-384")
		}
	case ed25519.PublicKey:
		alg = jose.EdDSA
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, errors.New("oauth: RSA client key must have at least 2048 bits")
		}
		alg = jose.RS256
	default:
		return nil, fmt.Errorf("oauth: unsupported client key type %T", k)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if cfg.ClientKeyID != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), cfg.ClientKeyID)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		return nil, fmt.Errorf("oauth: client assertion signer: %w", err)
	}
	return &assertionSigner{signer: s}, nil
}

// parsePrivateKeyPEM reads the first PEM block as PKCS#8, SEC 1 or PKCS#1.
// Errors never include key material.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("oauth: ClientKeyPEM holds no PEM block")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("oauth: ClientKeyPEM block type %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("oauth: ClientKeyPEM %q block does not parse", block.Type)
	}
	s, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("oauth: unsupported client key type %T", parsed)
	}
	return s, nil
}

// assertionClaims are the RFC 7523 §3 claims of a client assertion.
type assertionClaims struct {
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Aud string `json:"aud"`
	JTI string `json:"jti"`
	IAT int64  `json:"iat"`
	Exp int64  `json:"exp"`
}

// sign returns a new assertion (fresh jti: servers reject a replayed one,
// which is why the DPoP nonce retry must not reuse it).
func (a *assertionSigner) sign(clientID, audience string, now time.Time) (string, error) {
	payload, err := json.Marshal(assertionClaims{
		Iss: clientID, Sub: clientID, Aud: audience,
		JTI: dpop.NewJTI(), IAT: now.Unix(), Exp: now.Add(assertionLifetime).Unix(),
	})
	if err != nil {
		return "", err
	}
	jws, err := a.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("signing client assertion: %w", err)
	}
	return jws.CompactSerialize()
}

// maxAssertionFile bounds what is read from an assertion file.
const maxAssertionFile = 64 << 10

// FileSource is a credential in a file that its issuer rewrites in place (a
// Kubernetes projected service-account token, a SPIFFE JWT-SVID): it is
// read again whenever the file's modification time or size changes, and
// kept in memory otherwise. The jwt-bearer grant's assertion_file and the
// token exchange's subject and actor files are FileSources.
type FileSource struct {
	// Path is the file.
	Path string
	// Name is what errors call it ("assertion file").
	Name string

	mu    sync.Mutex
	mod   time.Time
	size  int64
	value string
}

// Read returns the file's current content, trimmed.
func (f *FileSource) Read() (string, error) {
	st, err := os.Stat(f.Path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.Name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.value != "" && st.ModTime().Equal(f.mod) && st.Size() == f.size {
		return f.value, nil
	}
	if st.Size() > maxAssertionFile {
		return "", fmt.Errorf("%s: larger than %d bytes", f.Name, maxAssertionFile)
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.Name, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s: empty", f.Name)
	}
	f.value, f.mod, f.size = v, st.ModTime(), st.Size()
	return v, nil
}
