package tokencache

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Clock is the engine's time source. Every deadline the engine computes and
// every timer it waits on come from it, so tests can move time instead of
// waiting for it. Config.Clock defaults to the system clock.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once d has passed on this clock
	// (at once when d ≤ 0).
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's one-shot timer, like time.Timer.
type Timer interface {
	// C delivers the time when the timer fires.
	C() <-chan time.Time
	// Stop and Reset behave like time.Timer's.
	Stop() bool
	Reset(d time.Duration) bool
}

// systemClock is the real clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time        { return t.t.C }
func (t systemTimer) Stop() bool                 { return t.t.Stop() }
func (t systemTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

// Interface guards
var (
	_ Clock = systemClock{}
	_ Timer = systemTimer{}
)

// ServerClock is implemented by a backend that knows how far the local
// clock is from its token server's (from the Date of the server's
// answers). Expiries are the token server's: with it, the engine judges
// every stored expiry on that clock, so an instance whose own clock is off
// neither hands out an expired token nor refreshes early, including one
// that only adopts tokens another instance stored (each record says how far
// its writer's clock was off; see record.ServerSkew).
type ServerClock interface {
	// ServerSkew returns how far the local clock is ahead of the token
	// server's (localNow − serverNow), as last measured. With no
	// measurement yet it asks the server (one request whose Date it
	// reads); an error means it cannot tell. The engine calls it when a
	// cache is made, with a context already done (a measurement in memory
	// answers; the request fails at once), before it first judges a stored
	// expiry, and after every refresh or login.
	ServerSkew(ctx context.Context) (time.Duration, error)
}

// ErrNoServerClock is a ServerClock's error when the backend behind it
// (a wrapper's) does not learn its token server's clock: expiries are
// then taken on their writer's clock, without a warning.
var ErrNoServerClock = errors.New("the backend does not learn its token server's clock")

// offset is a cache's estimate of its clock's lead over the token
// server's (see ServerClock).
type offset struct {
	// probe: the backend is a ServerClock not asked yet. Until it is, a
	// stored token is not handed out (newSnapshot), since this instance
	// cannot tell when it expires.
	probe atomic.Bool
	// skew is the measured lead; nil when unknown (no ServerClock, or it
	// could not tell), and then a record's times are taken on its writer's
	// clock, as if the two clocks agreed.
	skew atomic.Pointer[time.Duration]
}

// init starts the estimate for backend b: what a ServerClock knows
// without asking (it is called with a context that is already done, so it
// cannot send anything), else a probe pending. A process's sessions share
// their backends, so only the first of them has to ask.
func (o *offset) init(b Backend) {
	sc, ok := b.(ServerClock)
	if !ok {
		return
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if d, err := sc.ServerSkew(done); err == nil {
		o.skew.Store(&d)
		return
	}
	o.probe.Store(true)
}

// frame is the lead on whose clock this instance reads times written by a
// writer whose clock led by writer.
func (o *offset) frame(writer time.Duration) time.Duration {
	if d := o.skew.Load(); d != nil {
		return *d
	}
	return writer
}

// probeTimeout bounds asking for the token server's clock: until it is
// known, or the asking failed, a stored token is not handed out (see
// offset.probe), so a token server out of reach at start delays requests
// by this much at most, after which stored expiries are taken on their
// writer's clock.
const probeTimeout = 5 * time.Second

// learnSkew asks the backend for the token server's clock (see
// ServerClock). A failure leaves the last estimate, or none.
func (c *Cache) learnSkew(ctx context.Context) {
	sc, ok := c.cfg.Backend.(ServerClock)
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, min(c.cfg.CallTimeout, probeTimeout))
	defer cancel()
	d, err := sc.ServerSkew(cctx)
	c.offset.probe.Store(false)
	if err != nil {
		if c.offset.skew.Load() == nil && !errors.Is(err, ErrNoServerClock) {
			c.log().Warn("token server's clock unknown; stored expiries are taken on their writer's clock",
				zap.String("session", c.cfg.Name), zap.Error(err))
		}
		return
	}
	c.offset.skew.Store(&d)
}
