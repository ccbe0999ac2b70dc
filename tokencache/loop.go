package tokencache

import (
	"errors"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// maxCredentialRejections is how many consecutive times the server may
// reject the configured credentials before automatic login pauses: one
// rejection may be a server fault (a client_credentials 401 during a
// deploy), a few in a row with backoff are not.
const maxCredentialRejections = 3

// loop is the background refresher: it sleeps until the current token's
// refresh time (or the end of a backoff), then refreshes through the same
// single flight callers use.
func (c *Cache) loop() {
	defer close(c.done)
	timer := c.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Stop()
		if at, ok := c.nextWake(); ok {
			timer.Reset(max(at.Sub(c.clock.Now()), 0))
		}
		select {
		case <-c.ctx.Done():
			return
		case <-c.wake:
			continue
		case <-timer.C():
		}
		c.mu.Lock()
		f := c.startFlightLocked()
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-c.ctx.Done():
			return
		}
	}
}

// nextWake says when the background refresher should act next.
func (c *Cache) nextWake() (time.Time, bool) {
	s := c.current()
	now := c.clock.Now()
	c.mu.Lock()
	next, forced, rotated := c.nextAttempt, c.forced != "", c.lastRotated
	c.mu.Unlock()
	if c.loginFailed.Load() {
		return time.Time{}, false // until an operator or a config change resumes it
	}
	var at time.Time
	switch {
	case c.pending.Load() != nil:
		at = now // a result waits to be stored
	case s.rec.State == StateActive && (forced || s.rejected):
		at = now // retried (with backoff) until it succeeds
	case s.rec.State == StateActive && !c.cfg.Lazy && (c.cfg.inUse == nil || c.cfg.inUse(s.refreshAt)):
		at = s.refreshAt
	case s.rec.State == StateLoggedOut && c.cfg.Login != nil && !s.rec.NoAutoLogin:
		at = now
	default:
		return time.Time{}, false
	}
	// However short-lived the tokens, refreshes keep a minimum distance.
	if floor := rotated.Add(c.cfg.MinBackoff); floor.After(at) {
		at = floor
	}
	if next.After(at) {
		at = next
	}
	return at, true
}

// install publishes a new snapshot and records the outcome of an attempt
// ("" for none). A refreshed or new token that is not usable for
// minUsable is stored all the same (its refresh token is the live one) but
// not handed out, and the next refresh backs off.
func (o *op) install(rec *record, key *dpop.Key, outcome, reason string) *snapshot {
	c := o.c
	s := c.newSnapshot(rec, key)
	held := c.current().rec.AccessToken
	c.publish(s)
	if outcome == "" {
		c.signalWake()
		return s
	}
	now := c.clock.Now()
	unusable := rec.State == StateActive && !s.usable.After(now.Add(minUsable))
	if unusable && reason == "" {
		reason = ReasonUnusableToken
	}
	c.mu.Lock()
	// A forced refresh is an operator's: the admin layer logs it.
	forced := c.forced != ""
	if rec.AccessToken != c.forced {
		c.forced = ""
	}
	switch outcome {
	case OutcomeRefreshed:
		c.refreshes++
		c.lastRotated = now
	case OutcomeAdopted:
		c.adoptions++
	}
	switch {
	case unusable && outcome != OutcomeDead && outcome != OutcomeUnknown:
		d := c.backoffLocked(nil, now)
		c.lastErr = errNoUsableToken
		c.log().Warn("new access token is not usable (already expired or about to); stored, not handed out",
			zap.String("session", c.cfg.Name), zap.Duration("retry_in", d))
	case outcome != OutcomeDead && outcome != OutcomeUnknown:
		c.failures, c.credFailures, c.nextAttempt, c.lastErr = 0, 0, time.Time{}, nil
	}
	c.lastRefresh, c.lastOutcome = now, outcome
	c.mu.Unlock()
	if !(outcome == OutcomeAdopted && rec.AccessToken == held) {
		o.logNewToken(s, outcome, o.operator || forced)
	}
	e := Event{Kind: EventAttempt, Outcome: outcome, Reason: reason, Duration: o.rtt}
	if outcome == OutcomeRefreshed && !o.prev.IsZero() {
		e.Lead = o.prev.Sub(now)
	}
	c.event(e)
	c.signalWake()
	return s
}

// logNewToken logs a token this instance now holds, once, saying who the
// session is and until when; never the token. quiet: an operator asked,
// and the admin layer logs the outcome at INFO already.
func (o *op) logNewToken(s *snapshot, outcome string, quiet bool) {
	var msg string
	switch outcome {
	case OutcomeRefreshed:
		msg = "token refreshed"
	case OutcomeAdopted:
		msg = "adopted the token another instance stored"
	case OutcomeLoggedIn:
		msg = "session logged in"
	}
	if msg == "" || s.tok == nil {
		return
	}
	level := zap.InfoLevel
	if quiet {
		level = zap.DebugLevel
	}
	fields := []zap.Field{zap.String("session", o.c.cfg.Name), zap.String("sub", s.tok.Subject),
		zap.String("sid", s.tok.SessionID), zap.Time("expires_at", s.tok.Expiry)}
	if s.key != nil {
		fields = append(fields, zap.String("jkt", s.key.Thumbprint()))
	}
	o.c.log().Log(level, msg, fields...)
}

// refused records an operator's call the server refused: the operator has
// the answer and the admin layer logs it, and nothing is retried, so no
// backoff is scheduled and the engine logs it at debug only.
func (o *op) refused(reason string, err error) error {
	c := o.c
	c.mu.Lock()
	c.lastErr, c.lastRefresh, c.lastOutcome = err, c.clock.Now(), OutcomeLoginFail
	c.mu.Unlock()
	c.log().Debug("operator's login failed", zap.String("session", c.cfg.Name), zap.Error(err))
	c.event(Event{Kind: EventAttempt, Outcome: OutcomeLoginFail, Reason: reason, Duration: o.rtt})
	return err
}

// fail records a failed attempt and schedules the next one.
func (o *op) fail(outcome, reason string, err error) error {
	c := o.c
	now := c.clock.Now()
	c.mu.Lock()
	d := c.backoffLocked(err, now)
	c.lastErr, c.lastRefresh, c.lastOutcome = err, now, outcome
	c.mu.Unlock()
	c.log().Warn("token refresh failed", zap.String("session", c.cfg.Name), zap.String("outcome", outcome),
		zap.Duration("retry_in", d), zap.Error(err))
	c.event(Event{Kind: EventAttempt, Outcome: outcome, Reason: reason, Duration: o.rtt})
	c.signalWake()
	return err
}

// backoffLocked schedules the next attempt: exponential backoff with full
// jitter, a server's Retry-After honoured up to MaxBackoff, and never later
// than the end of the current token's usable life, so that a long hint
// cannot park a session whose token is about to run out. c.mu must be held.
func (c *Cache) backoffLocked(err error, now time.Time) time.Duration {
	c.failures++
	d := c.cfg.MinBackoff << min(c.failures-1, 20)
	d = min(d, c.cfg.MaxBackoff)
	d = d/2 + rand.N(d/2+1)
	var ra RetryAfterError
	if errors.As(err, &ra) && ra.RetryAfter() > d {
		d = min(ra.RetryAfter(), c.cfg.MaxBackoff)
	}
	if s := c.current(); s.valid(now) {
		d = min(d, s.usable.Sub(now))
	}
	c.nextAttempt = now.Add(d)
	return d
}

// credentialsRejected handles a refusal of the configured credentials:
// retried with backoff up to maxCredentialRejections times in a row, then
// automatic login pauses (StateLoginFailed) with one ERROR line.
func (o *op) credentialsRejected(err error) error {
	c := o.c
	c.mu.Lock()
	c.credFailures++
	n := c.credFailures
	c.mu.Unlock()
	if n < maxCredentialRejections {
		return o.fail(OutcomeLoginFail, reasonOf(err, ReasonInvalidClient), err)
	}
	now := c.clock.Now()
	c.mu.Lock()
	c.lastErr, c.lastRefresh, c.lastOutcome = err, now, OutcomeLoginFail
	c.mu.Unlock()
	c.loginFailed.Store(true)
	c.log().Error("the token server rejected the configured credentials; automatic login is paused "+
		"until the credentials change or an operator logs in or refreshes",
		zap.String("session", c.cfg.Name), zap.Int("attempts", n), zap.Error(err))
	c.event(Event{Kind: EventAttempt, Outcome: OutcomeLoginFail, Reason: reasonOf(err, ReasonInvalidClient), Duration: o.rtt})
	c.reportState()
	c.signalWake()
	return err
}

// ResumeLogin lifts a pause of automatic login after rejected credentials
// (StateLoginFailed), for a config reload that changed the credentials.
func (c *Cache) ResumeLogin() {
	c.mu.Lock()
	paused := c.loginFailed.Load()
	c.resumeLoginLocked()
	c.mu.Unlock()
	if paused {
		c.reportState()
		c.signalWake()
	}
}

// resumeLoginLocked clears the credential-rejection state. c.mu must be held.
func (c *Cache) resumeLoginLocked() {
	if c.loginFailed.Swap(false) {
		c.nextAttempt = time.Time{}
	}
	c.credFailures = 0
}

func (c *Cache) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// reasonOf is the failure reason err carries, or def.
func reasonOf(err error, def string) string {
	var re ReasonError
	if errors.As(err, &re) {
		if r := re.FailureReason(); r != "" {
			return r
		}
	}
	return def
}

func (c *Cache) event(e Event) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(e)
	}
}

func (c *Cache) storageFailed(op string) {
	c.event(Event{Kind: EventStorageError, Op: op})
}
