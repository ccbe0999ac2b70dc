// Package oauthtest holds the test helpers that the oauth package's tests
// and the interop module's oauth tests share: a request counter, keys,
// clients, JWT claims and the secret-free error assertion. It is imported
// by tests only.
package oauthtest

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

// Secrets used by the tests; every error is checked for them.
const (
	SecretBasic = "cs-SECRET-basic-0123456789abcdef"
	SecretPost  = "cs-SECRET-post-0123456789abcdef"
	SecretWrong = "cs-SECRET-wrong-0123456789abcdef"
)

// Counter is a RoundTripper that counts requests per URL path, so tests
// can assert exactly how many token requests a call made.
type Counter struct {
	mu   sync.Mutex
	n    map[string]int
	next http.RoundTripper
}

// NewCounter counts the requests it sends on with http.DefaultTransport.
func NewCounter() *Counter { return &Counter{n: map[string]int{}, next: http.DefaultTransport} }

// RoundTrip counts r and sends it on.
func (c *Counter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[r.URL.Path]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// Get is the number of requests to path so far.
func (c *Counter) Get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[path]
}

// Client is an HTTP client whose requests c counts.
func (c *Counter) Client() *http.Client { return &http.Client{Transport: c} }

// NewKey is a fresh ES256 DPoP key.
func NewKey(t testing.TB) *dpop.Key {
	t.Helper()
	k, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewClient is oauth.New(cfg), failing the test on error.
func NewClient(t testing.TB, cfg oauth.Config) *oauth.Client {
	t.Helper()
	c, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ClientKey returns a P-256 private key and its public JWKS (kid "k1") for
// private_key_jwt registrations.
func ClientKey(t testing.TB) (crypto.Signer, *jose.JSONWebKeySet) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k, &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
}

// Claims decodes a JWT's payload without verifying it.
func Claims(t testing.TB, jwt string) map[string]any {
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

// JKT returns cnf.jkt of a JWT, or "".
func JKT(t testing.TB, jwt string) string {
	cnf, _ := Claims(t, jwt)["cnf"].(map[string]any)
	s, _ := cnf["jkt"].(string)
	return s
}

// AsError asserts err is an *oauth.Error of kind want whose every
// rendering is free of secrets.
func AsError(t testing.TB, err error, want oauth.Kind, secrets ...string) *oauth.Error {
	t.Helper()
	var e *oauth.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *oauth.Error", err, err)
	}
	if e.Kind != want {
		t.Errorf("kind = %v, want %v (error: %v)", e.Kind, want, err)
	}
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
		for _, sec := range secrets {
			if sec != "" && strings.Contains(s, sec) {
				t.Errorf("secret %q leaked into %q", sec, s)
			}
		}
	}
	return e
}
