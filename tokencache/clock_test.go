package tokencache_test

import (
	"context"
	"sync"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// fakeClock is a tokencache.Clock that moves only when a test says so.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clk   *fakeClock
	c     chan time.Time
	at    time.Time
	armed bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) NewTimer(d time.Duration) tokencache.Timer {
	t := &fakeTimer{clk: f, c: make(chan time.Time, 1)}
	f.mu.Lock()
	f.timers = append(f.timers, t)
	f.mu.Unlock()
	t.Reset(d)
	return t
}

// Advance moves the clock by d and fires the timers that are due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for _, t := range f.timers {
		if t.armed && !t.at.After(f.now) {
			t.fireLocked()
		}
	}
}

// Armed counts timers waiting to fire: the background loop is idle, with
// its next wake-up scheduled, exactly when its timer is armed.
func (f *fakeClock) Armed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, t := range f.timers {
		if t.armed {
			n++
		}
	}
	return n
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := t.armed
	t.armed = false
	t.drainLocked()
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := t.armed
	t.drainLocked()
	t.at, t.armed = t.clk.now.Add(d), true
	if d <= 0 {
		t.fireLocked()
	}
	return was
}

func (t *fakeTimer) fireLocked() {
	t.armed = false
	select {
	case t.c <- t.clk.now:
	default:
	}
}

func (t *fakeTimer) drainLocked() {
	select {
	case <-t.c:
	default:
	}
}

// onClock runs a real backend (sandbox and client on real time, so their
// tokens stay valid for the whole test) and moves the expiries it reports
// onto the fake clock, where the engine lives.
type onClock struct {
	tokencache.Backend
	clk *fakeClock
}

func (b onClock) Refresh(ctx context.Context, key *dpop.Key, rt string) (*tokencache.Grant, error) {
	g, err := b.Backend.Refresh(ctx, key, rt)
	return b.clk.shift(g), err
}

func (f *fakeClock) shift(g *tokencache.Grant) *tokencache.Grant {
	if g == nil {
		return nil
	}
	d := f.Now().Sub(time.Now())
	g.Expiry = g.Expiry.Add(d)
	if !g.RefreshExpiry.IsZero() {
		g.RefreshExpiry = g.RefreshExpiry.Add(d)
	}
	return g
}

// login is l with its expiries moved onto the fake clock.
func (f *fakeClock) login(l tokencache.LoginFunc) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, prev string) (*tokencache.Grant, error) {
		g, err := l(ctx, key, prev)
		return f.shift(g), err
	}
}

var _ tokencache.Clock = (*fakeClock)(nil)
