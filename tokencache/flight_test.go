package tokencache_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// unlockStall is FileStorage whose next Unlock, once armed, waits until the
// test resumes it: the operation that made it has installed its token and is
// still in flight.
type unlockStall struct {
	*certmagic.FileStorage
	stall atomic.Pointer[func()]
}

func (s *unlockStall) Unlock(ctx context.Context, key string) error {
	if f := s.stall.Swap(nil); f != nil {
		(*f)()
	}
	return s.FileStorage.Unlock(ctx, key)
}

// waitingCtx reports, by closing waiting, the first time its Done is asked
// for: the cache asks when its caller starts waiting for a flight.
type waitingCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *waitingCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// TestLateCallersDoNotJoinAnOlderFlight: a token rejected by an upstream,
// or a refresh an operator forces, while an operation that began before is
// still finishing (here the automatic login, between installing its token
// and releasing the storage lock) must not be answered with that
// operation's result: it is the very token to be replaced.
func TestLateCallersDoNotJoinAnOlderFlight(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		act  func(ctx context.Context, c *tokencache.Cache, old *tokencache.Token) (*tokencache.Token, error)
	}{
		{"token rejected", func(ctx context.Context, c *tokencache.Cache, old *tokencache.Token) (*tokencache.Token, error) {
			if !c.Invalidate(old.Value) {
				return nil, errors.New("Invalidate did not mark the current token")
			}
			return c.Token(ctx)
		}},
		{"refresh forced", func(ctx context.Context, c *tokencache.Cache, _ *tokencache.Token) (*tokencache.Token, error) {
			if err := c.Refresh(ctx); err != nil {
				return nil, err
			}
			return c.Token(context.Background())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			st := &unlockStall{FileStorage: &certmagic.FileStorage{Path: e.dir}}
			stall, stalled, resume := pause()
			st.stall.Store(stall)
			c := e.cache(func(cfg *tokencache.Config) {
				cfg.Storage = st
				cfg.Login = e.passwordLogin() // the loop logs in at once
			})
			await(t, "the automatic login to release its lock", stalled)
			old := mustToken(t, c) // installed, while the login is still in flight
			got := make(chan *tokencache.Token, 1)
			ctx := &waitingCtx{Context: context.Background(), waiting: make(chan struct{})}
			go func() {
				tok, err := tc.act(ctx, c, old)
				if err != nil {
					t.Error(err)
				}
				got <- tok
			}()
			await(t, "the caller to wait for a flight", ctx.waiting)
			close(resume)
			if tok := <-got; tok != nil && tok.Value == old.Value {
				t.Fatal("answered with the token it was to replace: joined the flight that brought it")
			}
			if n := e.srv.Stats().RefreshSuccesses; n != 1 {
				t.Fatalf("%d refreshes, want 1", n)
			}
		})
	}
}
