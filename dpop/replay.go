package dpop

import (
	"sync"
	"time"
)

// ReplayCache remembers recently seen jti values until they expire, holding
// at most a fixed number of entries. When full, the oldest insertion is
// dropped first even if it has not expired, so a flood beyond capacity
// within one iat window could replay an evicted jti: size it for (proofs per
// second × iat window), which bounds memory instead of letting an attacker
// grow it.
type ReplayCache struct {
	mu    sync.Mutex
	cap   int
	seen  map[string]time.Time
	order []replayEntry // FIFO ring by insertion; expiries are near-monotonic
	head  int
}

type replayEntry struct {
	key     string
	expires time.Time
}

// NewReplayCache returns a cache of at most capacity entries (100 000 when
// capacity ≤ 0).
func NewReplayCache(capacity int) *ReplayCache {
	if capacity <= 0 {
		capacity = 100_000
	}
	return &ReplayCache{cap: capacity, seen: make(map[string]time.Time)}
}

// Add records key until expires and reports whether it was new (not seen,
// or seen but already expired).
func (c *ReplayCache) Add(key string, expires, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evict(now)
	if exp, ok := c.seen[key]; ok && now.Before(exp) {
		return false
	}
	if len(c.seen) >= c.cap {
		c.dropOldest()
	}
	c.seen[key] = expires
	c.order = append(c.order, replayEntry{key, expires})
	return true
}

// Len reports how many entries are held.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// evict drops expired entries from the front of the queue.
func (c *ReplayCache) evict(now time.Time) {
	for c.head < len(c.order) && !now.Before(c.order[c.head].expires) {
		c.dropOldest()
	}
}

func (c *ReplayCache) dropOldest() {
	if c.head >= len(c.order) {
		return
	}
	e := c.order[c.head]
	c.order[c.head] = replayEntry{}
	c.head++
	if exp, ok := c.seen[e.key]; ok && exp.Equal(e.expires) {
		delete(c.seen, e.key)
	}
	// Compact when the consumed prefix dominates, keeping memory bounded.
	if c.head > len(c.order)/2 && c.head > 1024 {
		c.order = append(c.order[:0:0], c.order[c.head:]...)
		c.head = 0
	}
}
