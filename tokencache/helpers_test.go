package tokencache_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// intentFor mirrors the cache's refresh-intent hash (first 12 bytes of
// SHA-256, base64url) so a test can fake a crash mid-refresh.
func intentFor(t *testing.T, rt string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(rt))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if sub != "" && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// validAt checks that tok was valid at the moment it was asked for: the
// sandbox accepts its signature and its exp lies after asked. Checking exp
// against the time of the request, not of this check, keeps a busy test
// machine from failing a token that was fine when handed out.
func validAt(srv *sandboxtest.Server, tok *tokencache.Token, asked time.Time) error {
	if _, err := srv.VerifyAccessToken(tok.Value); err == nil {
		return nil
	} else if !strings.Contains(err.Error(), "expired") {
		return err
	}
	parts := strings.Split(tok.Value, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return err
	}
	var c struct{ Exp int64 }
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	if !time.Unix(c.Exp, 0).After(asked) {
		return fmt.Errorf("token expired at %d was handed out at %s", c.Exp, asked.Format(time.StampMilli))
	}
	return nil
}

// hammer starts n goroutines that call c.Token in a loop, passing each
// result (and when it was asked for) to check, until the returned stop
// func is called; stop waits for them.
func hammer(n int, c *tokencache.Cache, check func(tok *tokencache.Token, err error, asked time.Time)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				asked := time.Now()
				tok, err := c.Token(context.Background())
				check(tok, err, asked)
				runtime.Gosched()
			}
		}()
	}
	return func() {
		close(done)
		wg.Wait()
	}
}
