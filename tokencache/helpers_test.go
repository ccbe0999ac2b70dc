package tokencache_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// gate stands between the client and the sandbox like a load balancer
// that can fail: while down, every request is answered 503 with a
// Retry-After, without reaching the token server (it did not act).
//
// With expireIn set, it rewrites the expires_at of every token it passes
// on to now + expireIn (real time): a token that arrives already expired
// or about to, as a server with a broken clock or config sends them.
type gate struct {
	URL        string
	down       atomic.Bool
	retryAfter atomic.Int64 // seconds
	refused    atomic.Int64 // requests answered 503
	expireIn   atomic.Pointer[time.Duration]
	// accessToken, when set, replaces the access token of every token
	// response passed on: a server that issues an unusable value.
	accessToken atomic.Pointer[string]
}

func newGate(t *testing.T, next http.Handler) *gate {
	g := &gate{}
	g.retryAfter.Store(1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.down.Load() {
			g.refused.Add(1)
			w.Header().Set("Retry-After", strconv.FormatInt(g.retryAfter.Load(), 10))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"code":"unavailable","message":"upstream unavailable"}`))
			return
		}
		d, tok := g.expireIn.Load(), g.accessToken.Load()
		if d == nil && tok == nil {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var m map[string]any
		if json.Unmarshal(body, &m) == nil && m["access_token"] != nil {
			if d != nil {
				m["expires_at"] = time.Now().Add(*d).Unix()
			}
			if tok != nil {
				m["access_token"] = *tok
			}
			body, _ = json.Marshal(m)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	}))
	t.Cleanup(hs.Close)
	g.URL = hs.URL
	return g
}

// fail takes the token server out of reach (true) or back.
func (g *gate) fail(down bool) { g.down.Store(down) }
