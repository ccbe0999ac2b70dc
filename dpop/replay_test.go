package dpop

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestReplayCacheAddAndExpiry(t *testing.T) {
	c := NewReplayCache(10)
	exp := t0.Add(10 * time.Second)
	if !c.Add("a", exp, t0) {
		t.Fatal("first Add(a) = false")
	}
	if c.Add("a", exp, t0.Add(9*time.Second)) {
		t.Fatal("Add(a) before expiry = true, want replay")
	}
	if !c.Add("b", exp, t0) {
		t.Fatal("Add(b) = false; keys must be independent")
	}
	if !c.Add("a", t0.Add(20*time.Second), exp) {
		t.Fatal("Add(a) at its expiry = false, want new")
	}
	if c.Add("a", t0.Add(20*time.Second), t0.Add(19*time.Second)) {
		t.Fatal("re-added a forgotten before its new expiry")
	}
}

func TestReplayCacheEvictsExpired(t *testing.T) {
	c := NewReplayCache(1000)
	for i := range 500 {
		c.Add(fmt.Sprint(i), t0.Add(time.Duration(i+1)*time.Millisecond), t0)
	}
	if c.Len() != 500 {
		t.Fatalf("Len = %d, want 500", c.Len())
	}
	// Half have expired by t0+250ms; the next Add sweeps them.
	c.Add("x", t0.Add(time.Hour), t0.Add(250*time.Millisecond))
	if got := c.Len(); got != 251 {
		t.Fatalf("Len after sweep = %d, want 250 live + 1", got)
	}
	c.Add("y", t0.Add(time.Hour), t0.Add(time.Minute))
	if got := c.Len(); got != 2 {
		t.Fatalf("Len after all expired = %d, want 2", got)
	}
}

// TestReplayCacheBounded inserts 10× capacity live keys and checks the cache
// never exceeds capacity, keeps the newest, and does not let its queue grow
// without bound.
func TestReplayCacheBounded(t *testing.T) {
	const capacity = 100
	for _, tc := range []struct {
		name    string
		expires func(i int) time.Time
	}{
		{"monotonic expiry", func(i int) time.Time { return t0.Add(time.Hour + time.Duration(i)) }},
		// Verify derives expiry from the client's iat, which is not
		// monotonic: clients' clocks differ by up to the iat window.
		{"shuffled expiry", func(i int) time.Time { return t0.Add(time.Hour + time.Duration(i*7919%1000)*time.Millisecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewReplayCache(capacity)
			for i := range 10 * capacity {
				if !c.Add(fmt.Sprint(i), tc.expires(i), t0) {
					t.Fatalf("Add(%d) = false for a new key", i)
				}
				if n := c.Len(); n > capacity {
					t.Fatalf("after %d inserts Len = %d > capacity %d", i+1, n, capacity)
				}
			}
			if c.Add(fmt.Sprint(10*capacity-1), tc.expires(0), t0) {
				t.Error("newest key was dropped")
			}
		})
	}
	t.Run("queue compaction", func(t *testing.T) {
		c := NewReplayCache(capacity)
		for i := range 100 * capacity {
			c.Add(fmt.Sprint(i), t0.Add(time.Hour), t0)
		}
		if n := len(c.order) - c.head; n != c.Len() {
			t.Errorf("queue holds %d live entries, map %d", n, c.Len())
		}
		if len(c.order) > 2*(capacity+1024) {
			t.Errorf("queue length %d after %d inserts: not compacted", len(c.order), 100*capacity)
		}
	})
}

// TestReplayCacheReAddExpiredKeepsBound re-adds keys whose entries expired
// while an older, longer-lived entry blocked the sweep. The stale queue
// entries they leave behind must neither delete the re-added keys nor let
// the map outgrow the capacity.
func TestReplayCacheReAddExpiredKeepsBound(t *testing.T) {
	const capacity = 4
	c := NewReplayCache(capacity)
	now := t0
	c.Add("long", now.Add(time.Hour), now) // heads the queue, blocks the sweep
	for i := range capacity - 1 {
		c.Add(fmt.Sprint("short", i), now.Add(time.Second), now)
	}
	now = now.Add(2 * time.Second)
	for i := range capacity - 1 { // expired but not swept: re-add
		if !c.Add(fmt.Sprint("short", i), now.Add(time.Hour), now) {
			t.Fatalf("re-Add of expired short%d = false", i)
		}
	}
	for i := range capacity - 1 {
		if c.Add(fmt.Sprint("short", i), now.Add(time.Hour), now) {
			t.Fatalf("re-added short%d forgotten", i)
		}
	}
	for i := range 10 * capacity {
		c.Add(fmt.Sprint("new", i), now.Add(time.Hour), now)
		if n := c.Len(); n > capacity {
			t.Fatalf("after %d new keys Len = %d > capacity %d", i+1, n, capacity)
		}
	}
}

// TestReplayCacheConcurrent: under -race, and exactly one of the goroutines
// racing to add the same key wins.
func TestReplayCacheConcurrent(t *testing.T) {
	const workers, keys = 8, 2000
	c := NewReplayCache((workers + 1) * keys)
	var wins [keys]atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range keys {
				if c.Add(fmt.Sprint("shared", i), t0.Add(time.Hour), t0) {
					wins[i].Add(1)
				}
				if !c.Add(fmt.Sprint("own", w, "-", i), t0.Add(time.Hour), t0) {
					t.Errorf("worker %d lost its own key %d", w, i)
				}
			}
		})
	}
	wg.Wait()
	for i := range wins {
		if n := wins[i].Load(); n != 1 {
			t.Fatalf("shared key %d added by %d goroutines, want exactly 1", i, n)
		}
	}
	if got, want := c.Len(), keys+workers*keys; got != want {
		t.Errorf("Len = %d, want %d", got, want)
	}
}

// TestVerifierReplayCacheBounded: the verifier passes its capacity down and
// keeps accepting fresh proofs once full.
func TestVerifierReplayCacheBounded(t *testing.T) {
	const capacity = 16
	k := mustKey(t, EdDSA)
	v := NewVerifier(capacity)
	v.Now = func() time.Time { return t0 }
	exp := Expect{Method: "GET", URL: mustURL(t, "https://rs.example/")}
	for i := range 10 * capacity {
		if _, err := v.Verify(mustProof(t, k, "GET", "https://rs.example/", ProofOptions{Now: t0}), exp); err != nil {
			t.Fatalf("proof %d: %v", i, err)
		}
	}
	if n := v.replay.Len(); n != capacity {
		t.Errorf("replay cache Len = %d, want %d", n, capacity)
	}
}
