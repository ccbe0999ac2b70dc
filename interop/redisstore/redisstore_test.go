package redisstore

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/interop"
)

func newStorage(t *testing.T, r *interop.Redis, opts Options) *Storage {
	t.Helper()
	opts.Addr = r.Addr
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStorageKeys(t *testing.T) {
	r := interop.StartRedis(t, interop.RedisOptions{})
	s := newStorage(t, r, Options{KeyPrefix: "p"})
	ctx := context.Background()

	if _, err := s.Load(ctx, "a/b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	for _, k := range []string{"a/b", "a/c/d", "a/c/e", "x"} {
		if err := s.Store(ctx, k, []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.Load(ctx, "a/c/d"); err != nil || string(v) != "v-a/c/d" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	if !s.Exists(ctx, "x") || s.Exists(ctx, "a") {
		t.Fatal("Exists disagrees with what was stored")
	}
	if ki, err := s.Stat(ctx, "x"); err != nil || ki.Size != 3 || !ki.IsTerminal || ki.Modified.IsZero() {
		t.Fatalf("Stat = %+v, %v", ki, err)
	}
	list := func(recursive bool) []string {
		got, err := s.List(ctx, "a", recursive)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	if got := list(false); !slices.Equal(got, []string{"a/b", "a/c"}) {
		t.Fatalf("List(a) = %q", got)
	}
	if got := list(true); !slices.Equal(got, []string{"a/b", "a/c/d", "a/c/e"}) {
		t.Fatalf("List(a, recursive) = %q", got)
	}
	if err := s.Delete(ctx, "a/c"); err != nil {
		t.Fatal(err)
	}
	if got := list(true); !slices.Equal(got, []string{"a/b"}) {
		t.Fatalf("after Delete(a/c): %q", got)
	}
	// The prefix keeps applications apart.
	other := newStorage(t, r, Options{KeyPrefix: "q"})
	if other.Exists(ctx, "x") {
		t.Fatal("key visible under another prefix")
	}
}

func TestLockExcludesAndLeaseExpires(t *testing.T) {
	r := interop.StartRedis(t, interop.RedisOptions{})
	// A lease is time itself; renewing ten times per lease leaves a wide
	// margin for a busy machine.
	opts := Options{LockTTL: 2 * time.Second, LockRefresh: 200 * time.Millisecond, LockPoll: 50 * time.Millisecond}
	a, b := newStorage(t, r, opts), newStorage(t, r, opts)
	ctx := context.Background()

	if err := a.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// a keeps renewing: b cannot take the lock for several lease lengths.
	short, cancel := context.WithTimeout(ctx, 2*opts.LockTTL)
	defer cancel()
	if err := b.Lock(short, "n"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b.Lock while a renews: %v, want deadline exceeded", err)
	}

	// a stops renewing without releasing (as a paused or dead holder
	// does): the lease expires and b gets the lock.
	a.mu.Lock()
	h := a.locks[a.lockKey("n")]
	a.mu.Unlock()
	h.stop()
	<-h.done
	if err := b.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// a's Unlock is compare-and-delete: it must not free b's lease.
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Fatalf("Unlock of an expired lease: %v", err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 2*opts.LockTTL)
	defer cancel2()
	c := newStorage(t, r, opts)
	if err := c.Lock(short2, "n"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("c took the lock b holds after a's late Unlock: %v", err)
	}
	if err := b.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
}

// Conditional writes: of writers that read one version, one wins; a stale
// one is refused; plain Store and Load still see the value.
func TestStoreIfVersion(t *testing.T) {
	r := interop.StartRedis(t, interop.RedisOptions{})
	a := newStorage(t, r, Options{KeyPrefix: "p"})
	b := newStorage(t, r, Options{KeyPrefix: "p"})
	ctx := context.Background()
	if err := a.StoreIfVersion(ctx, "s", []byte("v1"), 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.StoreIfVersion(ctx, "s", []byte("v2"), 1, 2); err != nil {
		t.Fatal(err)
	}
	if err := a.StoreIfVersion(ctx, "s", []byte("late"), 1, 2); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("stale write: %v, want fs.ErrExist", err)
	}
	if v, ver, err := a.LoadVersioned(ctx, "s"); err != nil || string(v) != "v2" || ver != 2 {
		t.Fatalf("LoadVersioned = %q, %d, %v", v, ver, err)
	}
	if v, err := b.Load(ctx, "s"); err != nil || string(v) != "v2" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	if err := a.Store(ctx, "plain", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.StoreIfVersion(ctx, "plain", []byte("y"), 0, 1); err != nil {
		t.Fatalf("a value stored without a version is at version 0: %v", err)
	}
}
