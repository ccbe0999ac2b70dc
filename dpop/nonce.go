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
)

// NonceStore remembers the latest DPoP-Nonce each origin sent, for at most
// MaxNonceOrigins origins and MaxNonceAge each. The zero value is ready to
// use and safe for concurrent use.
type NonceStore struct {
	mu  sync.Mutex
	m   map[string]*list.Element // origin → element of lru holding a *nonceEntry
	lru list.List                // most recently used first
	now func() time.Time         // for tests; nil means time.Now
	// size mirrors lru.Len() for Get's lock-free fast path.
	size atomic.Int64
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
		s.lru.Remove(el)
		delete(s.m, origin)
		s.size.Store(int64(s.lru.Len()))
		return ""
	}
	s.lru.MoveToFront(el)
	return e.nonce
}

// Set records nonce for u's origin; an empty nonce is ignored.
func (s *NonceStore) Set(u *url.URL, nonce string) {
	if nonce == "" {
		return
	}
	origin := Origin(u)
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.m[origin]; ok {
		e := el.Value.(*nonceEntry)
		e.nonce, e.at = nonce, now
		s.lru.MoveToFront(el)
		return
	}
	if s.m == nil {
		s.m = make(map[string]*list.Element)
	}
	for s.lru.Len() >= MaxNonceOrigins {
		oldest := s.lru.Back()
		delete(s.m, oldest.Value.(*nonceEntry).origin)
		s.lru.Remove(oldest)
	}
	s.m[origin] = s.lru.PushFront(&nonceEntry{origin: origin, nonce: nonce, at: now})
	s.size.Store(int64(s.lru.Len()))
}

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
