package dpop

import (
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A client that varies the Host header makes the gateway remember a nonce
// per origin it names: 100,000 distinct hosts must leave memory flat.
func TestNonceStoreBoundedByHosts(t *testing.T) {
	var s NonceStore
	set := func(from, to int) {
		for i := from; i < to; i++ {
			s.Set(&url.URL{Scheme: "https", Host: fmt.Sprintf("h%d.rebind.example", i)}, fmt.Sprintf("nonce-%040d", i))
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	set(0, 5_000) // past any bound: the store is at its steady size
	before := heap()
	set(5_000, 100_000)
	after := heap()
	if after > before && after-before > 1<<20 {
		t.Fatalf("heap grew by %d KiB over 95,000 more hosts", (after-before)>>10)
	}
	// The newest origins are remembered.
	u := &url.URL{Scheme: "https", Host: "h99999.rebind.example"}
	if got := s.Get(u); got != fmt.Sprintf("nonce-%040d", 99999) {
		t.Fatalf("newest origin's nonce = %q", got)
	}
	runtime.KeepAlive(&s)
}

// A nonce older than MaxNonceAge is forgotten; the least recently used
// origin goes first when the store is full.
func TestNonceStoreAgeAndLRU(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := NonceStore{now: func() time.Time { return now }}
	a := &url.URL{Scheme: "https", Host: "a.example"}
	s.Set(a, "na")
	for i := 1; i < MaxNonceOrigins; i++ {
		s.Set(&url.URL{Scheme: "https", Host: fmt.Sprintf("h%d.example", i)}, "n")
	}
	if s.Get(a) != "na" { // a is now the most recently used
		t.Fatal("a forgotten before the store was full")
	}
	s.Set(&url.URL{Scheme: "https", Host: "new.example"}, "n")
	if s.Len() != MaxNonceOrigins || s.Get(a) != "na" || s.Get(&url.URL{Scheme: "https", Host: "h1.example"}) != "" {
		t.Fatalf("len %d: want the least recently used (h1) evicted, a kept", s.Len())
	}
	now = now.Add(MaxNonceAge + time.Second)
	if got := s.Get(a); got != "" {
		t.Fatalf("nonce older than MaxNonceAge = %q", got)
	}
}

// A hostile server's long nonce is refused: proofs to it stay small, the
// origin's older nonce is forgotten (it was replaced), and the refusal is
// reported once however often the server repeats it.
func TestNonceStoreRefusesLongNonce(t *testing.T) {
	var reported []int
	s := NonceStore{Refused: func(_ string, n int) { reported = append(reported, n) }}
	u := &url.URL{Scheme: "https", Host: "hostile.example"}
	s.Set(u, "short-nonce")
	long := strings.Repeat("n", 8<<20)
	for range 3 {
		s.Set(u, long)
	}
	if got := s.Get(u); got != "" {
		t.Fatalf("after an 8 MiB nonce, Get = %d bytes; want none", len(got))
	}
	if len(reported) != 1 || reported[0] != 8<<20 || s.RefusedCount() != 3 {
		t.Fatalf("reported %v, counted %d; want one report of 8 MiB, three refusals", reported, s.RefusedCount())
	}
	edge := strings.Repeat("e", MaxNonceLen)
	s.Set(u, edge)
	if s.Get(u) != edge {
		t.Fatal("a nonce of MaxNonceLen bytes was refused")
	}
}

// Many origins, each with the longest nonce accepted and a long Host,
// stay within MaxNonceBytes together.
func TestNonceStoreBoundedByBytes(t *testing.T) {
	var s NonceStore
	nonce := strings.Repeat("n", MaxNonceLen)
	pad := strings.Repeat("h", 200)
	for i := range 5 * MaxNonceOrigins {
		s.Set(&url.URL{Scheme: "https", Host: fmt.Sprintf("%s%d.example", pad, i)}, nonce)
		if s.bytes > MaxNonceBytes {
			t.Fatalf("after %d origins the store holds %d bytes (cap %d)", i+1, s.bytes, MaxNonceBytes)
		}
	}
	last := &url.URL{Scheme: "https", Host: fmt.Sprintf("%s%d.example", pad, 5*MaxNonceOrigins-1)}
	if s.Get(last) != nonce {
		t.Fatal("the newest origin was evicted")
	}
	var held int
	for el := s.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*nonceEntry)
		held += len(e.origin) + len(e.nonce)
	}
	if held != s.bytes {
		t.Fatalf("byte count %d, entries hold %d", s.bytes, held)
	}
}
