package tokencache_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TestEngineRefusesUnusableGrants: whatever login or backend hands the
// engine a grant, an access token that is not an RFC 6750 token value
// (a comma and a second scheme, CR/LF, a space) never reaches Token. A
// login fails; a refresh counts as an unknown outcome (the server answered,
// so the refresh token it rotated is given up), never as "did not act",
// which would present the same refresh token again.
func TestEngineRefusesUnusableGrants(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"abc, Basic Zm9vOmJhcg==", "abc\r\nX-Injected: 1", "abc def", ""} {
		t.Run("login "+bad, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			c := e.cache(nil)
			e.gate.accessToken.Store(&bad)
			if err := c.Login(context.Background(), e.passwordLogin()); err == nil {
				t.Fatal("login with an unusable access token succeeded")
			}
			if tok, err := c.Token(context.Background()); err == nil {
				t.Fatalf("Token handed out %q", tok.Value)
			}
		})
		t.Run("refresh "+bad, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			c := e.cache(nil)
			e.login(c)
			e.gate.accessToken.Store(&bad)
			err := c.Refresh(context.Background())
			if err == nil {
				t.Fatal("refresh with an unusable access token succeeded")
			}
			if tok, err := c.Token(context.Background()); err == nil && tok.Value == bad {
				t.Fatalf("Token handed out %q", tok.Value)
			}
			// The refresh token rotated with the bad grant is given up,
			// not presented again: no reuse reaches the server.
			e.gate.accessToken.Store(nil)
			e.clk.Advance(time.Minute)
			_ = c.Refresh(context.Background())
			if s := e.srv.Stats(); s.ReuseEvents != 0 {
				t.Fatalf("reuse events %d after a refused grant", s.ReuseEvents)
			}
			if st := c.Status(); st.State != tokencache.StateLoggedOut {
				t.Fatalf("state %s after a refresh answered with an unusable token; want logged_out", st.State)
			}
		})
	}
}
