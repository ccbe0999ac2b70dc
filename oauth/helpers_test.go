package oauth_test

import (
	"sync/atomic"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// Tokens these tests hand out; every error is checked for them too.
const (
	testRefresh = "rt-SECRET-refresh-0123456789"
	testAccess  = "at-SECRET-access-0123456789"
)

var allSecrets = []string{secretBasic, secretPost, secretWrong, testRefresh, testAccess}

// The helpers shared with the interop module's oauth tests live in
// internal/oauthtest; these names keep the tests short.
const (
	secretBasic = oauthtest.SecretBasic
	secretPost  = oauthtest.SecretPost
	secretWrong = oauthtest.SecretWrong
)

type counter = oauthtest.Counter

var (
	newCounter = oauthtest.NewCounter
	newKey     = oauthtest.NewKey
	newClient  = oauthtest.NewClient
	clientKey  = oauthtest.ClientKey
	claims     = oauthtest.Claims
	jkt        = oauthtest.JKT
)

// asError asserts err is an *oauth.Error of kind want whose every rendering
// is free of secrets (including extra ones the test knows about).
func asError(t testing.TB, err error, want oauth.Kind, extra ...string) *oauth.Error {
	t.Helper()
	return oauthtest.AsError(t, err, want, append(allSecrets, extra...)...)
}

// atomicCount is a request counter for httptest handlers.
type atomicCount struct{ atomic.Int64 }
