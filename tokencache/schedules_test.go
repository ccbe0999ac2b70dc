package tokencache_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/filecas"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The seven schedules of issue 19, each a deterministic interleaving of
// two or three instances over one storage directory, with faults injected
// into single storage calls.

// faulty is leased storage (file system, locks leased on the fake clock)
// whose calls first pass through fault: it may stall (block), fail before
// acting (before), or act and then report a failure (after: an applied
// write whose reply was lost). Lists can be served from a frozen snapshot
// (stale), as an NFS directory cache or a Redis replica serves them.
type faulty struct {
	*leased
	fault atomic.Pointer[func(op, key string) (before, after error)]
	calls sync.Map // op → *atomic.Int64
	stale atomic.Pointer[map[string][]string]
}

// faultyCAS is faulty with filecas's conditional writes.
type faultyCAS struct {
	*faulty
	cas *filecas.Storage
}

func newFaulty(e *env, l *leases, who string) *faulty {
	return &faulty{leased: newLeased(e.dir, l, who)}
}

func newFaultyCAS(e *env, l *leases, who string) *faultyCAS {
	f := newFaulty(e, l, who)
	return &faultyCAS{faulty: f, cas: filecas.New(f.FileStorage)}
}

// newFaultyAs is faulty storage with conditional writes (cas) or without,
// and its faults.
func newFaultyAs(e *env, l *leases, who string, cas bool) (certmagic.Storage, *faulty) {
	if cas {
		s := newFaultyCAS(e, l, who)
		return s, s.faulty
	}
	f := newFaulty(e, l, who)
	return f, f
}

func (s *faulty) setFault(f func(op, key string) (before, after error)) { s.fault.Store(&f) }

func (s *faulty) at(op, key string) (before, after error) {
	n, _ := s.calls.LoadOrStore(op, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	if f := s.fault.Load(); f != nil {
		return (*f)(op, key)
	}
	return nil, nil
}

// count is how many calls of each op were made (and resets).
func (s *faulty) count() map[string]int64 {
	m := map[string]int64{}
	s.calls.Range(func(k, v any) bool {
		m[k.(string)] = v.(*atomic.Int64).Swap(0)
		return true
	})
	return m
}

func (s *faulty) Lock(ctx context.Context, key string) error {
	if b, _ := s.at("lock", key); b != nil {
		return b
	}
	return s.leased.Lock(ctx, key)
}

func (s *faulty) Unlock(ctx context.Context, key string) error {
	s.at("unlock", key)
	return s.leased.Unlock(ctx, key)
}

func (s *faulty) Load(ctx context.Context, key string) ([]byte, error) {
	if b, _ := s.at("load", key); b != nil {
		return nil, b
	}
	return s.leased.Load(ctx, key)
}

func (s *faulty) Store(ctx context.Context, key string, v []byte) error {
	b, a := s.at("store", key)
	if b != nil {
		return b
	}
	if err := s.leased.Store(ctx, key, v); err != nil {
		return err
	}
	return a
}

func (s *faulty) Delete(ctx context.Context, key string) error {
	if b, _ := s.at("delete", key); b != nil {
		return b
	}
	return s.leased.Delete(ctx, key)
}

func (s *faulty) List(ctx context.Context, dir string, rec bool) ([]string, error) {
	if b, _ := s.at("list", dir); b != nil {
		return nil, b
	}
	if m := s.stale.Load(); m != nil {
		if keys, ok := (*m)[dir]; ok {
			return keys, nil
		}
	}
	return s.leased.List(ctx, dir, rec)
}

// freezeList makes later listings of dir return what it holds now.
func (s *faulty) freezeList(t *testing.T, dir string) {
	keys, _ := s.leased.List(context.Background(), dir, false)
	s.stale.Store(&map[string][]string{dir: keys})
}

func (s *faultyCAS) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	if b, _ := s.at("load", key); b != nil {
		return nil, 0, b
	}
	v, ver, err := s.cas.LoadVersioned(ctx, key)
	if err == nil {
		_, _ = s.leased.Load(ctx, key) // the stall hook of leased
	}
	return v, ver, err
}

func (s *faultyCAS) StoreIfVersion(ctx context.Context, key string, v []byte, prev, next int64) error {
	b, a := s.at("store", key)
	if b != nil {
		return b
	}
	if err := s.cas.StoreIfVersion(ctx, key, v, prev, next); err != nil {
		return err
	}
	return a
}

// Interface guards
var (
	_ certmagic.Storage           = (*faulty)(nil)
	_ tokencache.VersionedStorage = (*faultyCAS)(nil)
)

func isState(key string) bool { return strings.HasSuffix(key, "/state.json") }

// once returns a func that reports true the first time only.
func once() func() bool {
	var done atomic.Bool
	return func() bool { return done.CompareAndSwap(false, true) }
}

// Schedule 1: A's listings come from a cache (frozen before B writes);
// A stalls between reading the session under the lock and writing its
// intent, past its lease; B refreshes. With conditional writes A's late
// intent is refused, whatever the listings say. Before: refresh calls 3,
// reuse 1 (with claims alone the stale listing hides B's claims).
func TestScheduleStaleListing(t *testing.T) { bothKinds(t, testScheduleStaleListing) }

func testScheduleStaleListing(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	l := newLeases(e.clk, 10*time.Second)
	stA, stB := newFaultyCAS(e, l, "A"), newFaultyCAS(e, l, "B")
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
	b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stB, true })
	e.login(a)
	mustToken(t, b)
	stA.freezeList(t, e.sessionKey()+"/claims")
	f, stalled, resume := pause()
	release := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(release) // a failing test must not leave A frozen
	first := once()
	stA.setFault(func(op, key string) (error, error) {
		if op == "store" && isState(key) && first() {
			(*f)()
		}
		return nil, nil
	})
	done := make(chan error, 1)
	go func() { done <- a.Refresh(context.Background()) }()
	await(t, "A to stall before its intent", stalled)
	e.clk.Advance(11 * time.Second)
	if err := b.Refresh(context.Background()); err != nil {
		t.Fatalf("B: %v", err)
	}
	fresh := mustToken(t, b)
	release()
	t.Logf("A's refresh: %v", <-done)
	e.clk.Advance(time.Second)
	_ = a.Refresh(context.Background())
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("refresh calls %d, reuse events %d: A presented the refresh token B spent", s.RefreshCalls, s.ReuseEvents)
	}
	if st := a.Status(); st.State != tokencache.StateActive {
		t.Fatalf("A's session %s (%s)", st.State, st.Reason)
	}
	_ = fresh
}

// Schedule 2 (claims): A stalls at its intent's claim past its lease; B
// refreshes; an operator's login on C meets one Load timeout; A resumes.
// Before: C took the timeout for unreadable state, deleted every claim and
// wrote generation 0, so A's late intent was uncontested: reuse 1.
func TestScheduleLoginOverLoadTimeout(t *testing.T) { bothKinds(t, testScheduleLoginOverLoadTimeout) }

func testScheduleLoginOverLoadTimeout(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	l := newLeases(e.clk, 10*time.Second)
	stA, stB, stC := newFaulty(e, l, "A"), newFaulty(e, l, "B"), newFaulty(e, l, "C")
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
	b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stB, true })
	c := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stC, true })
	e.login(a)
	mustToken(t, b)
	f, stalled, resume := pause()
	release := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(release) // a failing test must not leave A frozen
	first := once()
	stA.setFault(func(op, key string) (error, error) {
		if op == "store" && tokencache.IsClaim(key) && first() {
			(*f)()
		}
		return nil, nil
	})
	done := make(chan error, 1)
	go func() { done <- a.Refresh(context.Background()) }()
	await(t, "A to stall at its intent's claim", stalled)
	e.clk.Advance(11 * time.Second)
	if err := b.Refresh(context.Background()); err != nil {
		t.Fatalf("B: %v", err)
	}
	timeout := once()
	stC.setFault(func(op, key string) (error, error) {
		if op == "load" && isState(key) && timeout() {
			return context.DeadlineExceeded, nil
		}
		return nil, nil
	})
	e.clk.Advance(11 * time.Second)
	if err := c.Login(context.Background(), e.passwordLogin()); err != nil {
		t.Fatalf("C's login: %v", err)
	}
	release()
	t.Logf("A's refresh: %v", <-done)
	e.clk.Advance(time.Second)
	_ = a.Refresh(context.Background())
	_ = c.Refresh(context.Background())
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("refresh calls %d, reuse events %d", s.RefreshCalls, s.ReuseEvents)
	}
	if rec := e.stored(); rec["generation"].(float64) < 3 {
		t.Fatalf("generation %v after C's login: reset", rec["generation"])
	}
}

// Schedule 3 (claims): one listing of the claims fails. Before: the
// intent stood as a spent marker and the session was given up.
func TestScheduleOneListingFails(t *testing.T) {
	t.Parallel()
	survivesOneFault(t, false, "one failed listing", func() func(op, key string) (error, error) {
		first := once()
		return func(op, key string) (error, error) {
			if op == "list" && first() {
				return errors.New("injected listing failure"), nil
			}
			return nil, nil
		}
	})
}

// survivesOneFault logs a session in on one instance (with conditional
// writes or claims), injects a fault (made afresh for each kind of
// session) and refreshes twice: the session must stay active, refreshed,
// with no reuse; for a named and a run-time session.
func survivesOneFault(t *testing.T, cas bool, what string, fault func() func(op, key string) (before, after error)) {
	t.Helper()
	for _, runtime := range []bool{false, true} {
		t.Run(map[bool]string{false: "named", true: "runtime"}[runtime], func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.runtime = runtime
			l := newLeases(e.clk, 10*time.Second)
			st, f := newFaultyAs(e, l, "A", cas)
			a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = st, true })
			e.login(a)
			f.setFault(fault())
			_ = a.Refresh(context.Background())
			e.clk.Advance(time.Second)
			_ = a.Refresh(context.Background())
			if st := a.Status(); st.State != tokencache.StateActive {
				t.Fatalf("session %s (%s) after %s", st.State, st.Reason, what)
			}
			if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses == 0 {
				t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
			}
		})
	}
}

// Schedule 4: the intent's Store is applied but reports an error (a Redis
// reply timeout). It is resolved by reading it back (its writer names this
// operation), on either kind of storage. Before: session given up, and the
// claim deleted.
func TestScheduleAmbiguousIntentStore(t *testing.T) {
	t.Parallel()
	for _, cas := range []bool{false, true} {
		for _, readFails := range []bool{false, true} {
			name := map[bool]string{false: "claims", true: "conditional"}[cas]
			if readFails {
				name += ", and the read-back fails"
			}
			t.Run(name, func(t *testing.T) { ambiguousIntent(t, cas, readFails) })
		}
	}
}

// ambiguousIntent is schedule 4 on claims or conditional writes, with the
// read that resolves the write failing too (readFails) or not.
func ambiguousIntent(t *testing.T, cas, readFails bool) {
	t.Parallel()
	survivesOneFault(t, cas, "one ambiguous write", func() func(op, key string) (error, error) {
		first, failRead := once(), new(atomic.Bool)
		return func(op, key string) (error, error) {
			if op == "store" && isState(key) && first() {
				failRead.Store(readFails)
				return nil, errors.New("injected reply timeout after the write")
			}
			if op == "load" && isState(key) && failRead.CompareAndSwap(true, false) {
				return errors.New("injected read failure"), nil
			}
			return nil, nil
		}
	})
}

// Schedule 5 (claims): an outage right after the intent's claim fails the
// state write and the claim's Delete; the instance restarts. Before: the
// new engine stood down on the orphan claim: session given up, 0 refresh
// calls.
func TestScheduleOrphanClaimAcrossRestart(t *testing.T) {
	bothKinds(t, testScheduleOrphanClaimAcrossRestart)
}

func testScheduleOrphanClaimAcrossRestart(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	l := newLeases(e.clk, 10*time.Second)
	st := newFaulty(e, l, "A")
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = st, true })
	e.login(a)
	var down atomic.Bool
	st.setFault(func(op, key string) (error, error) {
		if op == "store" && tokencache.IsClaim(key) {
			down.Store(true)
			return nil, nil
		}
		if down.Load() && (op == "delete" || op == "store") {
			return errors.New("injected outage"), nil
		}
		return nil, nil
	})
	if err := a.Refresh(context.Background()); err == nil {
		t.Fatal("refresh during the outage reported success")
	}
	a.Close()
	restarted := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = newFaulty(e, l, "A2"), true })
	e.clk.Advance(time.Second)
	if err := restarted.Refresh(context.Background()); err != nil {
		t.Fatalf("refresh after restart: %v", err)
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != 1 {
		t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
	}
}

// Schedule 6: the access token has 25 s left and the stored refresh token
// is known to be expired. The refresh token is not presented; the access
// token keeps serving. Before: presented (and a server would kill the
// session), and the access token dropped.
func TestScheduleExpiredRefreshToken(t *testing.T) { bothKinds(t, testScheduleExpiredRefreshToken) }

func testScheduleExpiredRefreshToken(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	a := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.login(a)
	tok := mustToken(t, a)
	a.Close()
	rec := e.stored()
	rec["refresh_expiry"] = e.clk.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)
	e.writeStored(rec)
	b := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.clk.Advance(time.Until(tok.Expiry) - 25*time.Second)
	_ = b.Refresh(context.Background())
	if n := e.srv.Stats().RefreshCalls; n != 0 {
		t.Fatalf("%d refresh calls with an expired refresh token", n)
	}
	if got, err := b.Token(context.Background()); err != nil || got.Value != tok.Value {
		t.Fatalf("Token = %v; want the access token until its own expiry", err)
	}
	if st := b.Status(); st.State != tokencache.StateLoggedOut {
		t.Fatalf("state %s; want logged out (to log in again)", st.State)
	}
}

// memDir is a directory on tmpfs when there is one (the same FileStorage,
// without a disk flush per write), else a temporary directory.
func memDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "tokencache")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// tokenServer is a minimal client_credentials token endpoint.
func tokenServer(t *testing.T) string {
	var n atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": "at-" + strconv.FormatInt(n.Add(1), 10),
			"token_type":   "Bearer", "expires_in": 3600,
		})
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

// Schedule 7 (claims): a client_credentials session (no refresh token, so
// no intents) refreshes 1,000 times; its keys in storage stay bounded.
// Before: one claim per refresh, never pruned.
func TestScheduleKeysStayBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cl, err := oauth.New(oauth.Config{Settings: oauth.Settings{Endpoint: tokenServer(t) + "/token", ClientID: "c", ClientSecret: "s"}})
	if err != nil {
		t.Fatal(err)
	}
	st := &certmagic.FileStorage{Path: memDir(t)}
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy, cfg.Backend, cfg.Login = st, true, cl, cl.Login() })
	for i := range 1000 {
		if err := a.Refresh(context.Background()); err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
	}
	keys, err := st.List(context.Background(), tokencache.StoragePrefix+"/test", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 10 {
		t.Fatalf("%d keys for one session after 1,000 refreshes: %v", len(keys), keys[:10])
	}
}

// A steady-state refresh costs at most 6 storage calls with conditional
// writes (Load, Lock, Load, StoreIfVersion ×2, Unlock); the claims
// fallback's count is logged for comparison.
func TestStorageCallsPerRefresh(t *testing.T) { bothKinds(t, testStorageCallsPerRefresh) }

func testStorageCallsPerRefresh(t *testing.T, runtime bool) {
	for name, cas := range map[string]bool{"claims": false, "conditional": true} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.runtime = runtime
			l := newLeases(e.clk, 10*time.Second)
			st, f := newFaultyAs(e, l, "A", cas)
			a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = st, true })
			e.login(a)
			for range 3 { // the first refresh after a login is steady state too
				e.clk.Advance(time.Second)
				f.count()
				if err := a.Refresh(context.Background()); err != nil {
					t.Fatal(err)
				}
				calls, total := f.count(), int64(0)
				for _, n := range calls {
					total += n
				}
				t.Logf("%d storage calls per refresh: %v", total, calls)
				if cas && total > 6 {
					t.Fatalf("%d storage calls per refresh with conditional writes: %v", total, calls)
				}
			}
		})
	}
}

// A session written by a newer release is refused, with a clear error, by
// every operation (refresh, login, logout), and nothing is overwritten.
func TestNewerFormatIsRefused(t *testing.T) { bothKinds(t, testNewerFormatIsRefused) }

func testNewerFormatIsRefused(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	a := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.login(a)
	a.Close()
	rec := e.stored()
	rec["format"] = 99
	e.writeStored(rec)
	before, _ := os.ReadFile(e.statePath())
	b := e.cache(func(cfg *tokencache.Config) { cfg.Lazy, cfg.Login = true, e.passwordLogin() })
	for name, err := range map[string]error{
		"refresh": b.Refresh(context.Background()),
		"login":   b.Login(context.Background(), e.passwordLogin()),
		"logout":  b.Logout(context.Background()),
		"forget":  b.Forget(context.Background(), "test"),
	} {
		if !errors.Is(err, tokencache.ErrNewerFormat) {
			t.Errorf("%s: %v; want ErrNewerFormat", name, err)
		}
	}
	if after, _ := os.ReadFile(e.statePath()); string(after) != string(before) {
		t.Fatal("a record of a newer format was overwritten")
	}
	if s := e.srv.Stats(); s.RefreshCalls != 0 || s.Logins != 1 {
		t.Fatalf("refresh calls %d, logins %d", s.RefreshCalls, s.Logins)
	}
}
