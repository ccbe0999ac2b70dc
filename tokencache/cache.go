package tokencache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Token is an access token valid when handed out.
type Token struct {
	// Value is the access token itself. Never log it.
	Value string
	// Type is "Bearer" or "DPoP".
	Type string
	// Expiry is when the token expires (local clock).
	Expiry time.Time
	// Subject and SessionID are the token's sub and sid claims, if it is a
	// JWT that has them.
	Subject, SessionID string
	// Key is the session's DPoP key, taken from the same snapshot as the
	// token so the two always belong together. A DPoP-bound token is never
	// handed out without it.
	Key *dpop.Key
}

// String redacts the token value.
func (t *Token) String() string {
	return fmt.Sprintf("%s token (sub=%s, expires %s)", t.Type, t.Subject, t.Expiry.Format(time.RFC3339))
}

// GoString is like String so %#v cannot leak the token.
func (t *Token) GoString() string { return t.String() }

// Source hands out access tokens that are valid now, in the spirit of
// oauth2.TokenSource but with a context.
type Source interface {
	Token(ctx context.Context) (*Token, error)
}

// ErrLoggedOut is returned by Token when the session has no valid token and
// cannot get one by itself.
var ErrLoggedOut = errors.New("session is logged out")

// UnavailableError is returned by Token when no valid token exists now. It
// names the session, its state and when to try again.
type UnavailableError struct {
	Session    string
	State      string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("session %q (%s) has no valid access token: %v", e.Session, e.State, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

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
	// out on purpose.
	Login LoginFunc
	// RefreshBefore is how long before expiry to refresh (default 60s); a
	// refresh never happens before half the token's lifetime has passed.
	RefreshBefore time.Duration
	// KeyAlgorithm is the DPoP key type for new sessions (default ES256).
	KeyAlgorithm dpop.Algorithm
	// LockTimeout bounds waiting for the storage lock (default 30s).
	LockTimeout time.Duration
	// CallTimeout bounds one backend call (default 30s).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 1s and 2m); delays double with full jitter.
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
// lock, then re-read, then adopt or refresh).
type Cache struct {
	cfg    Config
	st     atomic.Pointer[store]
	logger atomic.Pointer[zap.Logger]
	snap   atomic.Pointer[snapshot]

	// opMu serialises every operation that writes state (refresh, login,
	// logout) in this process, so a logout cannot race a refresh that would
	// write tokens back.
	opMu sync.Mutex
	// opSt is the storage pinned for the operation holding opMu.
	opSt store
	// pendingIntent is the intent (hash of the spent refresh token) that
	// pending's write must still find in storage to be valid.
	pendingIntent string

	mu          sync.Mutex // guards the fields below
	flight      *call
	forced      string // a token a forced refresh must replace, not adopt
	failures    int
	nextAttempt time.Time
	lastErr     error
	lastRefresh time.Time
	lastOutcome string
	refreshes   int64
	adoptions   int64
	pending     *record // refreshed but not yet durable; written before anything else
	waits       atomic.Int64

	jitter float64 // in [0,1): this instance's share of the refresh window
	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	startOnce sync.Once
	started   atomic.Bool
}

// snapshot is an immutable view of the session for lock-free readers.
type snapshot struct {
	rec       record
	key       *dpop.Key
	tok       *Token // nil when there is no access token
	usable    time.Time
	refreshAt time.Time
	header    map[string]any
	claims    map[string]any
}

type call struct {
	done chan struct{}
	snap *snapshot
	err  error
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
	c := &Cache{cfg: cfg, wake: make(chan struct{}, 1), done: make(chan struct{}), jitter: rand.Float64()}
	c.st.Store(&store{s: cfg.Storage, name: cfg.Name})
	c.SetLogger(cfg.Logger)
	c.ctx, c.cancel = context.WithCancel(context.Background())

	ctx, cancel := context.WithTimeout(c.ctx, cfg.CallTimeout)
	defer cancel()
	rec, err := c.store().load(ctx)
	if err != nil {
		c.log().Error("session state unreadable; treating as logged out until a login replaces it",
			zap.String("session", cfg.Name), zap.Error(err))
		rec = &record{State: StateLoggedOut, Reason: err.Error()}
	}
	var key *dpop.Key
	if rec.KeyThumbprint != "" {
		if key, err = c.store().loadKey(ctx, rec.KeyThumbprint); err != nil {
			c.log().Error("session DPoP key missing; session cannot be refreshed",
				zap.String("session", cfg.Name), zap.Error(err))
			rec = &record{State: StateLoggedOut, Reason: "DPoP key missing from storage", Generation: rec.Generation}
		}
	}
	c.snap.Store(c.newSnapshot(rec, key))
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
		c.st.Store(&store{s: s, name: c.cfg.Name})
	}
}

// SetLogger replaces the logger (see SetStorage).
func (c *Cache) SetLogger(l *zap.Logger) {
	if l == nil {
		l = zap.NewNop()
	}
	c.logger.Store(l)
}

func (c *Cache) store() store     { return *c.st.Load() }
func (c *Cache) log() *zap.Logger { return c.logger.Load() }
func (c *Cache) signalWake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
func (c *Cache) current() *snapshot { return c.snap.Load() }

// Close stops the background refresher, waits for it and for an operation
// in progress (so a refresh that was sent still stores its rotated token),
// and makes later operations fail at once without touching storage.
func (c *Cache) Close() {
	c.cancel()
	c.startOnce.Do(func() { close(c.done) }) // never started: nothing to wait for
	if c.started.Load() {
		<-c.done
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
}

// errClosed is returned by operations on a closed cache.
var errClosed = errors.New("tokencache: cache closed")

func (c *Cache) newSnapshot(rec *record, key *dpop.Key) *snapshot {
	s := &snapshot{rec: *rec, key: key}
	if rec.AccessToken == "" || rec.Expiry.IsZero() {
		return s
	}
	s.header, s.claims = decodeJWT(rec.AccessToken)
	sub, _ := s.claims["sub"].(string)
	sid, _ := s.claims["sid"].(string)
	typ := rec.TokenType
	if typ == "" {
		typ = "Bearer"
	}
	if strings.EqualFold(typ, "DPoP") && (key == nil || key.Thumbprint() != rec.KeyThumbprint) {
		// Unusable without its key: better no token than one that cannot
		// be presented.
		return s
	}
	s.tok = &Token{Value: rec.AccessToken, Type: typ, Expiry: rec.Expiry, Subject: sub, SessionID: sid, Key: key}
	life := rec.Expiry.Sub(rec.IssuedAt)
	if rec.IssuedAt.IsZero() || life <= 0 {
		life = 0
	}
	// Stop handing out a token shortly before it expires so it does not die
	// in flight: 5 s, or a tenth of the lifetime for short-lived tokens.
	s.usable = rec.Expiry.Add(-min(5*time.Second, life/10))
	if rec.State == StateActive {
		at := refreshAt(rec.IssuedAt, rec.Expiry, c.cfg.RefreshBefore)
		// Instances sharing storage see the same record; a per-instance
		// delay of up to a fifth of the remaining window lets the first one
		// refresh and the others adopt its result without queueing on the
		// storage lock (file storage polls a held lock once a second).
		s.refreshAt = at.Add(time.Duration(c.jitter * float64(rec.Expiry.Sub(at)) / 5))
	}
	return s
}

// refreshAt is expiry − before, but never earlier than half the lifetime, so
// short-lived tokens do not refresh in a loop.
func refreshAt(issued, expiry time.Time, before time.Duration) time.Time {
	at := expiry.Add(-before)
	if issued.IsZero() {
		return at
	}
	if floor := issued.Add(expiry.Sub(issued) / 2); at.Before(floor) {
		return floor
	}
	return at
}

// Token returns a token that is valid now. While the cached token is valid
// it returns at once without locking, even during a refresh. Otherwise it
// waits for the one refresh in flight (starting it if needed), or fails fast
// with an *UnavailableError during backoff.
func (c *Cache) Token(ctx context.Context) (*Token, error) {
	if s := c.current(); s.tok != nil && time.Now().Before(s.usable) {
		return s.tok, nil
	}
	return c.slowToken(ctx)
}

func (c *Cache) slowToken(ctx context.Context) (*Token, error) {
	c.mu.Lock()
	s := c.current()
	now := time.Now()
	if s.tok != nil && now.Before(s.usable) {
		c.mu.Unlock()
		return s.tok, nil
	}
	if c.flight == nil && now.Before(c.nextAttempt) {
		err := c.unavailable(s, c.nextAttempt.Sub(now), c.lastErr)
		c.mu.Unlock()
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
	s = f.snap
	if s != nil && s.tok != nil && time.Now().Before(s.usable) {
		return s.tok, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return nil, c.unavailable(c.current(), time.Until(c.nextAttempt), f.err)
}

func (c *Cache) unavailable(s *snapshot, retry time.Duration, err error) error {
	if err == nil {
		err = ErrLoggedOut
	} else if s.rec.State == StateLoggedOut && !errors.Is(err, ErrLoggedOut) {
		err = fmt.Errorf("%w: %w", ErrLoggedOut, err)
	}
	return &UnavailableError{Session: c.cfg.Name, State: s.rec.State, RetryAfter: max(retry, time.Second), Err: err}
}

// startFlightLocked returns the refresh in flight, starting one if none is.
// The refresh runs on the cache's own context so a caller that gives up
// does not cancel it for the others. c.mu must be held.
func (c *Cache) startFlightLocked() *call {
	if c.flight != nil {
		return c.flight
	}
	f := &call{done: make(chan struct{})}
	c.flight = f
	go func() {
		snap, err := c.runOp(c.refreshLocked)
		c.mu.Lock()
		f.snap, f.err = snap, err
		c.flight = nil
		c.mu.Unlock()
		close(f.done)
	}()
	return f
}

// runOp runs one state-changing operation under the process-wide op lock
// with a bounded context.
func (c *Cache) runOp(op func(ctx context.Context) (*snapshot, error)) (*snapshot, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if c.ctx.Err() != nil {
		return nil, errClosed
	}
	// One storage for the whole operation, even if a reload swaps it
	// meanwhile: an intent and its outcome must land in the same place.
	c.opSt = c.store()
	// Not cancelled by Close: Close waits for this op instead, so a refresh
	// that was sent always gets to store its rotated refresh token.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), c.cfg.LockTimeout+2*c.cfg.CallTimeout)
	defer cancel()
	return op(ctx)
}

// Refresh drops the cached token and refreshes now (unless another instance
// refreshed after this call started, in which case its token is adopted).
// It ignores any backoff in force.
func (c *Cache) Refresh(ctx context.Context) error {
	c.mu.Lock()
	// The current token is not to be adopted back from storage, but it
	// keeps serving until the refresh succeeds: a forced refresh during an
	// outage must not take a valid token away.
	if s := c.current(); s.tok != nil {
		c.forced = s.tok.Value
	}
	c.nextAttempt = time.Time{}
	f := c.startFlightLocked()
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Invalidate marks token as rejected (an upstream answered 401 to it) so the
// next Token call refreshes instead of handing it out again. It does nothing
// if the cache already moved on to another token.
func (c *Cache) Invalidate(token string) {
	for {
		s := c.current()
		if s.tok == nil || s.tok.Value != token {
			return
		}
		ns := *s
		ns.usable, ns.refreshAt = time.Time{}, time.Time{}
		if c.snap.CompareAndSwap(s, &ns) {
			c.signalWake()
			return
		}
	}
}

// acceptable reports whether a stored record can be adopted instead of
// refreshing: active, fresh, and not the token an upstream just rejected.
func (c *Cache) acceptable(rec *record, now time.Time) bool {
	if rec.State != StateActive || rec.AccessToken == "" {
		return false
	}
	if cur := c.current(); cur.tok != nil && cur.tok.Value == rec.AccessToken && cur.usable.IsZero() {
		return false // invalidated
	}
	c.mu.Lock()
	forced := c.forced == rec.AccessToken
	c.mu.Unlock()
	if forced {
		return false
	}
	return now.Before(refreshAt(rec.IssuedAt, rec.Expiry, c.cfg.RefreshBefore))
}

// lock takes the cluster-wide lock for this session with a timeout; the
// returned func releases it even if ctx was cancelled meanwhile.
func (c *Cache) lock(ctx context.Context) (func(), error) {
	st := c.opSt
	lctx, cancel := context.WithTimeout(ctx, c.cfg.LockTimeout)
	defer cancel()
	if err := st.s.Lock(lctx, st.lockName()); err != nil {
		return nil, fmt.Errorf("taking storage lock for session %q: %w", c.cfg.Name, err)
	}
	return func() {
		if err := st.s.Unlock(context.WithoutCancel(ctx), st.lockName()); err != nil {
			c.log().Warn("releasing storage lock", zap.String("session", c.cfg.Name), zap.Error(err))
		}
	}, nil
}

// refreshLocked is the refresh protocol: peek, lock, re-read, then adopt,
// log in, or refresh with a write-ahead intent. Runs under opMu.
func (c *Cache) refreshLocked(ctx context.Context) (*snapshot, error) {
	start := time.Now()
	st := c.opSt
	if c.pending == nil {
		// Cheap peek without the lock: another instance may have refreshed.
		if rec, err := st.load(ctx); err == nil && c.acceptable(rec, start) {
			return c.adoptStored(ctx, rec, start)
		}
	}
	unlock, err := c.lock(ctx)
	if err != nil {
		return nil, c.fail(OutcomeTransient, start, err)
	}
	defer unlock()

	rec, err := st.load(ctx)
	if err != nil {
		return nil, c.fail(OutcomeTransient, start, err)
	}
	if c.pending != nil {
		// Our refreshed grant is still only in memory. It may be written
		// only over the very intent it resolves: if anything else happened
		// to the session meanwhile (another instance gave the token up and
		// logged in again, an operator logged out), storage wins.
		if c.live(rec) == c.pending {
			if err := st.save(ctx, c.pending); err != nil {
				return nil, c.fail(OutcomeTransient, start, err)
			}
			next := c.pending
			c.pending = nil
			return c.install(next, c.current().key, OutcomeRefreshed, start), nil
		}
		c.log().Warn("dropping a refreshed grant that could not be stored in time; storage has moved on",
			zap.String("session", c.cfg.Name))
		c.pending = nil
	}
	if c.acceptable(rec, time.Now()) {
		return c.adoptStored(ctx, rec, start)
	}
	if rec.State != StateActive {
		return c.loginOrReport(ctx, rec, start)
	}
	key, err := c.keyFor(ctx, rec)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errKeyBroken) || rec.KeyThumbprint == "" {
			return c.kill(ctx, rec, "DPoP key unavailable: "+err.Error(), false, start)
		}
		return nil, c.fail(OutcomeTransient, start, err) // a storage hiccup; the key is still there
	}
	if rec.Intent != "" && rec.Intent == tokenHash(rec.RefreshToken) {
		return c.kill(ctx, rec, "an earlier refresh was interrupted after sending; its refresh token may be spent and is not presented again", true, start)
	}
	// Write-ahead: record that this refresh token is about to be presented.
	// Grants without one (client_credentials) spend nothing and skip it.
	if rec.RefreshToken != "" {
		intent := *rec
		intent.Intent = tokenHash(rec.RefreshToken)
		if err := st.save(ctx, &intent); err != nil {
			return nil, c.fail(OutcomeTransient, start, err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	grant, err := c.cfg.Backend.Refresh(cctx, key, rec.RefreshToken)
	cancel()
	switch {
	case err == nil:
		next := applyGrant(rec, grant)
		next.Generation = rec.Generation + 1
		if err := c.saveRetry(ctx, next); err != nil {
			// The new refresh token exists only in memory: keep it for the
			// next attempt and hand out nothing until it is durable.
			c.pending, c.pendingIntent = next, tokenHash(rec.RefreshToken)
			return nil, c.fail(OutcomeTransient, start, fmt.Errorf("refreshed but could not store the rotated refresh token: %w", err))
		}
		c.mu.Lock()
		c.refreshes++
		c.mu.Unlock()
		return c.install(next, key, OutcomeRefreshed, start), nil
	case errors.Is(err, ErrSessionDead):
		return c.kill(ctx, rec, err.Error(), false, start)
	case errors.Is(err, ErrOutcomeUnknown):
		return c.kill(ctx, rec, "refresh response lost; the refresh token may have been rotated and is given up: "+err.Error(), true, start)
	default:
		// The server answered without rotating: the token is still ours.
		if serr := st.save(ctx, rec); serr != nil {
			c.log().Warn("clearing refresh intent", zap.String("session", c.cfg.Name), zap.Error(serr))
		}
		return nil, c.fail(OutcomeTransient, start, err)
	}
}

func applyGrant(prev *record, g *Grant) *record {
	next := &record{
		State:         StateActive,
		KeyThumbprint: prev.KeyThumbprint,
		RefreshToken:  prev.RefreshToken,
		RefreshExpiry: prev.RefreshExpiry,
		AccessToken:   g.AccessToken,
		TokenType:     g.TokenType,
		Expiry:        g.Expiry,
		IssuedAt:      time.Now(),
		Generation:    prev.Generation,
	}
	if g.RefreshToken != "" {
		next.RefreshToken, next.RefreshExpiry = g.RefreshToken, g.RefreshExpiry
	}
	return next
}

// saveRetry stores a record that must become durable, retrying briefly.
func (c *Cache) saveRetry(ctx context.Context, r *record) error {
	var err error
	for i := range 3 {
		if err = c.opSt.save(ctx, r); err == nil {
			return nil
		}
		select {
		case <-time.After(time.Duration(i+1) * 100 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
	return err
}

// kill marks the session logged out with reason. When keepAccess is true
// the current access token keeps serving until it expires (the session may
// still be alive server-side; only the refresh token is lost).
func (c *Cache) kill(ctx context.Context, rec *record, reason string, keepAccess bool, start time.Time) (*snapshot, error) {
	next := &record{State: StateLoggedOut, Reason: reason, KeyThumbprint: rec.KeyThumbprint, Generation: rec.Generation + 1}
	if keepAccess {
		next.AccessToken, next.TokenType, next.Expiry, next.IssuedAt = rec.AccessToken, rec.TokenType, rec.Expiry, rec.IssuedAt
	}
	outcome := OutcomeDead
	if keepAccess {
		outcome = OutcomeUnknown
	}
	c.log().Warn("session ended", zap.String("session", c.cfg.Name), zap.String("reason", reason))
	if err := c.saveRetry(ctx, next); err != nil {
		return nil, c.fail(OutcomeTransient, start, err)
	}
	c.install(next, c.recordKey(ctx, next), outcome, start)
	c.setErr(errors.New(reason))
	return c.loginOrReport(ctx, next, start)
}

// loginOrReport logs in automatically when configured and allowed;
// otherwise it reports the logged-out state.
func (c *Cache) loginOrReport(ctx context.Context, rec *record, start time.Time) (*snapshot, error) {
	if c.cfg.Login == nil || rec.NoAutoLogin {
		s := c.install(rec, c.recordKey(ctx, rec), "", start)
		reason := rec.Reason
		if reason == "" {
			reason = "logged out"
		}
		c.mu.Lock()
		// Nothing will change until someone logs in; re-read storage at a
		// gentle pace in case another instance does.
		c.nextAttempt = time.Now().Add(c.cfg.MinBackoff)
		c.mu.Unlock()
		return s, fmt.Errorf("%w: %s", ErrLoggedOut, reason)
	}
	return c.loginLocked(ctx, rec, c.cfg.Login, start)
}

// loginLocked starts a new session with a new key. The key is stored before
// the login so the stored record never points at a missing key; the old key
// is deleted after the new record is durable. Caller holds the storage lock.
func (c *Cache) loginLocked(ctx context.Context, rec *record, login LoginFunc, start time.Time) (*snapshot, error) {
	key, err := dpop.GenerateKey(c.cfg.KeyAlgorithm)
	if err != nil {
		return nil, c.fail(OutcomeLoginFail, start, err)
	}
	st := c.opSt
	if err := st.saveKey(ctx, key); err != nil {
		return nil, c.fail(OutcomeLoginFail, start, err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	grant, err := login(cctx, key, rec.RefreshToken)
	cancel()
	if err != nil {
		st.deleteKey(ctx, key.Thumbprint())
		return nil, c.fail(OutcomeLoginFail, start, fmt.Errorf("login: %w", err))
	}
	next := applyGrant(&record{KeyThumbprint: key.Thumbprint()}, grant)
	next.Generation = rec.Generation + 1
	if err := c.saveRetry(ctx, next); err != nil {
		return nil, c.fail(OutcomeLoginFail, start, err)
	}
	if rec.KeyThumbprint != key.Thumbprint() {
		st.deleteKey(ctx, rec.KeyThumbprint)
	}
	c.log().Info("session logged in", zap.String("session", c.cfg.Name), zap.String("jkt", key.Thumbprint()))
	return c.install(next, key, OutcomeLoggedIn, start), nil
}

// keyFor returns the DPoP key the record is bound to, from memory when the
// current snapshot already holds it.
func (c *Cache) keyFor(ctx context.Context, rec *record) (*dpop.Key, error) {
	if k := c.current().key; k != nil && k.Thumbprint() == rec.KeyThumbprint {
		return k, nil
	}
	if rec.KeyThumbprint == "" {
		return nil, errors.New("no DPoP key recorded")
	}
	return c.opSt.loadKey(ctx, rec.KeyThumbprint)
}

// recordKey is the key rec is bound to, or nil when it has none or it
// cannot be loaded (the record then serves no DPoP-bound token).
func (c *Cache) recordKey(ctx context.Context, rec *record) *dpop.Key {
	if rec.KeyThumbprint == "" {
		return nil
	}
	k, err := c.keyFor(ctx, rec)
	if err != nil {
		return nil
	}
	return k
}

// adoptStored installs a record another instance wrote.
func (c *Cache) adoptStored(ctx context.Context, rec *record, start time.Time) (*snapshot, error) {
	key, err := c.keyFor(ctx, rec)
	if err != nil {
		return nil, c.fail(OutcomeTransient, start, err)
	}
	c.mu.Lock()
	c.adoptions++
	c.mu.Unlock()
	return c.install(rec, key, OutcomeAdopted, start), nil
}

// install publishes a new snapshot and records a successful outcome.
func (c *Cache) install(rec *record, key *dpop.Key, outcome string, start time.Time) *snapshot {
	s := c.newSnapshot(rec, key)
	c.snap.Store(s)
	if outcome != "" {
		c.mu.Lock()
		if rec.AccessToken != c.forced {
			c.forced = ""
		}
		if outcome != OutcomeDead && outcome != OutcomeUnknown {
			c.failures, c.nextAttempt, c.lastErr = 0, time.Time{}, nil
		}
		c.lastRefresh, c.lastOutcome = time.Now(), outcome
		c.mu.Unlock()
		c.observe(outcome, start)
	}
	c.signalWake()
	return s
}

// fail records a failed attempt and schedules the next one with exponential
// backoff and full jitter, honouring a server's Retry-After.
func (c *Cache) fail(outcome string, start time.Time, err error) error {
	c.mu.Lock()
	c.failures++
	d := c.cfg.MinBackoff << min(c.failures-1, 20)
	d = min(d, c.cfg.MaxBackoff)
	d = d/2 + rand.N(d/2+1)
	var ra RetryAfterError
	if errors.As(err, &ra) && ra.RetryAfter() > d {
		d = ra.RetryAfter()
	}
	c.nextAttempt = time.Now().Add(d)
	c.lastErr, c.lastRefresh, c.lastOutcome = err, time.Now(), outcome
	c.mu.Unlock()
	c.log().Warn("token refresh failed", zap.String("session", c.cfg.Name), zap.String("outcome", outcome),
		zap.Duration("retry_in", d), zap.Error(err))
	c.observe(outcome, start)
	c.signalWake()
	return err
}

func (c *Cache) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

func (c *Cache) observe(outcome string, start time.Time) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(Event{Kind: EventAttempt, Outcome: outcome, Duration: time.Since(start)})
	}
}

// loop is the background refresher: it sleeps until the current token's
// refresh time (or the end of a backoff), then refreshes through the same
// single flight callers use.
func (c *Cache) loop() {
	defer close(c.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		at, ok := c.nextWake()
		if ok {
			timer.Reset(max(time.Until(at), 0))
		} else {
			timer.Stop()
		}
		select {
		case <-c.ctx.Done():
			return
		case <-c.wake:
			continue
		case <-timer.C:
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
	c.mu.Lock()
	next, forced := c.nextAttempt, c.forced != ""
	c.mu.Unlock()
	var at time.Time
	switch {
	case s.rec.State == StateActive && forced:
		at = time.Now() // a forced refresh is retried until it succeeds
	case s.rec.State == StateActive && !c.cfg.Lazy:
		at = s.refreshAt // zero (now) when invalidated
	case s.rec.State == StateLoggedOut && c.cfg.Login != nil && !s.rec.NoAutoLogin:
		at = time.Now()
	default:
		return time.Time{}, false
	}
	if next.After(at) {
		at = next
	}
	return at, true
}

// Login starts a new session with login (for example an OTP flow finished
// through the admin API), replacing the current one. It clears an
// operator's logout.
func (c *Cache) Login(ctx context.Context, login LoginFunc) error {
	return c.lockedOp(ctx, func(ctx context.Context, rec *record, err error) (*snapshot, error) {
		if err != nil {
			rec = &record{State: StateLoggedOut} // a login replaces unreadable state
		}
		c.pending = nil
		return c.loginLocked(ctx, rec, login, time.Now())
	})
}

// Logout revokes the session at the server and clears local state. Automatic
// login stays off until the next explicit Login. If the server cannot be
// reached the local state is kept so the logout can be retried.
func (c *Cache) Logout(ctx context.Context) error {
	return c.lockedOp(ctx, func(ctx context.Context, rec *record, err error) (*snapshot, error) {
		if err != nil {
			return nil, err
		}
		if rec.RefreshToken != "" {
			key, err := c.keyFor(ctx, rec)
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
				err = c.cfg.Backend.Revoke(cctx, key, rec.RefreshToken)
				cancel()
			}
			if err != nil && !errors.Is(err, ErrSessionDead) {
				return nil, fmt.Errorf("revoking at the server (local state kept; retry): %w", err)
			}
		}
		return c.forgetLocked(ctx, rec, "logged out by operator")
	})
}

// Forget clears local state without calling the server (the session was
// revoked by other means, e.g. /me/revoke target=mine). Automatic login
// stays off until the next explicit Login.
func (c *Cache) Forget(ctx context.Context, reason string) error {
	return c.lockedOp(ctx, func(ctx context.Context, rec *record, err error) (*snapshot, error) {
		if err != nil {
			rec = &record{}
		}
		return c.forgetLocked(ctx, rec, reason)
	})
}

// lockedOp runs an operator's operation: in-process op lock, storage lock,
// then op with the stored record (or the error reading it).
func (c *Cache) lockedOp(ctx context.Context, op func(ctx context.Context, rec *record, loadErr error) (*snapshot, error)) error {
	_, err := c.runOpCtx(ctx, func(ctx context.Context) (*snapshot, error) {
		unlock, err := c.lock(ctx)
		if err != nil {
			return nil, err
		}
		defer unlock()
		rec, err := c.opSt.load(ctx)
		if err == nil {
			rec = c.live(rec)
		}
		return op(ctx, rec, err)
	})
	return err
}

// live returns the grant this process holds in memory in place of the
// stored record when that grant resolves the stored intent: its refresh
// token is the live one (the stored one is spent).
func (c *Cache) live(rec *record) *record {
	if p := c.pending; p != nil && rec.Generation == p.Generation-1 && rec.Intent != "" && rec.Intent == c.pendingIntent {
		return p
	}
	return rec
}

func (c *Cache) forgetLocked(ctx context.Context, rec *record, reason string) (*snapshot, error) {
	next := &record{State: StateLoggedOut, Reason: reason, NoAutoLogin: true, Generation: rec.Generation + 1}
	if err := c.opSt.save(ctx, next); err != nil {
		return nil, err
	}
	c.opSt.deleteKey(ctx, rec.KeyThumbprint)
	c.pending = nil
	return c.install(next, nil, OutcomeLoggedOut, time.Now()), nil
}

// runOpCtx is runOp for operations a caller waits on with its own context.
func (c *Cache) runOpCtx(ctx context.Context, op func(ctx context.Context) (*snapshot, error)) (*snapshot, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if c.ctx.Err() != nil {
		return nil, errClosed
	}
	// One storage for the whole operation, even if a reload swaps it
	// meanwhile: an intent and its outcome must land in the same place.
	c.opSt = c.store()
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.LockTimeout+2*c.cfg.CallTimeout)
	defer cancel()
	return op(octx)
}

// Status is a secret-free view of the session for the admin API.
type Status struct {
	Session       string         `json:"session"`
	State         string         `json:"state"`
	Reason        string         `json:"reason,omitempty"`
	AutoLogin     bool           `json:"auto_login"`
	Subject       string         `json:"sub,omitempty"`
	SessionID     string         `json:"sid,omitempty"`
	Scopes        []string       `json:"scopes,omitempty"`
	TokenType     string         `json:"token_type,omitempty"`
	ExpiresAt     *time.Time     `json:"expires_at,omitempty"`
	SecondsLeft   int64          `json:"seconds_left"`
	NextRefresh   *time.Time     `json:"next_refresh,omitempty"`
	LastRefresh   *time.Time     `json:"last_refresh,omitempty"`
	LastOutcome   string         `json:"last_outcome,omitempty"`
	RefreshCount  int64          `json:"refresh_count"`
	AdoptCount    int64          `json:"adopt_count"`
	WaitCount     int64          `json:"wait_count"`
	LastError     string         `json:"last_error,omitempty"`
	KeyThumbprint string         `json:"dpop_jkt,omitempty"`
	KeyAlgorithm  string         `json:"dpop_alg,omitempty"`
	TokenHeader   map[string]any `json:"token_header,omitempty"`
	TokenClaims   map[string]any `json:"token_claims,omitempty"`
}

// Status reports the session's state. It holds no secrets: no token, no
// refresh token, no private key.
func (c *Cache) Status() Status {
	s := c.current()
	st := Status{
		Session:     c.cfg.Name,
		State:       s.rec.State,
		Reason:      s.rec.Reason,
		AutoLogin:   c.cfg.Login != nil && !s.rec.NoAutoLogin,
		WaitCount:   c.waits.Load(),
		TokenHeader: s.header,
		TokenClaims: s.claims,
	}
	if s.key != nil {
		st.KeyThumbprint, st.KeyAlgorithm = s.key.Thumbprint(), string(s.key.Algorithm())
	}
	if s.tok != nil {
		st.Subject, st.SessionID, st.TokenType = s.tok.Subject, s.tok.SessionID, s.tok.Type
		exp := s.tok.Expiry
		st.ExpiresAt = &exp
		st.SecondsLeft = max(int64(time.Until(exp).Seconds()), 0)
		st.Scopes = scopes(s.claims)
	}
	if !s.refreshAt.IsZero() && !c.cfg.Lazy {
		at := s.refreshAt
		st.NextRefresh = &at
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.lastRefresh.IsZero() {
		t := c.lastRefresh
		st.LastRefresh = &t
	}
	st.LastOutcome, st.RefreshCount, st.AdoptCount = c.lastOutcome, c.refreshes, c.adoptions
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	return st
}

// scopes reads a "scope" claim given as a space-separated string or array.
func scopes(claims map[string]any) []string {
	switch v := claims["scope"].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		var out []string
		for _, s := range v {
			if str, ok := s.(string); ok {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}
