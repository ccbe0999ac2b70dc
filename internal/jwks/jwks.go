// Package jwks caches an issuer's published signing keys (a JSON Web Key
// Set) for verifying its JWTs: fetched on first use, fetched again when a
// token names a key the set lacks (the issuer rotated), but at most once
// per MinRefetch, so junk key IDs cannot turn into a JWKS storm.
package jwks

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// DefaultMinRefetch is Cache.MinRefetch when it is zero.
const DefaultMinRefetch = 30 * time.Second

// ErrUnavailable is returned while the set has never been fetched
// successfully and the last attempt is more recent than MinRefetch.
var ErrUnavailable = errors.New("key set unavailable")

// Cache holds one key set. It is safe for concurrent use; concurrent
// callers share one fetch.
type Cache struct {
	// Fetch retrieves the current key set. Required.
	Fetch func(ctx context.Context) (*jose.JSONWebKeySet, error)
	// MinRefetch is the least time between two fetches caused by unknown
	// key IDs (or by failures); DefaultMinRefetch when zero.
	MinRefetch time.Duration

	mu      sync.Mutex
	keys    *jose.JSONWebKeySet
	fetched time.Time // of the last attempt; zero: never
}

// Keys returns the keys that may have signed a token whose header names
// kid (every key when kid is ""). It fetches the set when it has none yet,
// and once more when kid is unknown and the last fetch is older than
// MinRefetch; an unknown kid otherwise yields no keys and no error.
func (c *Cache) Keys(ctx context.Context, kid string, now time.Time) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pick := func(set *jose.JSONWebKeySet) []jose.JSONWebKey {
		if kid == "" {
			return set.Keys
		}
		return set.Key(kid)
	}
	every := c.MinRefetch
	if every <= 0 {
		every = DefaultMinRefetch
	}
	recent := !c.fetched.IsZero() && now.Sub(c.fetched) < every
	if c.keys != nil {
		if ks := pick(c.keys); len(ks) > 0 || kid == "" || recent {
			return ks, nil
		}
	} else if recent {
		return nil, ErrUnavailable
	}
	c.fetched = now
	set, err := c.Fetch(ctx)
	if err != nil {
		return nil, err
	}
	c.keys = set
	return pick(set), nil
}
