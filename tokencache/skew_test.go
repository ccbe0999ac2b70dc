package tokencache_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// aheadClock is the fake clock read by an instance whose clock leads the
// token server's (the fake clock itself) by d; d < 0 lags.
type aheadClock struct {
	*fakeClock
	d time.Duration
}

func (c aheadClock) Now() time.Time { return c.fakeClock.Now().Add(c.d) }

// serverClocks is the token server's side of the skew test: it knows
// every access token's expiry on its own clock, and when the token each
// refresh replaced was issued.
type serverClocks struct {
	clk      *fakeClock
	mu       sync.Mutex
	expiry   map[string]time.Time // access token → its expiry on the server's clock
	issued   time.Time            // the latest grant's issue, on the server's clock
	early    []time.Duration      // refreshes before half the lifetime: how early
	refreshs atomic.Int64
}

// skewedBackend is the real backend as an instance whose clock leads the
// server's by d sees it: grants' expiries on that instance's clock (as a
// backend corrects them from Date), and ServerSkew d, measured by a probe
// until a grant has come back.
type skewedBackend struct {
	tokencache.Backend
	srv      *serverClocks
	d        time.Duration
	measured atomic.Bool
	probes   atomic.Int64
}

func (b *skewedBackend) ServerSkew(ctx context.Context) (time.Duration, error) {
	if b.measured.Load() {
		return b.d, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err // a probe cannot be sent
	}
	b.probes.Add(1)
	b.measured.Store(true)
	return b.d, nil
}

// received notes g (on the server's clock, as the env's backend returns
// it) and moves it onto the instance's clock.
func (b *skewedBackend) received(g *tokencache.Grant, err error) (*tokencache.Grant, error) {
	if g == nil {
		return g, err
	}
	b.measured.Store(true)
	s := b.srv
	s.mu.Lock()
	s.expiry[g.AccessToken], s.issued = g.Expiry, s.clk.Now()
	s.mu.Unlock()
	g.Expiry = g.Expiry.Add(b.d)
	if !g.RefreshExpiry.IsZero() {
		g.RefreshExpiry = g.RefreshExpiry.Add(b.d)
	}
	return g, err
}

func (b *skewedBackend) Refresh(ctx context.Context, key *dpop.Key, rt string) (*tokencache.Grant, error) {
	s := b.srv
	s.refreshs.Add(1)
	s.mu.Lock()
	if half := s.issued.Add(30 * time.Second); s.clk.Now().Before(half) {
		s.early = append(s.early, half.Sub(s.clk.Now()))
	}
	s.mu.Unlock()
	return b.received(b.Backend.Refresh(ctx, key, rt))
}

func (b *skewedBackend) login(l tokencache.LoginFunc) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, prev string) (*tokencache.Grant, error) {
		return b.received(l(ctx, key, prev))
	}
}

// expired reports how long before now (server clock) tok expired; ≤ 0
// while it is valid.
func (s *serverClocks) expired(tok *tokencache.Token) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clk.Now().Sub(s.expiry[tok.Value])
}

// Two instances on one storage, one clock 30 s ahead of the token
// server's and one 30 s behind, each judging the other's tokens: no
// expired token is handed out and no refresh comes early (before half the
// 60 s lifetime; RefreshBefore is 60 s). The lagging instance only adopts
// at first: it never talked to the token server, so it asks for its clock
// (one probe) before judging the stored token.
//
// Before (expiries taken on the writer's clock): the lagging instance
// hands out the leading one's token after it expired (by up to 25 s), and
// the leading one refreshes the lagging one's token 20 s early.
func TestSkewedInstancesJudgeExpiryOnServerClock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := &serverClocks{clk: e.clk, expiry: map[string]time.Time{}}
	instance := func(d time.Duration) (*tokencache.Cache, *skewedBackend) {
		b := &skewedBackend{Backend: e.backend(e.cl), srv: srv, d: d}
		c := e.cache(func(cfg *tokencache.Config) {
			cfg.Lazy, cfg.Clock, cfg.Backend = true, aheadClock{e.clk, d}, b
		})
		return c, b
	}
	ahead, ab := instance(30 * time.Second)
	if err := ahead.Login(context.Background(), ab.login(e.passwordLogin())); err != nil {
		t.Fatal(err)
	}
	first := mustToken(t, ahead)
	behind, bb := instance(-30 * time.Second)

	check := func(who string, c *tokencache.Cache) *tokencache.Token {
		t.Helper()
		tok, err := c.Token(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		if late := srv.expired(tok); late > 0 {
			t.Errorf("%s handed out a token that expired %v ago on the token server's clock", who, late)
		}
		return tok
	}
	// 5 s past the token's end on the server's clock; 25 s before it on
	// the lagging instance's, had it taken the expiry on the writer's.
	srv.mu.Lock()
	end := srv.expiry[first.Value]
	srv.mu.Unlock()
	e.clk.Advance(end.Sub(e.clk.Now()) + 5*time.Second)
	tok := check("the lagging instance", behind)
	if tok.Value == first.Value {
		t.Error("the lagging instance handed out the expired token")
	}
	if n := bb.probes.Load(); n != 1 {
		t.Fatalf("the lagging instance asked for the server's clock %d times before judging; want 1", n)
	}
	// The lagging instance refreshes (an operator's forced refresh, 40 s
	// into the token's life). 10 s into the new token's 60 s, the leading
	// instance adopts it; on the lagging writer's clock it would be 70 s
	// in, past its refresh point.
	e.clk.Advance(40 * time.Second)
	if err := behind.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok = check("the lagging instance", behind)
	e.clk.Advance(10 * time.Second)
	if got := check("the leading instance", ahead); got.Value != tok.Value {
		t.Error("the leading instance did not adopt the stored token")
	}
	// Three more lifetimes, both asked every 5 s.
	for range 36 {
		e.clk.Advance(5 * time.Second)
		check("the leading instance", ahead)
		check("the lagging instance", behind)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.early) != 0 {
		t.Errorf("%d early refreshes (before half the lifetime by %v)", len(srv.early), srv.early)
	}
	if n := srv.refreshs.Load(); n < 3 || n > 5 {
		t.Fatalf("%d refreshes over four lifetimes", n)
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("reuse events %d", s.ReuseEvents)
	}
	t.Logf("%d refreshes; probes: leading %d, lagging %d", srv.refreshs.Load(), ab.probes.Load(), bb.probes.Load())
}
