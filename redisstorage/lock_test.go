package redisstorage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/redistest"
)

// Two clients on one Redis: the lock excludes, the holder's renewals keep
// it past several lease lengths, a holder that stops renewing (a crash)
// loses it when the lease expires, and its late Unlock does not free the
// lock its successor took.
func TestLockLease(t *testing.T) {
	addr := redistest.Start(t)
	// Leases are time itself; ten renewals per lease leave a wide margin
	// on a busy machine.
	lt := leaseTimes{ttl: time.Second, renew: 100 * time.Millisecond, poll: 20 * time.Millisecond}
	a, b := newStorage(t, addr, "p", lt), newStorage(t, addr, "p", lt)
	ctx := context.Background()

	if err := a.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 3*lt.ttl)
	defer cancel()
	if err := b.Lock(short, "n"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b.Lock while a holds and renews: %v, want deadline exceeded", err)
	}

	// a crashes: its renewer stops, nothing is released.
	a.conn.mu.Lock()
	l := a.conn.held[a.lockKey("n")]
	a.conn.mu.Unlock()
	l.stop()
	<-l.done
	if err := b.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// a comes back and unlocks: compare-and-delete leaves b's lease.
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Fatalf("Unlock of an expired lease: %v", err)
	}
	if ttl, err := b.conn.client.PTTL(ctx, b.lockKey("n")).Result(); err != nil || ttl <= 0 {
		t.Fatalf("b's lease after a's late Unlock: ttl %v, %v", ttl, err)
	}
	c := newStorage(t, addr, "p", lt)
	short2, cancel2 := context.WithTimeout(ctx, 2*lt.ttl)
	defer cancel2()
	if err := c.Lock(short2, "n"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("c took the lock b holds after a's late Unlock: %v", err)
	}
	if err := b.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// Released, not expired: c gets it at its next poll.
	if err := c.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.conn.client.Get(ctx, c.lockKey("n")).Result(); len(v) != 22+len(owner) || !strings.HasSuffix(v, owner) {
		t.Fatalf("lease value %q: want a 22-character token then %q", v, owner)
	}
	if err := c.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.conn.client.Exists(ctx, c.lockKey("n")).Result(); n != 0 {
		t.Fatal("lock key left after Unlock")
	}
}

// A lease or conditional write resent after its reply was lost (go-redis
// retries) is found applied, not reported busy or conflicting.
func TestResentCommandsAreIdempotent(t *testing.T) {
	addr := redistest.Start(t)
	s := newStorage(t, addr, "p", leaseTimes{ttl: time.Second, renew: 100 * time.Millisecond, poll: 20 * time.Millisecond})
	ctx := context.Background()
	key := s.lockKey("n")
	for i := range 2 {
		if ok, err := s.obtain(ctx, key, "tok1"); !ok || err != nil {
			t.Fatalf("obtain #%d with the same token: %v, %v", i+1, ok, err)
		}
	}
	if ok, err := s.obtain(ctx, key, "tok2"); ok || err != nil {
		t.Fatalf("obtain with another token: %v, %v; want busy", ok, err)
	}
	full := s.key("state")
	sets, members := index(full)
	args := append([]any{0, `{"value":"eA==","version":1}`, 1}, strs(members)...)
	for i := range 2 {
		if cur, err := storeIfScript.Run(ctx, s.conn.client, append([]string{full}, sets...), args...).Int64(); cur != -1 || err != nil {
			t.Fatalf("conditional write #%d of the same envelope: %d, %v; want stored", i+1, cur, err)
		}
	}
	args[1] = `{"value":"eQ==","version":1}`
	if cur, _ := storeIfScript.Run(ctx, s.conn.client, append([]string{full}, sets...), args...).Int64(); cur != 1 {
		t.Fatalf("another writer's write from version 0: %d, want refused at version 1", cur)
	}
}
