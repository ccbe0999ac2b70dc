package tokencache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Config configures a Cache.
type Config struct {
	// Name identifies the session; state is stored under
	// inject_token/<Name>/. Required.
	Name string
	// Storage holds the session durably and coordinates instances through
	// its Lock. Required.
	Storage certmagic.Storage
	// Backend refreshes and revokes. Required.
	Backend Backend
	// Login, when set, is used to log in automatically when the session is
	// logged out (first start, revoked, lost) unless an operator logged it
	// out on purpose or the server rejected its credentials (see
	// StateLoginFailed).
	Login LoginFunc
	// RefreshBefore is how long before expiry to refresh (default 60s); a
	// refresh never happens before half the token's lifetime has passed.
	RefreshBefore time.Duration
	// KeyAlgorithm is the DPoP key type for new sessions (default ES256).
	KeyAlgorithm dpop.Algorithm
	// KeySource, when set, supplies the session's one DPoP key (held in
	// hardware); KeyAlgorithm is then unused. See KeySource.
	KeySource KeySource
	// LockTimeout bounds waiting for the storage lock (default 30s).
	LockTimeout time.Duration
	// CallTimeout bounds one backend call (default 30s).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 1s and 2m); delays double with full jitter. A server's
	// Retry-After is honoured up to MaxBackoff. MinBackoff is also the
	// least time between two refreshes by this instance.
	MinBackoff, MaxBackoff time.Duration
	// Lazy turns the background refresher off: tokens are refreshed only
	// when a caller finds them expired. Suits rarely used sessions.
	Lazy bool
	// Logger receives state changes; never tokens. Default: no logging.
	Logger *zap.Logger
	// Observe, when set, receives an Event after every refresh or login
	// attempt, lock wait, storage error and state change, for metrics. It is
	// called synchronously and must be quick.
	Observe func(Event)
	// Clock is the time source (default: the system clock). Tests inject
	// one to move time instead of waiting for it.
	Clock Clock

	// Set by a Runtime for its sessions only (see Template, sched.go).

	// sub is the storage directory below inject_token/ (default: Name
	// made safe).
	sub string
	// key is stored in every record the cache writes.
	key string
	// notify, when set, replaces the background refresher (Start is never
	// called): it hears whenever the next wake may have changed, and the
	// scheduler drives the cache. It may be called with c.mu held, so it must
	// not block or take the cache's locks.
	notify func()
	// inUse says whether a session due to refresh at the given time counts
	// as in use; one that does not refreshes on its next use instead.
	inUse func(refreshAt time.Time) bool
	// use hears of every Token call (for inUse).
	use func()
}

// Outcomes reported in Status.LastOutcome and to Config.Observe.
const (
	OutcomeRefreshed = "refreshed"  // this instance refreshed
	OutcomeAdopted   = "adopted"    // another instance had already refreshed
	OutcomeLoggedIn  = "logged_in"  // a new session was started
	OutcomeTransient = "transient"  // temporary failure; will retry
	OutcomeDead      = "dead"       // server ended the session
	OutcomeUnknown   = "lost"       // response lost; refresh token given up
	OutcomeLoginFail = "login_fail" // a login attempt failed
	OutcomeLoggedOut = "logged_out" // logged out or forgotten
)

// Cache keeps one session's access token fresh. Reads are lock-free while
// the cached token is valid; one refresh runs at a time per session in this
// process (single flight) and across processes sharing Storage (storage
// lock, then re-read, then adopt or refresh, with every write fenced by
// generation; see protocol.go).
type Cache struct {
	cfg    Config
	clock  Clock
	jitter float64 // in [0,1): this instance's share of the refresh window
	// claimer names this instance in write claims. Its operations never
	// overlap (opMu), so they never need to contest each other, and a
	// claim left behind by a failed write does not stop its own retry.
	claimer string
	// spareDevice is the device id the session's first write stores when
	// the stored record has none yet (see DeviceID).
	spareDevice string
	st          atomic.Pointer[store]
	logger      atomic.Pointer[zap.Logger]
	snap        atomic.Pointer[snapshot]
	waits       atomic.Int64
	offset      offset // this clock's lead over the token server's

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	wake      chan struct{}
	done      chan struct{} // closed when the background loop ends
	startOnce sync.Once
	started   atomic.Bool

	// opMu serialises every operation that writes state (refresh, login,
	// logout) in this process, so a logout cannot race a refresh that would
	// write tokens back. It guards pending and held.
	opMu sync.Mutex
	// held releases the storage lock an operation kept because it ended
	// with a write pending (see op.keep); nil when none is held. heldSince
	// is when the first operation kept it.
	held      func()
	heldSince time.Time
	// pending is a result that is not durable yet (the write failed): it is
	// written before anything else, and only over the intent it resolves.
	// Written only under opMu; atomic so the loop can see that one waits.
	pending atomic.Pointer[pendingWrite]
	// loginFailed: automatic login is paused (StateLoginFailed). Atomic so
	// that state reads never need mu.
	loginFailed atomic.Bool

	mu           sync.Mutex // guards the fields below
	flight       *call
	epoch        uint64 // bumped when a token is rejected or a refresh forced
	forced       string // a token a forced refresh must replace, not adopt
	rejected     string // a token an upstream rejected: never adopted or re-installed
	failures     int    // consecutive failed attempts (backoff exponent)
	credFailures int    // consecutive credential rejections
	nextAttempt  time.Time
	lastPeek     time.Time // last storage peek while backing off
	lastRotated  time.Time // last refresh this instance made (minimum interval)
	lastErr      error
	lastRefresh  time.Time
	lastOutcome  string
	refreshes    int64
	adoptions    int64
	reported     stateReport // last EventState sent
}

type call struct {
	done  chan struct{}
	snap  *snapshot
	err   error
	epoch uint64 // c.epoch when the flight started
}

// New loads the session from storage (no network calls). Start starts the
// background refresher; Close stops it.
func New(cfg Config) (*Cache, error) {
	if cfg.Name == "" || cfg.Storage == nil || cfg.Backend == nil {
		return nil, errors.New("tokencache: Name, Storage and Backend are required")
	}
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = 60 * time.Second
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(2*time.Minute, cfg.MinBackoff)
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	c := &Cache{cfg: cfg, clock: cfg.Clock, wake: make(chan struct{}, 1), done: make(chan struct{}), jitter: rand.Float64(), claimer: randomID(), spareDevice: newDeviceID()}
	c.offset.init(cfg.Backend)
	c.SetStorage(cfg.Storage)
	c.SetLogger(cfg.Logger)
	c.ctx, c.cancel = context.WithCancel(context.Background())

	// Not below c.ctx: nothing can close c before New returns, and a child
	// would leave c.ctx a children map for the cache's lifetime.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.CallTimeout)
	defer cancel()
	rec, err := c.store().load(ctx)
	if err != nil {
		c.log().Error("session state cannot be used (unreadable: a login replaces it; newer format: upgrade); treating as logged out",
			zap.String("session", cfg.Name), zap.Error(err))
		rec = &record{State: StateLoggedOut, Reason: err.Error()}
	}
	var key *dpop.Key
	if rec.KeyThumbprint != "" {
		switch key, err = c.store().loadKey(ctx, rec.KeyThumbprint); {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errKeyBroken):
			c.log().Error("session DPoP key missing; session cannot be refreshed",
				zap.String("session", cfg.Name), zap.Error(err))
			rec = &record{State: StateLoggedOut, Reason: "DPoP key missing from storage", Generation: rec.Generation}
		case err != nil:
			// A storage hiccup: the key is still there. Keep the session;
			// its DPoP-bound token is not handed out until the key loads.
			c.log().Warn("loading the session's DPoP key; retrying on the next refresh",
				zap.String("session", cfg.Name), zap.Error(err))
		}
	}
	c.publish(c.newSnapshot(rec, key))
	return c, nil
}

// Start starts the background refresher (and automatic login). Until then
// tokens are still refreshed, but only when a caller finds them expired.
// Separate from New so that loading a config only to validate it never
// talks to the token server. Start is idempotent.
func (c *Cache) Start() {
	c.startOnce.Do(func() {
		c.started.Store(true)
		go c.loop()
	})
}

// Started reports whether Start was called.
func (c *Cache) Started() bool { return c.started.Load() }

// SetStorage points the cache at a new storage (a config reload hands out a
// new instance; the old one may be closed).
func (c *Cache) SetStorage(s certmagic.Storage) {
	if s != nil {
		sub := c.cfg.sub
		if sub == "" {
			sub = certmagic.StorageKeys.Safe(c.cfg.Name)
		}
		c.st.Store(&store{s: s, name: c.cfg.Name, now: c.clock.Now, frame: c.offset.frame, failed: c.storageFailed, keys: c.cfg.KeySource, sub: sub})
	}
}

var nopLogger = zap.NewNop()

// SetLogger replaces the logger (see SetStorage).
func (c *Cache) SetLogger(l *zap.Logger) {
	if l == nil {
		l = nopLogger
	}
	c.logger.Store(l)
}

func (c *Cache) store() store     { return *c.st.Load() }
func (c *Cache) log() *zap.Logger { return c.logger.Load() }
func (c *Cache) signalWake() {
	if c.cfg.notify != nil {
		c.cfg.notify()
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
func (c *Cache) current() *snapshot { return c.snap.Load() }

// closeFlushTimeout bounds Close's attempt to store a grant that is still
// only in memory.
const closeFlushTimeout = 5 * time.Second

// Close stops the background refresher and any operation that is only
// waiting for the storage lock, waits for an operation that already sent a
// request (so it still stores its rotated token), tries once more (bounded)
// to store a grant that is still only in memory, and makes later
// operations fail at once. A grant that still could not be stored stays in
// the closed cache for TakeOver.
func (c *Cache) Close() {
	c.cancel()
	c.startOnce.Do(func() { close(c.done) }) // never started: nothing to wait for
	if c.started.Load() {
		<-c.done
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if c.pending.Load() != nil {
		ctx, cancel := context.WithTimeout(context.Background(), min(closeFlushTimeout, c.cfg.LockTimeout))
		defer cancel()
		o := c.newOp(ctx, ctx)
		if err := o.flushPending(); err != nil {
			c.log().Error("closing with a refreshed grant that could not be stored yet",
				zap.String("session", c.cfg.Name), zap.Error(err))
		}
	}
	if c.held != nil {
		c.held()
		c.held = nil
	}
}

// TakeOver closes old, a cache of the same session being replaced (a
// config reload rebuilt it), and takes over a refreshed grant old still
// holds only in memory, so it is not lost: its rotated refresh token is the
// only valid one. Operations of c wait until the takeover is done, so none
// of them mistakes that grant's intent for an interrupted refresh.
func (c *Cache) TakeOver(old *Cache) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	old.Close()
	old.opMu.Lock()
	p := old.pending.Swap(nil)
	old.opMu.Unlock()
	if d := old.offset.skew.Load(); d != nil && c.offset.probe.Swap(false) {
		// The same session's token server: its clock is known already,
		// and the token loaded in New can be judged without asking again.
		c.offset.skew.Store(d)
		s := c.current()
		rec := s.rec
		rec.onClock(*d)
		c.publish(c.newSnapshot(&rec, s.key))
	}
	if p != nil && c.pending.CompareAndSwap(nil, p) {
		c.signalWake()
	}
}

// errClosed is returned by operations on a closed cache.
var errClosed = errors.New("tokencache: cache closed")

// Token returns a token that is valid now. While the cached token is valid
// it returns at once without locking, even during a refresh. Otherwise it
// waits for the one refresh in flight (starting it if needed), or fails fast
// with an *UnavailableError during backoff (after a cheap, rate-limited
// look at storage for a token another instance stored).
func (c *Cache) Token(ctx context.Context) (*Token, error) {
	if c.cfg.use != nil {
		c.cfg.use()
	}
	if s := c.current(); s.fresh(c.clock.Now()) {
		return s.tok, nil
	}
	return c.slowToken(ctx)
}

func (c *Cache) slowToken(ctx context.Context) (*Token, error) {
	c.mu.Lock()
	s := c.current()
	now := c.clock.Now()
	if s.fresh(now) {
		c.mu.Unlock()
		return s.tok, nil
	}
	if c.flight == nil && (now.Before(c.nextAttempt) || c.loginFailed.Load()) {
		if s.valid(now) {
			// A rejected token keeps serving while the refresh backs off:
			// the upstream is the judge, and a 503 for everyone is worse.
			c.mu.Unlock()
			return s.tok, nil
		}
		peek := now.Sub(c.lastPeek) >= c.cfg.MinBackoff
		if peek {
			c.lastPeek = now
		}
		err := c.unavailable(s, c.nextAttempt.Sub(now), c.lastErr)
		c.mu.Unlock()
		if peek {
			if tok := c.peek(ctx); tok != nil {
				return tok, nil
			}
		}
		return nil, err
	}
	f := c.startFlightLocked()
	c.mu.Unlock()
	c.waits.Add(1)
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	now = c.clock.Now()
	if s := f.snap; s != nil && s.fresh(now) {
		return s.tok, nil
	}
	if s := c.current(); s.valid(now) {
		return s.tok, nil // the rejected token, until a fresh one exists
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return nil, c.unavailable(c.current(), c.nextAttempt.Sub(now), f.err)
}

// peek adopts a fresh token another instance stored while this one backs
// off. It skips when an operation is running (that operation decides) or a
// grant of ours waits to be stored (storage is behind us).
func (c *Cache) peek(ctx context.Context) *Token {
	if !c.opMu.TryLock() {
		return nil
	}
	defer c.opMu.Unlock()
	if c.pending.Load() != nil || c.ctx.Err() != nil {
		return nil
	}
	if c.offset.probe.Load() {
		c.learnSkew(ctx)
	}
	o := c.newOp(ctx, ctx)
	rec, err := o.st.load(ctx)
	if err != nil || !c.acceptable(rec, o.start) {
		return nil
	}
	s, err := o.adopt(rec)
	if err != nil || !s.fresh(c.clock.Now()) {
		return nil
	}
	return s.tok
}

func (c *Cache) unavailable(s *snapshot, retry time.Duration, err error) error {
	switch {
	case err == nil && s.rec.State == StateActive:
		err = errNoUsableToken
	case err == nil:
		err = ErrLoggedOut
	case s.rec.State == StateLoggedOut && !errors.Is(err, ErrLoggedOut):
		err = fmt.Errorf("%w: %w", ErrLoggedOut, err)
	}
	return &UnavailableError{Session: c.cfg.Name, State: c.stateOf(s), RetryAfter: max(retry, time.Second), Err: err}
}

// startFlightLocked returns the refresh in flight, starting one if none is.
// A flight that started before a token was rejected or a refresh forced is
// not joined: its result may be the very token to replace. The new one
// queues behind it (operations take opMu) and then adopts its result or
// refreshes. The refresh runs on the cache's own context so a caller that
// gives up does not cancel it for the others. c.mu must be held.
func (c *Cache) startFlightLocked() *call {
	if f := c.flight; f != nil && f.epoch == c.epoch {
		return f
	}
	f := &call{done: make(chan struct{}), epoch: c.epoch}
	c.flight = f
	go func() {
		snap, err := c.runOp(context.Background(), (*op).refresh)
		c.mu.Lock()
		f.snap, f.err = snap, err
		if c.flight == f {
			c.flight = nil
		}
		c.mu.Unlock()
		close(f.done)
		if c.cfg.notify != nil {
			c.cfg.notify() // the scheduler re-reads the next wake
		}
	}()
	return f
}

// Refresh drops the cached token and refreshes now (unless another instance
// refreshed after this call started, in which case its token is adopted).
// It ignores any backoff in force and resumes an automatic login paused by
// rejected credentials.
func (c *Cache) Refresh(ctx context.Context) error {
	c.ResumeLogin()
	c.mu.Lock()
	// The current token is not to be adopted back from storage, but it
	// keeps serving until the refresh succeeds: a forced refresh during an
	// outage must not take a valid token away.
	if s := c.current(); s.tok != nil {
		c.forced = s.tok.Value
	}
	c.nextAttempt = time.Time{}
	c.epoch++
	f := c.startFlightLocked()
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Invalidate marks token as rejected (an upstream answered 401 to it): a
// refresh starts at once, and callers wait for it, but the rejected token
// keeps serving while no fresh one can be had (the upstream is the judge;
// it may have been a fluke). The rejected token is never adopted back from
// storage or re-installed. Invalidate reports whether this call marked the
// token, false if it was already marked or the cache has moved on, so a
// burst of 401s on one token counts once.
func (c *Cache) Invalidate(token string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		s := c.current()
		if s.tok == nil || s.tok.Value != token || s.rejected {
			return false
		}
		ns := *s
		ns.rejected, ns.refreshAt = true, time.Time{}
		if c.snap.CompareAndSwap(s, &ns) { // an install may have raced us
			c.rejected = token
			c.epoch++
			c.signalWake()
			return true
		}
	}
}

func (c *Cache) isRejected(token string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return token != "" && token == c.rejected
}
