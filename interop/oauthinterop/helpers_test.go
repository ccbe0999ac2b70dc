package oauthinterop_test

import (
	"testing"

	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// asError asserts err is an *oauth.Error of kind want whose every rendering
// is free of the client secrets and of extra ones the test knows about.
func asError(t testing.TB, err error, want oauth.Kind, extra ...string) *oauth.Error {
	t.Helper()
	return oauthtest.AsError(t, err, want, append([]string{oauthtest.SecretBasic, oauthtest.SecretPost, oauthtest.SecretWrong}, extra...)...)
}
