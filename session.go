package injecttoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/ring"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// sessions holds one *session per session name. It lives at package level
// so that a session (its token cache, background refresher and pending OTP
// login) survives config reloads, and so the admin API can find it.
var sessions = caddy.NewUsagePool()

// An upstream's 401s may trigger a burst of refreshes, then one per interval.
const (
	rejectRefreshBurst = 5
	rejectRefreshEvery = 10 * time.Second
)

// otpLifetime is how long a started OTP login waits for its code.
const otpLifetime = 10 * time.Minute

// settings are what one config says about a session. The secrets in it
// were resolved from placeholders at Provision and exist only in memory.
type settings struct {
	backendName   string             // the backend's registered name
	backend       tokencache.Backend // built by its registered factory
	backendKey    string             // hash of its resolved settings, to compare configs
	baseURL       string             // Prelude base URL or OAuth token endpoint / issuer
	dpopAlg       dpop.Algorithm
	keySource     tokencache.KeySource // nil: keys generated and stored
	refreshBefore time.Duration
	sealer        *seal.Sealer // nil: stored plain
}

// open builds the backend registered as name from its resolved settings v
// (marshalled to JSON for its factory); baseURL is shown by the admin API.
func (s *settings) open(name, baseURL string, v any, env tokencache.Env) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b, err := tokencache.NewBackend(name, raw, env)
	if err != nil {
		return err
	}
	id := append([]byte(name+"\x00"), raw...)
	if env.ClientKey != nil {
		// A key source's key is not in the settings: its public half
		// tells two configs apart.
		id = fmt.Appendf(id, "\x00%v", env.ClientKey.Public())
	}
	sum := sha256.Sum256(id)
	s.backendName, s.backend, s.backendKey, s.baseURL = name, b, hex.EncodeToString(sum[:]), baseURL
	return nil
}

// same reports whether two configs describe the session identically.
func (s *settings) same(o *settings) bool {
	return s.sameCredentials(o) && s.refreshBefore == o.refreshBefore && s.dpopAlg == o.dpopAlg &&
		s.sealer.ID() == o.sealer.ID() && (s.keySource == nil) == (o.keySource == nil)
}

// sameCredentials reports whether two configs log in with the same
// credentials (and against the same server).
func (s *settings) sameCredentials(o *settings) bool {
	return s.backendName == o.backendName && s.backendKey == o.backendKey
}

// hasLogin reports whether the session can log in by itself.
func (s *settings) hasLogin() bool { return s.backend.AutoLogin() != nil }

// binding is what one live config contributes to a session: its settings,
// storage and logger. The newest live binding is in force; when a config
// goes away (reload done, or a new config that failed to start), its
// binding is removed and the next newest takes over again, so the session
// never keeps using a closed storage or stale settings.
type binding struct {
	owner   configID
	refs    int // handlers of that config using the session
	set     *settings
	storage certmagic.Storage
	logger  *zap.Logger
}

// configID identifies one loaded config. Modules of a config get contexts
// derived (with values: the http app adds one per server) from the
// config's cancellable context, and every derived context shares its Done
// channel, which is therefore unique to the config.
type configID <-chan struct{}

func configOf(ctx caddy.Context) configID { return ctx.Done() }

// pendingOTP is an OTP login started through the admin API and waiting for
// its code.
type pendingOTP struct {
	login   *prelude.OTPLogin
	expires time.Time
}

// session is the pooled state of one named session. It owns a
// tokencache.Cache whose Backend and Login read the settings in force
// through an atomic pointer, so a reload can change the Prelude URL or the
// password without logging out.
type session struct {
	name string
	set  atomic.Pointer[settings]
	tc   atomic.Pointer[tokencache.Cache]
	// rsNonces are the DPoP nonces resource servers sent, per origin; they
	// outlive the cache so a rebuild keeps them.
	rsNonces dpop.NonceStore
	// rsClocks are the resource servers' clock offsets, per origin, learned
	// from their Date headers; proofs sent upstream are dated on them.
	rsClocks dpop.ClockStore
	// firstProofs is dpop_proofs_total{session, first}, resolved once: a
	// label lookup per request is measurable on the hot path.
	firstProofs prometheus.Counter
	// rejects bounds refreshes caused by upstream 401s: an upstream that
	// rejects every token (wrong audience, missing permission) must not
	// turn each request into a refresh.
	rejects *rate.Limiter
	// rejectedTok is the last token whose rejection spent the budget, so
	// a burst of 401s for one token spends it once (credential.rejected).
	rejectedTok atomic.Pointer[tokencache.Token]
	// timeline holds the session's latest token events for the dashboard
	// (timeline.go); like the session it outlives config reloads.
	timeline *ring.Ring[adminapi.TimelineEvent]
	// limitedLog writes the "keeps rejecting" warning at most once per
	// rejectRefreshEvery, with how many 401s it stands for.
	limitedLog countedLog

	mu       sync.Mutex // guards the fields below
	bindings []*binding // oldest first
	built    builtWith  // what the current cache was built with
	otp      *pendingOTP
	otpFlow  string // the flow of the latest OTP login started (prelude.OTPFlow*)
}

// builtWith are the settings a tokencache.Cache fixes when it is created.
// Changing them builds a new cache from storage (no network I/O, no
// logout, no refresh); everything else is updated in place.
type builtWith struct {
	refreshBefore time.Duration
	autoLogin     bool
	keyAlg        dpop.Algorithm
	keySource     bool
}

// start starts the session's background refresher (see App).
func (s *session) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache().Start()
}

// cache returns the session's token cache.
func (s *session) cache() *tokencache.Cache { return s.tc.Load() }

// settings returns the settings in force.
func (s *session) settings() *settings { return s.set.Load() }

// serverClock is a backend that learns its token server's clock offset
// (oauth; Prelude's access tokens are not DPoP-bound).
type serverClock interface{ Skew() time.Duration }

// tokenServerSkew is the token server's clock offset, 0 when the backend
// does not learn it.
func (s *session) tokenServerSkew() time.Duration {
	if b, ok := s.settings().backend.(serverClock); ok {
		return b.Skew()
	}
	return 0
}

// proofTime is the iat of a proof for htu: now on that origin's clock as
// its Date headers showed it; before it has sent one, on the token
// server's clock, since a gateway whose own clock is off is off for every
// server alike. Zero means the local clock.
func (s *session) proofTime(htu *url.URL) time.Time {
	skew, ok := s.rsClocks.Skew(htu)
	if !ok {
		skew = s.tokenServerSkew()
	}
	if skew == 0 {
		return time.Time{}
	}
	return time.Now().Add(-skew)
}

// Destruct stops the background refresher once no config uses the session,
// and stops exporting its metrics.
func (s *session) Destruct() error {
	if c := s.tc.Load(); c != nil {
		c.Close()
	}
	forgetSessionMetrics(s.name)
	return nil
}

// countProof counts one DPoP proof signed for this session.
func (s *session) countProof(kind string) {
	if kind == proofFirst {
		s.firstProofs.Inc() // every request's proof: no label lookup
		return
	}
	countProof(s.name, kind)
}

// countedLog lets one log line through per interval and counts the events
// it held back, so a burst of the same event is one line with a count.
type countedLog struct {
	mu      sync.Mutex
	next    time.Time
	pending int
}

// event records one event at now; when a line is due it returns how many
// events (this one included) the line stands for, else 0.
func (l *countedLog) event(now time.Time, every time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending++
	if now.Before(l.next) {
		return 0
	}
	n := l.pending
	l.pending, l.next = 0, now.Add(every)
	return n
}

// newSession is an unbound session named name.
func newSession(name string) *session {
	s := &session{name: name, rejects: rate.NewLimiter(rate.Every(rejectRefreshEvery), rejectRefreshBurst),
		firstProofs: proofsTotal.WithLabelValues(name, proofFirst), timeline: ring.New[adminapi.TimelineEvent](timelineSize)}
	s.rsNonces.Refused = func(origin string, n int) { nonceRefused(s.logger(), "resource server", origin, n) }
	return s
}

// nonceRefused logs, once per store, that a server sent a DPoP-Nonce too
// long to carry in every later proof (dpop.MaxNonceLen).
func nonceRefused(logger *zap.Logger, server, origin string, n int) {
	logger.Warn("refused a DPoP-Nonce longer than the limit; proofs to this server go without it (logged once)",
		zap.String("server", server), zap.String("origin", origin), zap.Int("length", n), zap.Int("limit", dpop.MaxNonceLen))
}

// asNonces is a store for an authorization server's nonces that reports
// its first refusal through Caddy's logger.
func asNonces() *dpop.NonceStore {
	return &dpop.NonceStore{Refused: func(origin string, n int) {
		nonceRefused(caddy.Log().Named("http.handlers.inject_token"), "authorization server", origin, n)
	}}
}

// acquireSession takes a reference on the named session for the config of
// ctx, creating it (from storage, without network I/O) if no config has
// it, or binding the new settings to it if one does. On success the caller
// must call releaseSession exactly once.
func acquireSession(ctx caddy.Context, name string, set *settings, logger *zap.Logger) (*session, error) {
	if _, clash := lookupTemplate(name); clash {
		return nil, fmt.Errorf("session %q has the name of a template: both would live under inject_token/%s/ in storage", name, name)
	}
	storage, err := sealedStorage(ctx, name, set.sealer)
	if err != nil {
		return nil, err
	}
	b := &binding{owner: configOf(ctx), refs: 1, set: set, storage: storage, logger: logger}
	val, loaded, err := sessions.LoadOrNew(name, func() (caddy.Destructor, error) {
		s := newSession(name)
		s.bindings = []*binding{b}
		if err := s.applyLocked(); err != nil {
			return nil, err
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*session)
	if !loaded {
		return s, nil
	}
	if err := s.bind(b); err != nil {
		_, _ = sessions.Delete(name)
		return nil, err
	}
	return s, nil
}

// releaseSession undoes acquireSession for the config of owner.
func releaseSession(s *session, owner configID) {
	s.unbind(owner)
	if _, err := sessions.Delete(s.name); err != nil {
		s.logger().Error("releasing session", zap.String("session", s.name), zap.Error(err))
	}
}

// bind adds a config's binding, or counts one more handler of a config
// already bound. Two handlers of one config must agree on the settings:
// there is one token per session, so they could not both be honoured.
func (s *session) bind(b *binding) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, have := range s.bindings {
		if have.owner == b.owner {
			if !have.set.same(b.set) {
				return fmt.Errorf("session %q is configured more than once with different settings; "+
					"sites sharing a session must configure it identically", s.name)
			}
			have.refs++
			return nil
		}
	}
	s.bindings = append(s.bindings, b)
	return s.applyLocked()
}

// settingsOf returns the settings the config owner gave the session, or
// nil when it does not use it.
func (s *session) settingsOf(owner configID) *settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.bindings {
		if b.owner == owner {
			return b.set
		}
	}
	return nil
}

// unbind drops one handler's reference to the binding of owner and, when
// the config no longer uses the session, falls back to the newest other
// binding.
func (s *session) unbind(owner configID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.bindings, func(b *binding) bool { return b.owner == owner })
	if i < 0 {
		return
	}
	if s.bindings[i].refs--; s.bindings[i].refs > 0 {
		return
	}
	s.bindings = slices.Delete(s.bindings, i, i+1)
	if len(s.bindings) > 0 {
		if err := s.applyLocked(); err != nil {
			s.logger().Error("restoring previous session settings", zap.String("session", s.name), zap.Error(err))
		}
	}
}

// applyLocked puts the newest binding in force: settings, storage and
// logger are swapped in place; a change to what the cache fixes at creation
// (refresh_before, whether automatic login exists) builds a new cache from
// storage. s.mu must be held (or s not yet shared).
func (s *session) applyLocked() error {
	b := s.bindings[len(s.bindings)-1]
	want := builtWith{refreshBefore: b.set.refreshBefore, autoLogin: b.set.hasLogin(), keyAlg: b.set.dpopAlg, keySource: b.set.keySource != nil}
	prev := s.set.Swap(b.set)
	old := s.tc.Load()
	if old != nil && s.built == want {
		old.SetStorage(b.storage)
		old.SetLogger(b.logger)
		if prev != nil && !prev.sameCredentials(b.set) {
			old.ResumeLogin() // new credentials may succeed where the old were rejected
		}
		replaceForeignToken(old, prev, b.set)
		return nil
	}
	cfg := tokencache.Config{
		Name:          s.name,
		Storage:       b.storage,
		Backend:       sessionBackend{s},
		RefreshBefore: want.refreshBefore,
		KeyAlgorithm:  want.keyAlg,
		Logger:        b.logger,
		Observe:       s.observer(),
	}
	if want.autoLogin {
		cfg.Login = s.autoLogin
	}
	if want.keySource {
		cfg.KeySource = sessionKeys{s}
	}
	c, err := tokencache.New(cfg)
	if err != nil {
		return err
	}
	s.tc.Store(c)
	s.built = want
	if old != nil {
		// Backend calls are detached from the cache's context (see
		// detach), so closing cannot abort a refresh that is in flight
		// and lose its rotated refresh token; a refreshed grant the old
		// cache could not store yet moves to the new one.
		c.TakeOver(old)
		if old.Started() {
			c.Start()
		}
	}
	replaceForeignToken(c, prev, b.set)
	return nil
}

// tokenScope is what the backend's tokens are issued for (see
// tokencache.Scoped); "" when its tokens depend on nothing a reload changes.
func (s *settings) tokenScope() string {
	if sc, ok := s.backend.(tokencache.Scoped); ok {
		return sc.TokenScope()
	}
	return ""
}

// replaceForeignToken makes c replace the token it holds at once when a
// reload changed what tokens are issued for (scope, resource, audience):
// that token is for something else and is never adopted back.
func replaceForeignToken(c *tokencache.Cache, prev, next *settings) {
	if prev == nil || prev.tokenScope() == next.tokenScope() {
		return
	}
	now, cancel := context.WithCancel(context.Background())
	cancel() // only a token held now: never wait for one
	if tok, err := c.Token(now); err == nil {
		c.Invalidate(tok.Value)
	}
}

func (s *session) logger() *zap.Logger {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bindings) == 0 {
		return zap.NewNop()
	}
	return s.bindings[len(s.bindings)-1].logger
}

// autoLogin is the cache's automatic login: the backend's, read at call
// time so a reload can change it.
func (s *session) autoLogin(ctx context.Context, key *dpop.Key, prev string) (*tokencache.Grant, error) {
	login := s.settings().backend.AutoLogin()
	if login == nil {
		return nil, fmt.Errorf("%w: no automatic login configured", tokencache.ErrSessionDead)
	}
	ctx, cancel := detach(ctx)
	defer cancel()
	return login(ctx, key, prev)
}

// sessionKeys is the cache's key source: the one of the settings in force
// at call time, since a reload provisions (and the old config cleans up) a
// new source module for the same key.
type sessionKeys struct{ s *session }

func (k sessionKeys) Key(ctx context.Context) (*dpop.Key, error) {
	src := k.s.settings().keySource
	if src == nil {
		return nil, errors.New("the configuration has no dpop_key any more")
	}
	return src.Key(ctx)
}

// startOTP remembers a started OTP login.
func (s *session) startOTP(login *prelude.OTPLogin) {
	s.mu.Lock()
	s.otp = &pendingOTP{login: login, expires: time.Now().Add(otpLifetime)}
	s.otpFlow = login.Flow()
	s.mu.Unlock()
}

// lastOTPFlow is the flow of the latest OTP login started, "" if none.
func (s *session) lastOTPFlow() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.otpFlow
}

// pendingOTP returns the OTP login waiting for its code, if any.
func (s *session) pendingOTP() *pendingOTP {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.otp != nil && time.Now().After(s.otp.expires) {
		s.otp = nil
	}
	return s.otp
}

// finishOTP forgets the OTP login p once it has been used.
func (s *session) finishOTP(p *pendingOTP) {
	s.mu.Lock()
	if s.otp == p {
		s.otp = nil
	}
	s.mu.Unlock()
}

// lookupSession returns the live session called name.
func lookupSession(name string) (*session, bool) {
	var found *session
	sessions.Range(func(key, val any) bool {
		if key == name {
			found = val.(*session)
			return false
		}
		return true
	})
	return found, found != nil
}

// allSessions returns every live session, sorted by name.
func allSessions() []*session {
	var all []*session
	sessions.Range(func(_, val any) bool {
		all = append(all, val.(*session))
		return true
	})
	slices.SortFunc(all, func(a, b *session) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return all
}

// sessionBackend is the tokencache.Backend of a session: the backend in
// force at call time.
type sessionBackend struct{ s *session }

func (b sessionBackend) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	return b.s.settings().backend.Refresh(ctx, key, refreshToken)
}

func (b sessionBackend) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	ctx, cancel := detach(ctx)
	defer cancel()
	return b.s.settings().backend.Revoke(ctx, key, refreshToken)
}

// AutoLogin is the session's automatic login, which reads the settings in
// force when it runs.
func (b sessionBackend) AutoLogin() tokencache.LoginFunc { return b.s.autoLogin }

// detach keeps ctx's deadline but not its cancellation: a refresh that was
// sent must get its answer (a rotated refresh token) even if the cache that
// sent it is being replaced, or the session would be lost.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	d := prelude.DefaultTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Interface guards
var (
	_ caddy.Destructor   = (*session)(nil)
	_ tokencache.Backend = sessionBackend{}
)
