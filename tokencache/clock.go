package tokencache

import "time"

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
