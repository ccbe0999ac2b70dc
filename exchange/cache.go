package exchange

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Errors of Cache.Get that are not the server's.
var (
	// ErrSubjectInvalid: the subject failed verification (signature,
	// exp, aud, iss); it was not exchanged.
	ErrSubjectInvalid = errors.New("subject token failed verification")
	// ErrTooManySubjects: verification is off and new subjects arrive
	// faster than miss_rate; this one was not exchanged.
	ErrTooManySubjects = errors.New("too many new subject tokens")
)

// Cache holds one exchanged token per subject, in this process's memory
// only, under the SHA-256 of the token scope (audience, scope, resource,
// token types) and the subject. It is bounded (least recently used
// subjects are dropped), runs one exchange per key at a time, remembers a
// subject the server rejected for NegativeTTL, and hands a token out only
// until its expiry (never later than the subject's exp) less
// DefaultLeeway.
type Cache struct {
	exchange func(context.Context, *dpop.Key, string) (*tokencache.Grant, error)
	key      *dpop.Key // signs every per-subject exchange and proof; nil without DPoP
	scopeKey []byte
	now      func() time.Time
	size     int
	negTTL   time.Duration
	verify   *verifier     // nil: verification off
	misses   *rate.Limiter // non-nil when verification is off

	flights singleflight.Group

	mu  sync.Mutex
	lru *list.List // of *entry, most recent first
	m   map[[sha256.Size]byte]*list.Element
}

// entry is one subject's token, or the server's rejection of it.
type entry struct {
	k     [sha256.Size]byte
	grant *tokencache.Grant
	err   error
	until time.Time
}

func newCache(cfg *Config, exchange func(context.Context, *dpop.Key, string) (*tokencache.Grant, error), scope string) (*Cache, error) {
	c := &Cache{exchange: exchange, scopeKey: append([]byte(scope), 0), now: cfg.Now, size: cfg.CacheSize, negTTL: cfg.NegativeTTL,
		lru: list.New(), m: map[[sha256.Size]byte]*list.Element{}}
	if c.size <= 0 {
		c.size = DefaultCacheSize
	}
	if c.negTTL <= 0 {
		c.negTTL = DefaultNegativeTTL
	}
	if cfg.DPoP {
		k, err := dpop.GenerateKey(dpop.ES256)
		if err != nil {
			return nil, err
		}
		c.key = k
	}
	if cfg.Verify.Off {
		r, b := cfg.MissRate, cfg.MissBurst
		if r <= 0 {
			r = DefaultMissRate
		}
		if b <= 0 {
			b = int(r + 0.5)
		}
		c.misses = rate.NewLimiter(rate.Limit(r), max(b, 1))
		return c, nil
	}
	v, err := newVerifier(cfg)
	if err != nil {
		return nil, err
	}
	c.verify = v
	return c, nil
}

// Key is the DPoP key every per-subject token is bound to (nil without
// DPoP): the transport signs its proofs with it.
func (c *Cache) Key() *dpop.Key { return c.key }

func (c *Cache) keyOf(subject string) (k [sha256.Size]byte) {
	h := sha256.New()
	_, _ = h.Write(c.scopeKey) // the scope and a NUL
	// Hashed in place: a copy of a kilobyte-sized subject on every
	// request is most of a cache hit's cost. Write only reads it.
	_, _ = h.Write(unsafe.Slice(unsafe.StringData(subject), len(subject)))
	h.Sum(k[:0])
	return k
}

// Get returns the token for subject: the cached one, or a fresh exchange
// (one at a time per subject, whoever else asks meanwhile waits for it)
// after the subject passed verification or, with verification off, the
// miss rate limit.
func (c *Cache) Get(ctx context.Context, subject string) (*tokencache.Grant, error) {
	k := c.keyOf(subject)
	if g, err, ok := c.lookup(k); ok {
		return g, err
	}
	ch := c.flights.DoChan(string(k[:]), func() (any, error) {
		// A flight that ended just before this one started has stored
		// its result: use it rather than exchanging again.
		if g, err, ok := c.lookup(k); ok {
			return g, err
		}
		now := c.now()
		if c.verify != nil {
			if err := c.verify.verify(context.WithoutCancel(ctx), subject, now); err != nil {
				return nil, err
			}
		} else if !c.misses.AllowN(now, 1) {
			return nil, &Error{Failure: failureRetry, detail: "new subject over miss_rate", sentinel: ErrTooManySubjects}
		}
		g, err := c.exchange(context.WithoutCancel(ctx), c.key, subject)
		c.store(k, g, err)
		return g, err
	})
	select {
	case r := <-ch:
		g, _ := r.Val.(*tokencache.Grant)
		return g, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lookup returns k's live entry.
func (c *Cache) lookup(k [sha256.Size]byte) (*tokencache.Grant, error, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.m[k]
	if el == nil {
		return nil, nil, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.until) {
		c.lru.Remove(el)
		delete(c.m, k)
		return nil, nil, false
	}
	c.lru.MoveToFront(el)
	return e.grant, e.err, true
}

// store keeps an exchange's result: a token until its expiry less the
// leeway, a rejection by the server for NegativeTTL. A failure where the
// server did not answer (ClassRetryLater) is not kept.
func (c *Cache) store(k [sha256.Size]byte, g *tokencache.Grant, err error) {
	e := &entry{k: k, grant: g, err: err}
	switch f, _ := tokencache.FailureOf(err); {
	case err == nil:
		e.until = g.Expiry.Add(-DefaultLeeway)
	case f != nil && f.Class != tokencache.ClassRetryLater:
		e.until = c.now().Add(c.negTTL)
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.m[k]; el != nil {
		c.lru.Remove(el)
	}
	c.m[k] = c.lru.PushFront(e)
	for c.lru.Len() > c.size {
		old := c.lru.Remove(c.lru.Back()).(*entry)
		delete(c.m, old.k)
	}
}

// Invalidate drops subject's token when it is still accessToken (the
// upstream answered 401 to it): the next request exchanges again. Other
// subjects' tokens are untouched.
func (c *Cache) Invalidate(subject, accessToken string) {
	k := c.keyOf(subject)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.m[k]; el != nil {
		if e := el.Value.(*entry); e.grant != nil && e.grant.AccessToken == accessToken {
			c.lru.Remove(el)
			delete(c.m, k)
		}
	}
}

// Len is the number of subjects held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
