package prelude

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Secrets the fake servers hand out or receive; every test that sees an
// error checks none of them leaked into its text.
const (
	testRefresh   = "rt-SECRET-refresh-0123456789"
	testRotated   = "rt-SECRET-rotated-9876543210"
	testPassword  = "pw-SECRET-password"
	testChallenge = "ct-SECRET-challenge"
	testVerif     = "vt-SECRET-verification"
	testBearer    = "at-SECRET-bearer"
)

var allSecrets = []string{testRefresh, testRotated, testPassword, testChallenge, testVerif, testBearer}

// misbehaving starts a loopback server standing in for a broken or hostile
// Prelude (or a proxy in front of it) and returns a client for it plus a
// counter of requests received.
func misbehaving(t *testing.T, h http.HandlerFunc) (*Client, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, &n
}

func newKey(t *testing.T) *dpop.Key {
	t.Helper()
	k, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeJWT builds an unsigned JWT-shaped token with the given claims; the
// client only ever peeks at exp.
func fakeJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	b, _ := json.Marshal(claims)
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString(b) + ".sig"
}

// writeTokens answers a finalize/refresh the way Prelude does.
func writeTokens(w http.ResponseWriter, access string, expiresAt any, refresh string) {
	if refresh != "" {
		w.Header().Set("X-Refresh-Token", refresh)
	}
	w.Header().Set("Content-Type", "application/json")
	body := map[string]any{"access_token": access}
	if expiresAt != nil {
		body["expires_at"] = expiresAt
	}
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": msg})
}

// verifyProof checks r's DPoP header as a strict server would and returns
// its claims.
func verifyProof(t *testing.T, r *http.Request) dpop.Claims {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path}
	v, err := dpop.NewVerifier(0).Verify(r.Header.Get("DPoP"), dpop.Expect{Method: r.Method, URL: u})
	if err != nil {
		t.Errorf("DPoP proof on %s %s: %v", r.Method, r.URL.Path, err)
		return dpop.Claims{}
	}
	return v.Claims
}

// asError asserts err is an *Error of the wanted kind whose text and every
// fmt rendering are free of secrets.
func asError(t *testing.T, err error, want Kind) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *prelude.Error", err, err)
	}
	if e.Kind != want {
		t.Errorf("kind = %v, want %v (error: %v)", e.Kind, want, err)
	}
	noSecrets(t, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), fmt.Sprintf("%#v", e))
	return e
}

func noSecrets(t *testing.T, texts ...string) {
	t.Helper()
	for _, s := range texts {
		for _, sec := range allSecrets {
			if strings.Contains(s, sec) {
				t.Errorf("secret %q leaked into %q", sec, s)
			}
		}
	}
}
