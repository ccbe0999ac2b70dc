package tokencache

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Template is what sessions made at run time share: one per configured
// template, each session identified by (template name, key) — a user's
// id, say. Every run-time session is a Cache like a named one (the same
// exactly-once protocol, storage lock and fencing), made on first use,
// kept in memory while used and evicted when idle; its refreshes are
// driven by the Runtime's one scheduler instead of a goroutine each.
type Template struct {
	// Name identifies the template; its sessions are stored under
	// inject_token/<Name>/<keyed hash>/. Required.
	Name string
	// Secret keys the HMAC that turns a session key into its storage
	// directory, so that a listing of storage does not reveal keys and a
	// guessed key (an email) cannot be checked against it without the
	// secret. At least 16 bytes; changing it orphans every stored session
	// of the template. Required.
	Secret []byte
	// Storage, Backend, Login, RefreshBefore, KeyAlgorithm, KeySource,
	// LockTimeout, CallTimeout, MinBackoff, MaxBackoff, Logger, Observe and
	// Clock are as in Config, for every session of the template.
	Storage                  certmagic.Storage
	Backend                  Backend
	Login                    LoginFunc
	RefreshBefore            time.Duration
	KeyAlgorithm             dpop.Algorithm
	KeySource                KeySource
	LockTimeout, CallTimeout time.Duration
	MinBackoff, MaxBackoff   time.Duration
	Logger                   *zap.Logger
	Observe                  func(Event)
	Clock                    Clock
	// MaxResident bounds how many sessions are held in memory (default
	// 10,000); beyond it the least recently used idle one is evicted. An
	// evicted session stays in storage and is loaded again on its next
	// use.
	MaxResident int
	// UseWindow is how recently before its refresh time a session must
	// have been used to be refreshed ahead of expiry (default 10m). One
	// not used in that window refreshes on its next use instead; that use
	// waits only if its token has expired meanwhile.
	UseWindow time.Duration
	// IdleTimeout evicts a session from memory when it has not been used
	// for this long (default 30m), besides the MaxResident bound. Like an
	// LRU eviction it only frees memory: the session stays in storage.
	IdleTimeout time.Duration
	// Retention deletes from storage the sessions not used for this long,
	// revoking each at the token server first (see Runtime.Erase). 0
	// keeps sessions forever. Last use is recorded in the storage index
	// coarsely (see indexUseGrain), so values below two hours are raised
	// to two hours: a session in use is never taken for an idle one.
	Retention time.Duration
	// MaxRefreshing caps how many refreshes the scheduler runs at once
	// (default 32); sessions due beyond it wait in the scheduler's heap
	// in the order they fall due. A refresh a request waits for is never
	// capped.
	MaxRefreshing int
}

// SessionInfo is what a listing shows of a run-time session. It holds no
// secret: no token, refresh token or key.
type SessionInfo struct {
	// Key is the session's key (a user id, say): stored only inside
	// sealed values when the storage seals.
	Key string
	// State is as in Status: active, logged_out or login_failed (the last
	// only for a session held in memory); "unreadable" when its stored
	// record cannot be read.
	State string
	// Created is when the session was first indexed (its first login),
	// LastUsed when it was last used, recorded in storage at most once per
	// indexUseGrain (a session held in memory reports its exact last use).
	// Zero when unknown.
	Created, LastUsed time.Time
	// Expires is when the access token held expires; zero if none.
	Expires time.Time
	// Sub is the access token's subject claim, when it is a JWT.
	Sub string
}

// Runtime holds the sessions of one Template.
type Runtime struct {
	tmpl    atomic.Pointer[Template] // swapped by Update
	clock   Clock
	sched   *scheduler
	backend *liveBackend
	idx     *index

	mu     sync.Mutex
	m      map[string]*entry
	lru    list.List // of *entry, most recently looked up first
	closed bool

	stop, done chan struct{} // the housekeeper (see housekeep)
	sweepAt    int           // next index shard the retention sweep reads (housekeeper only)
}

// entry is one resident run-time session.
type entry struct {
	key   string
	c     *Cache
	ready chan struct{} // closed when c (or err) is set
	err   error
	elem  *list.Element
	used  atomic.Int64 // last use (clock's Unix nanoseconds)
	// looked is when the entry last moved to the front of the LRU
	// (r.mu): the list is in that order, so the idle sweep stops at the
	// first entry looked up recently.
	looked int64
	// indexed is the last use written to the storage index (Unix
	// nanoseconds; 0: not yet by this Runtime).
	indexed atomic.Int64
	sched   schedState
}

// Defaults of a Template.
const (
	defaultMaxResident   = 10_000
	defaultUseWindow     = 10 * time.Minute
	defaultIdleTimeout   = 30 * time.Minute
	defaultMaxRefreshing = 32
)

// NewRuntime checks t and starts its scheduler. Nothing is loaded from
// storage until a session is used.
func NewRuntime(t Template) (*Runtime, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	if t.Clock == nil {
		t.Clock = systemClock{}
	}
	t.defaults()
	r := &Runtime{clock: t.Clock, m: map[string]*entry{}, stop: make(chan struct{}), done: make(chan struct{})}
	r.backend = &liveBackend{}
	r.backend.b.Store(&t.Backend)
	r.tmpl.Store(&t)
	r.idx = newIndex(r)
	r.sched = newScheduler(t.Clock, t.MaxRefreshing)
	go r.housekeep()
	return r, nil
}

func (t *Template) check() error {
	if t.Name == "" || t.Storage == nil || t.Backend == nil {
		return errors.New("tokencache: template Name, Storage and Backend are required")
	}
	if len(t.Secret) < 16 {
		return errors.New("tokencache: template Secret must be at least 16 bytes")
	}
	return nil
}

func (t *Template) defaults() {
	if t.MaxResident <= 0 {
		t.MaxResident = defaultMaxResident
	}
	if t.UseWindow <= 0 {
		t.UseWindow = defaultUseWindow
	}
	if t.IdleTimeout <= 0 {
		t.IdleTimeout = defaultIdleTimeout
	}
	if t.MaxRefreshing <= 0 {
		t.MaxRefreshing = defaultMaxRefreshing
	}
	if t.Retention > 0 {
		t.Retention = max(t.Retention, 2*indexUseGrain)
	}
}

func (r *Runtime) tpl() *Template { return r.tmpl.Load() }

// Update swaps the template's settings in place (a config reload): no
// session is rebuilt or read again. What each change does to the sessions
// already made is in docs/runtime-sessions.md: in short, Backend, Login,
// Observe, Logger, UseWindow, MaxResident, IdleTimeout, Retention and
// MaxRefreshing apply to resident sessions at once; RefreshBefore,
// KeyAlgorithm, KeySource and the timeouts and backoffs to each session
// from its next load. A changed Name or Secret is refused (every stored
// session would be orphaned: make a new Runtime), as is another Storage:
// nil, the same instance, or one whose String() is the same, keeps the
// current one. Clock is never changed.
func (r *Runtime) Update(t Template) error {
	old := r.tpl()
	if t.Storage == nil || sameStorage(t.Storage, old.Storage) {
		t.Storage = old.Storage
	}
	switch {
	case t.Name != old.Name:
		return fmt.Errorf("tokencache: template %q cannot be renamed to %q in place; its sessions are stored under its name (make a new Runtime)", old.Name, t.Name)
	case !hmac.Equal(t.Secret, old.Secret):
		return fmt.Errorf("tokencache: template %q: a changed secret moves every session's storage directory; it cannot change in place (make a new Runtime)", old.Name)
	case t.Storage != old.Storage:
		return fmt.Errorf("tokencache: template %q: another storage cannot be swapped in place (make a new Runtime)", old.Name)
	}
	if err := t.check(); err != nil {
		return err
	}
	t.Clock = old.Clock
	t.defaults()
	r.backend.b.Store(&t.Backend)
	r.tmpl.Store(&t)
	r.sched.setCap(t.MaxRefreshing)
	r.mu.Lock()
	es := make([]*entry, 0, len(r.m))
	for _, e := range r.m {
		es = append(es, e)
	}
	r.mu.Unlock()
	for _, e := range es {
		if isReady(e) && e.c != nil {
			e.c.SetLogger(t.Logger)
			r.sched.poke(e) // UseWindow may have changed its plan
		}
	}
	r.evict()
	return nil
}

// sameStorage reports whether a and b are the same storage: the same
// comparable value, or equal String()s (a reload hands out a new instance
// of the same storage).
func sameStorage(a, b certmagic.Storage) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta == tb && ta.Comparable() && a == b {
		return true
	}
	sa, ok1 := a.(fmt.Stringer)
	sb, ok2 := b.(fmt.Stringer)
	return ok1 && ok2 && sa.String() == sb.String()
}

// liveBackend is the Backend every session of a Runtime holds: it passes
// each call to the template's current backend, so Update swaps it for
// resident sessions without rebuilding them.
type liveBackend struct{ b atomic.Pointer[Backend] }

func (l *liveBackend) get() Backend { return *l.b.Load() }

// Refresh implements Backend.
func (l *liveBackend) Refresh(ctx context.Context, key *dpop.Key, rt string) (*Grant, error) {
	return l.get().Refresh(ctx, key, rt)
}

// Revoke implements Backend.
func (l *liveBackend) Revoke(ctx context.Context, key *dpop.Key, rt string) error {
	return l.get().Revoke(ctx, key, rt)
}

// AutoLogin implements Backend.
func (l *liveBackend) AutoLogin() LoginFunc { return l.get().AutoLogin() }

// Dir is the storage directory of the session key of template t:
// inject_token/<template>/<HMAC-SHA256(secret, key), 128 bits, hex>.
func (t *Template) Dir(key string) string { return StoragePrefix + "/" + t.sub(key) }

func (t *Template) sub(key string) string {
	return certmagic.StorageKeys.Safe(t.Name) + "/" + t.hash(key)
}

// hash is the keyed hash naming key's directory (and its index entry).
func (t *Template) hash(key string) string {
	m := hmac.New(sha256.New, t.Secret)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// Session returns the session for key, loading it from storage (no
// network call) on first use. A session that was never logged in is
// returned logged out (and, with a template Login, logs in in the
// background). The cache is closed if it is evicted: hold the Runtime,
// not the cache.
func (r *Runtime) Session(key string) (*Cache, error) {
	e, err := r.entry(key)
	if err != nil {
		return nil, err
	}
	return e.c, nil
}

// Token returns a valid token of key's session, like Cache.Token, and
// counts the call as a use of the session (see Template.UseWindow).
func (r *Runtime) Token(ctx context.Context, key string) (*Token, error) {
	for range 2 {
		e, err := r.entry(key)
		if err != nil {
			return nil, err
		}
		tok, err := e.c.Token(ctx)
		if err != nil && e.c.ctx.Err() != nil {
			continue // evicted while in use: the next lookup loads it again
		}
		return tok, err
	}
	return nil, errClosed
}

// Login logs key's session in with login, making the session (and its
// DPoP key) if it does not exist yet, and indexes it (see List).
func (r *Runtime) Login(ctx context.Context, key string, login LoginFunc) error {
	e, err := r.entry(key)
	if err != nil {
		return err
	}
	if err := e.c.Login(ctx, login); err != nil {
		return err
	}
	if e.indexed.Load() == 0 {
		// The login's event indexed it unless that write failed: the
		// caller hears of a session it cannot list.
		return r.indexUse(ctx, []*entry{e})
	}
	return nil
}

// Resident is how many sessions are held in memory.
func (r *Runtime) Resident() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// Counts is how many resident sessions are in each state (active,
// logged_out, login_failed), for per-template metrics: the labels are
// states, never keys.
func (r *Runtime) Counts() map[string]int {
	r.mu.Lock()
	es := make([]*entry, 0, len(r.m))
	for _, e := range r.m {
		es = append(es, e)
	}
	r.mu.Unlock()
	out := map[string]int{}
	for _, e := range es {
		if isReady(e) && e.c != nil {
			out[e.c.stateOf(e.c.current())]++
		}
	}
	return out
}

// Close stops the scheduler and closes every resident session (see
// Cache.Close).
func (r *Runtime) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	es := make([]*entry, 0, len(r.m))
	for _, e := range r.m {
		es = append(es, e)
	}
	r.mu.Unlock()
	close(r.stop)
	<-r.done
	// The last uses the index has not heard of, so that another
	// instance's retention does not take these sessions for idle ones.
	ctx, cancel := context.WithTimeout(context.Background(), min(r.lockTimeout(), closeFlushTimeout))
	r.flushUses(ctx)
	cancel()
	r.mu.Lock()
	r.m = map[string]*entry{}
	r.lru.Init()
	r.mu.Unlock()
	r.sched.close()
	for _, e := range es {
		<-e.ready
		if e.c != nil {
			e.c.Close()
		}
	}
}

func (r *Runtime) use(e *entry) {
	e.used.Store(r.clock.Now().UnixNano())
	if !e.sched.planned.Load() {
		r.sched.poke(e)
	}
}

// entry returns key's resident entry, loading it if needed. Concurrent
// first uses of one key load it once.
func (r *Runtime) entry(key string) (*entry, error) {
	now := r.clock.Now().UnixNano()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errClosed
	}
	if e := r.m[key]; e != nil {
		r.lru.MoveToFront(e.elem)
		e.looked = now
		r.mu.Unlock()
		<-e.ready
		if e.err != nil {
			return nil, e.err
		}
		return e, nil
	}
	e := &entry{key: key, ready: make(chan struct{}), looked: now}
	e.sched.index = -1
	e.elem = r.lru.PushFront(e)
	r.m[key] = e
	r.mu.Unlock()

	e.c, e.err = New(r.config(e))
	if e.err != nil {
		r.drop(e)
		close(e.ready)
		return nil, e.err
	}
	close(e.ready)
	r.sched.poke(e)
	r.evict()
	return e, nil
}

// drop takes e out of the Runtime's map and LRU (not its scheduler).
func (r *Runtime) drop(e *entry) {
	r.mu.Lock()
	if r.m[e.key] == e {
		delete(r.m, e.key)
		r.lru.Remove(e.elem)
	}
	r.mu.Unlock()
}

// resident is key's entry if it is loaded, without loading it.
func (r *Runtime) resident(key string) *entry {
	r.mu.Lock()
	e := r.m[key]
	r.mu.Unlock()
	if e == nil || !isReady(e) || e.c == nil {
		return nil
	}
	return e
}

func (r *Runtime) config(e *entry) Config {
	t := r.tpl()
	sub := t.sub(e.key)
	cfg := Config{
		Name: sub, Storage: t.Storage, Backend: r.backend,
		RefreshBefore: t.RefreshBefore, KeyAlgorithm: t.KeyAlgorithm, KeySource: t.KeySource,
		LockTimeout: t.LockTimeout, CallTimeout: t.CallTimeout,
		MinBackoff: t.MinBackoff, MaxBackoff: t.MaxBackoff,
		Logger: t.Logger, Clock: t.Clock,
		Observe: func(ev Event) { r.observe(e, ev) },
		sub:     sub, key: e.key,
		notify: func() { r.sched.poke(e) },
		use:    func() { r.use(e) },
		inUse: func(refreshAt time.Time) bool {
			return e.used.Load() >= refreshAt.Add(-r.tpl().UseWindow).UnixNano()
		},
	}
	if t.Login != nil {
		cfg.Login = func(ctx context.Context, key *dpop.Key, prev string) (*Grant, error) {
			if l := r.tpl().Login; l != nil {
				return l(ctx, key, prev)
			}
			return nil, &Failure{Class: ClassDidNotAct, Message: "automatic login was turned off for this template"}
		}
	}
	return cfg
}

// observe passes a session's event on to the template's Observe, and
// indexes a session when it logs in: a session made by an automatic
// login is listed like one made by Runtime.Login. The write happens on
// the login's operation, after its result is stored and published.
func (r *Runtime) observe(e *entry, ev Event) {
	if o := r.tpl().Observe; o != nil {
		o(ev)
	}
	if ev.Kind == EventAttempt && ev.Outcome == OutcomeLoggedIn && e.indexed.Load() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), r.lockTimeout())
		defer cancel()
		if err := r.indexUse(ctx, []*entry{e}); err != nil && e.c != nil {
			e.c.log().Warn("indexing the new session; retried at the next housekeeping",
				zap.String("session", e.c.cfg.Name), zap.Error(err))
		}
	}
}

func (r *Runtime) lockTimeout() time.Duration {
	if d := r.tpl().LockTimeout; d > 0 {
		return d
	}
	return 30 * time.Second
}

// evict closes the least recently used idle sessions beyond MaxResident.
// A session with an operation running or a result not yet stored is
// skipped: it is not idle, and closing it would only delay that write.
func (r *Runtime) evict() {
	var out []*entry
	limit := r.tpl().MaxResident
	r.mu.Lock()
	for el := r.lru.Back(); el != nil && len(r.m) > limit; {
		e := el.Value.(*entry)
		el = el.Prev()
		if !e.idle() {
			continue
		}
		delete(r.m, e.key)
		r.lru.Remove(e.elem)
		out = append(out, e)
	}
	r.mu.Unlock()
	r.release(out)
}

// evictIdle closes the idle sessions not used within IdleTimeout. It
// walks the LRU from its back and stops at the first session looked up
// within IdleTimeout: every one before it was looked up later. A session
// used through a held *Cache (its use newer than its lookup), or busy,
// moves to the front as if looked up now, and is looked at again after
// IdleTimeout: so the walk costs the sessions it evicts or moves.
func (r *Runtime) evictIdle() {
	now := r.clock.Now()
	cutoff := now.Add(-r.tpl().IdleTimeout).UnixNano()
	var out []*entry
	r.mu.Lock()
	for el := r.lru.Back(); el != nil; {
		e := el.Value.(*entry)
		if e.looked >= cutoff {
			break
		}
		prev := el.Prev()
		switch used := e.used.Load(); {
		case used >= cutoff || !e.idle():
			e.looked = now.UnixNano()
			r.lru.MoveToFront(el)
		default:
			delete(r.m, e.key)
			r.lru.Remove(el)
			out = append(out, e)
		}
		el = prev
	}
	r.mu.Unlock()
	r.release(out)
}

// release closes evicted sessions, first writing a last use the index
// does not have yet.
func (r *Runtime) release(out []*entry) {
	if len(out) == 0 {
		return
	}
	var stale []*entry
	for _, e := range out {
		r.sched.remove(e)
		if r.useStale(e) {
			stale = append(stale, e)
		}
	}
	if len(stale) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), r.lockTimeout())
		_ = r.indexUse(ctx, stale) // best effort: coarse by design
		cancel()
	}
	for _, e := range out {
		e.c.Close()
	}
}

func isReady(e *entry) bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// idle: loaded, and no operation running or result waiting to be stored.
func (e *entry) idle() bool {
	if !isReady(e) {
		return false
	}
	c := e.c
	if c == nil || !c.opMu.TryLock() {
		return false
	}
	defer c.opMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending.Load() == nil && c.flight == nil
}
