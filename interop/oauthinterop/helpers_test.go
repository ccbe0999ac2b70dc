package oauthinterop_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

var allSecrets = []string{secretBasic, secretPost, secretWrong}

// The oauth package's test helpers these tests share, copied: a test file
// cannot import another package's tests.

// Secrets used by the tests; every error is checked for all of them.
const (
	secretBasic = "cs-SECRET-basic-0123456789abcdef"
	secretPost  = "cs-SECRET-post-0123456789abcdef"
	secretWrong = "cs-SECRET-wrong-0123456789abcdef"
)

// counter is a RoundTripper that counts requests per URL path, so tests
// can assert exactly how many token requests a call made.
type counter struct {
	mu   sync.Mutex
	n    map[string]int
	next http.RoundTripper
}

func newCounter() *counter { return &counter{n: map[string]int{}, next: http.DefaultTransport} }

func (c *counter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[r.URL.Path]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

func (c *counter) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[path]
}

func (c *counter) client() *http.Client { return &http.Client{Transport: c} }

func newKey(t testing.TB) *dpop.Key {
	t.Helper()
	k, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newClient(t testing.TB, cfg oauth.Config) *oauth.Client {
	t.Helper()
	c, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientKey returns a P-256 private key and its public JWKS (kid "k1") for
// private_key_jwt registrations.
func clientKey(t testing.TB) (crypto.Signer, *jose.JSONWebKeySet) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k, &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
}

// claims decodes a JWT's payload without verifying it.
func claims(t testing.TB, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("access token is not a JWT (%d parts)", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// jkt returns cnf.jkt of a JWT, or "".
func jkt(t testing.TB, jwt string) string {
	cnf, _ := claims(t, jwt)["cnf"].(map[string]any)
	s, _ := cnf["jkt"].(string)
	return s
}

// asError asserts err is an *oauth.Error of kind want whose every rendering
// is free of secrets (including extra ones the test knows about).
func asError(t testing.TB, err error, want oauth.Kind, extra ...string) *oauth.Error {
	t.Helper()
	var e *oauth.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *oauth.Error", err, err)
	}
	if e.Kind != want {
		t.Errorf("kind = %v, want %v (error: %v)", e.Kind, want, err)
	}
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
		for _, sec := range append(allSecrets, extra...) {
			if sec != "" && strings.Contains(s, sec) {
				t.Errorf("secret %q leaked into %q", sec, s)
			}
		}
	}
	return e
}
