package tokencache

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
}

// Runtime holds the sessions of one Template.
type Runtime struct {
	t     Template
	clock Clock
	sched *scheduler

	mu     sync.Mutex
	m      map[string]*entry
	lru    list.List // of *entry, most recently used first
	closed bool
}

// entry is one resident run-time session.
type entry struct {
	key   string
	c     *Cache
	ready chan struct{} // closed when c (or err) is set
	err   error
	elem  *list.Element
	used  atomic.Int64 // last use (clock's Unix nanoseconds)
	sched schedState
}

// NewRuntime checks t and starts its scheduler. Nothing is loaded from
// storage until a session is used.
func NewRuntime(t Template) (*Runtime, error) {
	if t.Name == "" || t.Storage == nil || t.Backend == nil {
		return nil, errors.New("tokencache: template Name, Storage and Backend are required")
	}
	if len(t.Secret) < 16 {
		return nil, errors.New("tokencache: template Secret must be at least 16 bytes")
	}
	if t.MaxResident <= 0 {
		t.MaxResident = 10_000
	}
	if t.UseWindow <= 0 {
		t.UseWindow = 10 * time.Minute
	}
	if t.Clock == nil {
		t.Clock = systemClock{}
	}
	r := &Runtime{t: t, clock: t.Clock, m: map[string]*entry{}}
	r.sched = newScheduler(t.Clock)
	return r, nil
}

// Dir is the storage directory of the session key of template t:
// inject_token/<template>/<HMAC-SHA256(secret, key), 128 bits, hex>.
func (t *Template) Dir(key string) string { return StoragePrefix + "/" + t.sub(key) }

func (t *Template) sub(key string) string {
	m := hmac.New(sha256.New, t.Secret)
	m.Write([]byte(key))
	return certmagic.StorageKeys.Safe(t.Name) + "/" + hex.EncodeToString(m.Sum(nil)[:16])
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
// DPoP key) if it does not exist yet.
func (r *Runtime) Login(ctx context.Context, key string, login LoginFunc) error {
	c, err := r.Session(key)
	if err != nil {
		return err
	}
	return c.Login(ctx, login)
}

// Resident is how many sessions are held in memory.
func (r *Runtime) Resident() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
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
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errClosed
	}
	if e := r.m[key]; e != nil {
		r.lru.MoveToFront(e.elem)
		r.mu.Unlock()
		<-e.ready
		if e.err != nil {
			return nil, e.err
		}
		return e, nil
	}
	e := &entry{key: key, ready: make(chan struct{})}
	e.sched.index = -1
	e.elem = r.lru.PushFront(e)
	r.m[key] = e
	r.mu.Unlock()

	e.c, e.err = New(r.config(e))
	if e.err != nil {
		r.mu.Lock()
		if r.m[key] == e {
			delete(r.m, key)
			r.lru.Remove(e.elem)
		}
		r.mu.Unlock()
		close(e.ready)
		return nil, e.err
	}
	close(e.ready)
	r.sched.poke(e)
	r.evict()
	return e, nil
}

func (r *Runtime) config(e *entry) Config {
	t := &r.t
	sub := t.sub(e.key)
	return Config{
		Name: sub, Storage: t.Storage, Backend: t.Backend, Login: t.Login,
		RefreshBefore: t.RefreshBefore, KeyAlgorithm: t.KeyAlgorithm, KeySource: t.KeySource,
		LockTimeout: t.LockTimeout, CallTimeout: t.CallTimeout,
		MinBackoff: t.MinBackoff, MaxBackoff: t.MaxBackoff,
		Logger: t.Logger, Observe: t.Observe, Clock: t.Clock,
		sub: sub, key: e.key,
		notify: func() { r.sched.poke(e) },
		use:    func() { r.use(e) },
		inUse: func(refreshAt time.Time) bool {
			return e.used.Load() >= refreshAt.Add(-t.UseWindow).UnixNano()
		},
	}
}

// evict closes the least recently used idle sessions beyond MaxResident.
// A session with an operation running or a result not yet stored is
// skipped: it is not idle, and closing it would only delay that write.
func (r *Runtime) evict() {
	var out []*entry
	r.mu.Lock()
	for el := r.lru.Back(); el != nil && len(r.m) > r.t.MaxResident; {
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
	for _, e := range out {
		r.sched.remove(e)
		e.c.Close()
	}
}

// idle: loaded, and no operation running or result waiting to be stored.
func (e *entry) idle() bool {
	select {
	case <-e.ready:
	default:
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
