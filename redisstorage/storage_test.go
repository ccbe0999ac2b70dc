package redisstorage

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/internal/redistest"
)

// newStorage is a Storage on a client of its own (not the pool's), so two
// of them are two Redis clients as two Caddy instances would be.
func newStorage(t *testing.T, addr, prefix string, lt leaseTimes) *Storage {
	t.Helper()
	c := newConn(connID{Address: addr, Timeout: 5 * time.Second}, zap.NewNop())
	t.Cleanup(func() { c.Destruct() })
	if lt == (leaseTimes{}) {
		lt = leaseTimes{ttl: DefaultLockTTL, renew: DefaultLockRefresh, poll: DefaultLockPoll}
	}
	return &Storage{conn: c, prefix: prefix, lease: lt}
}

func TestStorageContract(t *testing.T) {
	addr := redistest.Start(t)
	s := newStorage(t, addr, "p", leaseTimes{})
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
	if !s.Exists(ctx, "x") || !s.Exists(ctx, "a/c") || s.Exists(ctx, "y") {
		t.Fatal("Exists disagrees with what was stored")
	}
	if ki, err := s.Stat(ctx, "x"); err != nil || ki.Size != 3 || !ki.IsTerminal || ki.Modified.IsZero() {
		t.Fatalf("Stat(x) = %+v, %v", ki, err)
	}
	if ki, err := s.Stat(ctx, "a/c"); err != nil || ki.IsTerminal {
		t.Fatalf("Stat of a directory = %+v, %v; want not terminal", ki, err)
	}
	list := func(dir string, recursive bool) []string {
		got, err := s.List(ctx, dir, recursive)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	if got := list("a", false); !slices.Equal(got, []string{"a/b", "a/c"}) {
		t.Fatalf("List(a) = %q", got)
	}
	if got := list("a", true); !slices.Equal(got, []string{"a/b", "a/c/d", "a/c/e"}) {
		t.Fatalf("List(a, recursive) = %q", got)
	}
	if got := list("", false); !slices.Equal(got, []string{"a", "x"}) {
		t.Fatalf("List(root) = %q", got)
	}
	if err := s.Delete(ctx, "a/c"); err != nil {
		t.Fatal(err)
	}
	if got := list("a", true); !slices.Equal(got, []string{"a/b"}) {
		t.Fatalf("after Delete(a/c): %q", got)
	}
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	// The emptied directories leave the index as well.
	if got := list("", false); !slices.Equal(got, []string{"x"}) || s.Exists(ctx, "a") {
		t.Fatalf("after deleting all of a: root lists %q", got)
	}
	if err := s.Delete(ctx, "never-stored"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	// The prefix keeps applications apart.
	if other := newStorage(t, addr, "q", leaseTimes{}); other.Exists(ctx, "x") {
		t.Fatal("key visible under another prefix")
	}
}

// The common Caddy Redis module's layout, written here by hand as it
// writes it: an envelope (flate-compressed value) and the directory sets.
// This storage reads and lists it, and what it stores reads back the same.
func TestCommonModuleLayout(t *testing.T) {
	addr := redistest.Start(t)
	s := newStorage(t, addr, "caddy", leaseTimes{})
	rc := s.conn.client
	ctx := context.Background()

	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, flate.DefaultCompression)
	w.Write([]byte("-----BEGIN CERTIFICATE-----"))
	w.Close()
	env, _ := json.Marshal(map[string]any{"value": z.Bytes(), "modified": time.Now(), "size": 27, "compression": 1, "encryption": 0})
	rc.Set(ctx, "caddy/certificates/acme/example.com/example.com.crt", env, 0)
	rc.ZAdd(ctx, "caddy/certificates/acme/example.com", redisZ("example.com.crt"))
	rc.ZAdd(ctx, "caddy/certificates/acme", redisZ("example.com/"))
	rc.ZAdd(ctx, "caddy/certificates", redisZ("acme/"))
	rc.ZAdd(ctx, "caddy", redisZ("certificates/"))

	if v, err := s.Load(ctx, "certificates/acme/example.com/example.com.crt"); err != nil || string(v) != "-----BEGIN CERTIFICATE-----" {
		t.Fatalf("Load of the common module's compressed value = %q, %v", v, err)
	}
	if got, err := s.List(ctx, "certificates", true); err != nil || !slices.Equal(got, []string{"certificates/acme/example.com/example.com.crt"}) {
		t.Fatalf("List = %q, %v", got, err)
	}

	// What this storage writes is indexed the same way.
	if err := s.StoreIfVersion(ctx, "inject_token/s1/state.json", []byte("{}"), 0, 1); err != nil {
		t.Fatal(err)
	}
	for set, member := range map[string]string{"caddy": "inject_token/", "caddy/inject_token": "s1/", "caddy/inject_token/s1": "state.json"} {
		if _, err := rc.ZScore(ctx, set, member).Result(); err != nil {
			t.Errorf("%q not in the directory set %q: %v", member, set, err)
		}
	}
	var e map[string]any
	b, _ := rc.Get(ctx, "caddy/inject_token/s1/state.json").Bytes()
	if err := json.Unmarshal(b, &e); err != nil || e["value"] != "e30=" || e["size"] != 2.0 || e["version"] != 1.0 {
		t.Fatalf("stored envelope %s: %v", b, err)
	}
}

// Conditional writes: of 16 writers that read one version, exactly one
// wins; a stale one is refused and leaves the winner's value; a missing
// key, or one stored without a version, is version 0.
func TestStoreIfVersionRace(t *testing.T) {
	addr := redistest.Start(t)
	s := newStorage(t, addr, "p", leaseTimes{})
	ctx := context.Background()
	if err := s.StoreIfVersion(ctx, "s", []byte("v1"), 0, 1); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		winners  []int
		conflict int
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			w := newStorage(t, addr, "p", leaseTimes{}) // one client each
			<-start
			err := w.StoreIfVersion(ctx, "s", []byte{byte('a' + i)}, 1, 2)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winners = append(winners, i)
			case errors.Is(err, fs.ErrExist):
				conflict++
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(winners) != 1 || conflict != n-1 {
		t.Fatalf("winners %v, conflicts %d; want exactly one winner", winners, conflict)
	}
	v, ver, err := s.LoadVersioned(ctx, "s")
	if err != nil || ver != 2 || !bytes.Equal(v, []byte{byte('a' + winners[0])}) {
		t.Fatalf("LoadVersioned = %q, %d, %v; want the winner's value at version 2", v, ver, err)
	}
	if err := s.StoreIfVersion(ctx, "s", []byte("late"), 1, 2); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("stale write: %v, want fs.ErrExist", err)
	}
	if v2, _ := s.Load(ctx, "s"); !bytes.Equal(v2, v) {
		t.Fatalf("a refused write changed the value to %q", v2)
	}
	if err := s.StoreIfVersion(ctx, "new", []byte("x"), 3, 4); !errors.Is(err, fs.ErrExist) || s.Exists(ctx, "new") {
		t.Fatalf("write at version 3 over a missing key: %v (exists %v)", err, s.Exists(ctx, "new"))
	}
	if err := s.Store(ctx, "plain", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreIfVersion(ctx, "plain", []byte("y"), 0, 1); err != nil {
		t.Fatalf("a value stored without a version is at version 0: %v", err)
	}
}

func redisZ(member string) redis.Z { return redis.Z{Score: float64(time.Now().Unix()), Member: member} }
