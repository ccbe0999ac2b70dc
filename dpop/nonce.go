package dpop

import (
	"container/list"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of a NonceStore. The origin of a resource server is the Host header
// the gateway sends, which by default is the client's: a client varying it
// must not grow the store without bound.
const (
	// MaxNonceOrigins is how many origins a NonceStore remembers; the least
	// recently used is forgotten first.
	MaxNonceOrigins = 1024
	// MaxNonceAge is how long a nonce is remembered: servers rotate them
	// within minutes, and an outdated nonce only costs one retry.
	MaxNonceAge = 10 * time.Minute
	// MaxNonceLen is the longest nonce a NonceStore accepts. RFC 9449
	// nonces are opaque but short (servers send 20–100 characters); every
	// later proof to the origin carries the nonce, so a hostile server's
	// megabyte nonce would make every request sign and send a megabyte.
	MaxNonceLen = 512
	// MaxNonceBytes bounds the origins and nonces a NonceStore holds
	// together; the least recently used go first. Origins come from Host
	// headers a client may make long.
	MaxNonceBytes = 128 << 10
)

// NonceStore remembers the latest DPoP-Nonce each origin sent, for at most
// MaxNonceOrigins origins, MaxNonceBytes in all and MaxNonceAge each. A
// nonce longer than MaxNonceLen is refused: the origin's previous nonce is
// forgotten, so the next proof goes without one and the server's challenge
// fails the request rather than slowing every later one. The zero value is
// ready to use and safe for concurrent use.
type NonceStore struct {
	// Refused, when set, is called (outside the store's lock) the first
	// time the store refuses a nonce, with the origin and the nonce's
	// length: one log line, however often a hostile server repeats it.
	Refused func(origin string, length int)

	mu    sync.Mutex
	m     map[string]*list.Element // origin → element of lru holding a *nonceEntry
	lru   list.List                // most recently used first
	bytes int                      // origins and nonces held
	now   func() time.Time         // for tests; nil means time.Now
	// size mirrors lru.Len() for Get's lock-free fast path.
	size     atomic.Int64
	refusedN atomic.Int64
}

type nonceEntry struct {
	origin, nonce string
	at            time.Time
}

func (s *NonceStore) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// Get returns the latest nonce for u's origin, or "".
func (s *NonceStore) Get(u *url.URL) string {
	if s.size.Load() == 0 {
		// Most resource servers never send a nonce: skip building the
		// origin and taking the lock on every request.
		return ""
	}
	origin := Origin(u)
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.m[origin]
	if !ok {
		return ""
	}
	e := el.Value.(*nonceEntry)
	if s.clock().Sub(e.at) > MaxNonceAge {
		s.removeLocked(el)
		return ""
	}
	s.lru.MoveToFront(el)
	return e.nonce
}

// Set records nonce for u's origin; an empty nonce is ignored, and one
// longer than MaxNonceLen is refused (see NonceStore).
func (s *NonceStore) Set(u *url.URL, nonce string) {
	if nonce == "" {
		return
	}
	origin := Origin(u)
	if len(nonce) > MaxNonceLen {
		s.refuse(origin, len(nonce))
		return
	}
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.m[origin]; ok {
		e := el.Value.(*nonceEntry)
		s.bytes += len(nonce) - len(e.nonce)
		e.nonce, e.at = nonce, now
		s.lru.MoveToFront(el)
		s.evictLocked()
		return
	}
	if s.m == nil {
		s.m = make(map[string]*list.Element)
	}
	s.m[origin] = s.lru.PushFront(&nonceEntry{origin: origin, nonce: nonce, at: now})
	s.bytes += len(origin) + len(nonce)
	s.evictLocked()
}

// refuse forgets origin's nonce, which the server has replaced by one too
// long to carry, and reports the first refusal.
func (s *NonceStore) refuse(origin string, length int) {
	s.mu.Lock()
	if el, ok := s.m[origin]; ok {
		s.removeLocked(el)
	}
	s.mu.Unlock()
	if s.refusedN.Add(1) == 1 && s.Refused != nil {
		s.Refused(origin, length)
	}
}

// evictLocked forgets the least recently used origins until the store is
// within its bounds; the newest entry always stays (it is within both).
func (s *NonceStore) evictLocked() {
	for s.lru.Len() > 1 && (s.lru.Len() > MaxNonceOrigins || s.bytes > MaxNonceBytes) {
		s.removeLocked(s.lru.Back())
	}
	s.size.Store(int64(s.lru.Len()))
}

func (s *NonceStore) removeLocked(el *list.Element) {
	e := el.Value.(*nonceEntry)
	s.lru.Remove(el)
	delete(s.m, e.origin)
	s.bytes -= len(e.origin) + len(e.nonce)
	s.size.Store(int64(s.lru.Len()))
}

// RefusedCount returns how many nonces the store has refused for their
// length.
func (s *NonceStore) RefusedCount() int64 { return s.refusedN.Load() }

// Len returns how many origins the store remembers.
func (s *NonceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}

// Observe records the DPoP-Nonce header of resp, if any, for the origin of
// the request that produced it. Call it for every response, successes
// included: servers rotate nonces on 2xx too.
func (s *NonceStore) Observe(resp *http.Response) {
	if resp == nil || resp.Request == nil {
		return
	}
	s.Set(resp.Request.URL, resp.Header.Get("DPoP-Nonce"))
}
