package dpop

import (
	"net/http"
	"net/url"
	"sync"
)

// NonceStore remembers the latest DPoP-Nonce each origin sent. The zero value
// is ready to use and safe for concurrent use. Entries are few (one per
// server the process talks to), so it is not bounded.
type NonceStore struct {
	m sync.Map // origin → string
}

// Get returns the latest nonce for u's origin, or "".
func (s *NonceStore) Get(u *url.URL) string {
	if v, ok := s.m.Load(Origin(u)); ok {
		return v.(string)
	}
	return ""
}

// Set records nonce for u's origin; an empty nonce is ignored.
func (s *NonceStore) Set(u *url.URL, nonce string) {
	if nonce != "" {
		s.m.Store(Origin(u), nonce)
	}
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
