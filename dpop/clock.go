package dpop

import (
	"container/list"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of a ClockStore, as for a NonceStore: origins come from the Host
// header a client sends, so they must not grow the store without bound.
const (
	// MaxClockOrigins is how many origins a ClockStore remembers; the
	// least recently used is forgotten first.
	MaxClockOrigins = 1024
	// MaxClockAge is how long a learned offset is trusted without being
	// confirmed by another Date header.
	MaxClockAge = 10 * time.Minute
)

// ClockStore remembers, per origin, how far the local clock is ahead of
// the server's (localNow − serverNow), learned from the Date header of its
// responses, so that DPoP proofs sent to it are dated on its clock (RFC
// 9449 §11.1: servers check iat against their own clock). Offsets under a
// second are not kept: Date has one-second resolution. The zero value is
// ready to use and safe for concurrent use.
type ClockStore struct {
	mu  sync.Mutex
	m   map[string]*list.Element // origin → element of lru holding a *clockEntry
	lru list.List                // most recently used first
	now func() time.Time         // for tests; nil means time.Now
	// size mirrors lru.Len() for Skew's lock-free fast path.
	size atomic.Int64
}

type clockEntry struct {
	origin string
	skew   time.Duration
	at     time.Time
}

func (s *ClockStore) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// Skew returns the learned offset for u's origin and whether one is known.
func (s *ClockStore) Skew(u *url.URL) (time.Duration, bool) {
	if s.size.Load() == 0 {
		return 0, false // most servers' clocks agree: no lock, no origin string
	}
	origin := Origin(u)
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.m[origin]
	if !ok {
		return 0, false
	}
	e := el.Value.(*clockEntry)
	if s.clock().Sub(e.at) > MaxClockAge {
		s.remove(el)
		return 0, false
	}
	s.lru.MoveToFront(el)
	return e.skew, true
}

// Observe learns u's origin's clock from a response's Date header value,
// received at the local time received. A missing or unparsable Date
// changes nothing. An offset under a second means the clocks agree: it is
// remembered as 0 when remember0 is set (a caller that would otherwise
// assume another offset for an unknown origin), else the origin is
// forgotten, which keeps the store empty, and Skew free, while every clock
// agrees.
func (s *ClockStore) Observe(u *url.URL, date string, received time.Time, remember0 bool) {
	if date == "" {
		return
	}
	d, err := http.ParseTime(date)
	if err != nil {
		return
	}
	// Date is truncated to the second: the server's clock read somewhere
	// in [d, d+1s) when it wrote it, so the middle is the best estimate.
	skew := received.Sub(d.Add(500 * time.Millisecond))
	if skew.Abs() < time.Second {
		skew = 0
	}
	s.set(u, skew, remember0)
}

// Set records skew for u's origin; 0 forgets it.
func (s *ClockStore) Set(u *url.URL, skew time.Duration) { s.set(u, skew, false) }

func (s *ClockStore) set(u *url.URL, skew time.Duration, remember0 bool) {
	forget := skew == 0 && !remember0
	if forget && s.size.Load() == 0 {
		return
	}
	origin := Origin(u)
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.m[origin]; ok {
		if forget {
			s.remove(el)
			return
		}
		e := el.Value.(*clockEntry)
		e.skew, e.at = skew, now
		s.lru.MoveToFront(el)
		return
	}
	if forget {
		return
	}
	if s.m == nil {
		s.m = make(map[string]*list.Element)
	}
	for s.lru.Len() >= MaxClockOrigins {
		s.remove(s.lru.Back())
	}
	s.m[origin] = s.lru.PushFront(&clockEntry{origin: origin, skew: skew, at: now})
	s.size.Store(int64(s.lru.Len()))
}

// remove forgets el; callers hold mu.
func (s *ClockStore) remove(el *list.Element) {
	delete(s.m, el.Value.(*clockEntry).origin)
	s.lru.Remove(el)
	s.size.Store(int64(s.lru.Len()))
}

// Len returns how many origins the store remembers.
func (s *ClockStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}
