package dpop

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
)

func TestNonceStorePerOrigin(t *testing.T) {
	var s NonceStore
	if got := s.Get(mustURL(t, "https://a.example/")); got != "" {
		t.Fatalf("zero store Get = %q, want empty", got)
	}
	s.Set(mustURL(t, "HTTPS://A.Example:443/token?x=1"), "na")
	s.Set(mustURL(t, "https://b.example/"), "nb")
	s.Set(mustURL(t, "http://a.example/"), "na-http")
	s.Set(mustURL(t, "https://a.example:8443/"), "na-8443")
	for _, tc := range []struct{ url, want string }{
		{"https://a.example/other/path", "na"}, // same origin, any path
		{"https://a.example:443", "na"},
		{"https://A.EXAMPLE/", "na"},
		{"https://b.example/x", "nb"},
		{"http://a.example:80/", "na-http"}, // scheme is part of the origin
		{"https://a.example:8443/", "na-8443"},
		{"https://c.example/", ""},
		{"https://sub.a.example/", ""},
	} {
		if got := s.Get(mustURL(t, tc.url)); got != tc.want {
			t.Errorf("Get(%s) = %q, want %q", tc.url, got, tc.want)
		}
	}
	// Latest wins; an empty nonce does not erase the stored one.
	s.Set(mustURL(t, "https://a.example/"), "na2")
	s.Set(mustURL(t, "https://a.example/"), "")
	if got := s.Get(mustURL(t, "https://a.example/")); got != "na2" {
		t.Errorf("after Set(na2), Set(\"\"): Get = %q, want na2", got)
	}
}

func TestNonceStoreObserve(t *testing.T) {
	var s NonceStore
	u := mustURL(t, "https://as.example/token")
	resp := func(status int, nonce string) *http.Response {
		h := http.Header{}
		if nonce != "" {
			h.Set("DPoP-Nonce", nonce)
		}
		return &http.Response{StatusCode: status, Header: h, Request: &http.Request{URL: u}}
	}
	s.Observe(resp(400, "n1"))
	if got := s.Get(u); got != "n1" {
		t.Fatalf("after 400 with nonce: %q, want n1", got)
	}
	s.Observe(resp(200, "n2")) // servers rotate on 2xx too
	if got := s.Get(u); got != "n2" {
		t.Fatalf("after 200 with nonce: %q, want n2", got)
	}
	s.Observe(resp(200, "")) // no header: keep the last nonce
	s.Observe(&http.Response{Request: &http.Request{URL: u}})
	s.Observe(&http.Response{Header: http.Header{"Dpop-Nonce": {"orphan"}}}) // no request: no origin
	s.Observe(nil)
	if got := s.Get(u); got != "n2" {
		t.Fatalf("after responses without a nonce: %q, want n2", got)
	}
	// Header name is case-insensitive on the wire.
	h := http.Header{}
	h["Dpop-Nonce"] = []string{"n3"}
	s.Observe(&http.Response{Header: h, Request: &http.Request{URL: mustURL(t, "https://AS.example:443/other")}})
	if got := s.Get(u); got != "n3" {
		t.Fatalf("after Dpop-Nonce on same origin: %q, want n3", got)
	}
}

// TestNonceStoreConcurrent runs writers and readers on shared origins; under
// -race it proves the store is safe, and each origin ends holding a nonce
// that was written for it.
func TestNonceStoreConcurrent(t *testing.T) {
	var s NonceStore
	origins := []string{"https://a.example", "https://b.example", "HTTPS://A.EXAMPLE:443"}
	var urls []*url.URL
	for _, o := range origins {
		urls = append(urls, mustURL(t, o+"/p"))
	}
	const workers, rounds = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				u := urls[(w+i)%len(urls)]
				s.Set(u, fmt.Sprintf("%s#%d", Origin(u), w))
				if got := s.Get(u); got == "" {
					t.Errorf("Get(%s) empty after Set", u)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, o := range origins {
		u := mustURL(t, o)
		var valid []string
		for w := range workers {
			valid = append(valid, fmt.Sprintf("%s#%d", Origin(u), w))
		}
		if got := s.Get(u); !slices.Contains(valid, got) {
			t.Errorf("Get(%s) = %q, not a nonce written for that origin", o, got)
		}
	}
}
