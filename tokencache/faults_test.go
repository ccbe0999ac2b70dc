package tokencache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// leases is a lock service whose locks expire, judged on the test's fake
// clock: a holder that stalls past the TTL loses its lock without knowing,
// as with a TTL lock in redis or a stale lock file on a shared disk.
type leases struct {
	clk  *fakeClock
	ttl  time.Duration
	mu   sync.Mutex
	held map[string]lease
}

type lease struct {
	holder string
	until  time.Time
}

func newLeases(clk *fakeClock, ttl time.Duration) *leases {
	return &leases{clk: clk, ttl: ttl, held: map[string]lease{}}
}

func (l *leases) tryAcquire(key, who string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	if cur, ok := l.held[key]; ok && cur.holder != who && now.Before(cur.until) {
		return false
	}
	l.held[key] = lease{holder: who, until: now.Add(l.ttl)}
	return true
}

func (l *leases) release(key, who string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[key].holder == who {
		delete(l.held, key)
	}
}

func (l *leases) holds(who string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, cur := range l.held {
		if cur.holder == who && l.clk.Now().Before(cur.until) {
			return true
		}
	}
	return false
}

// leased is FileStorage whose locks come from leases. stall, when set, is
// called once, right after this instance read the session state while
// holding the lock: a VM freeze or GC pause between reading and writing.
type leased struct {
	*certmagic.FileStorage
	l       *leases
	who     string
	stall   atomic.Pointer[func()]
	skip    atomic.Int32           // reads of the record under the lock to let pass before stalling
	locking atomic.Pointer[func()] // called once when Lock is entered
}

func newLeased(dir string, l *leases, who string) *leased {
	return &leased{FileStorage: &certmagic.FileStorage{Path: dir}, l: l, who: who}
}

func (s *leased) Lock(ctx context.Context, key string) error {
	if f := s.locking.Swap(nil); f != nil {
		(*f)()
	}
	tick := time.NewTicker(time.Millisecond) // polls, as FileStorage does
	defer tick.Stop()
	for !s.l.tryAcquire(key, s.who) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func (s *leased) Unlock(_ context.Context, key string) error {
	s.l.release(key, s.who)
	return nil
}

func (s *leased) Load(ctx context.Context, key string) ([]byte, error) {
	data, err := s.FileStorage.Load(ctx, key)
	if strings.HasSuffix(key, "/state.json") && s.l.holds(s.who) && s.stall.Load() != nil && s.skip.Add(-1) < 0 {
		if f := s.stall.Swap(nil); f != nil {
			(*f)()
		}
	}
	return data, err
}

// stallingBackend pauses once after the token server answered, before the
// engine sees the answer: a stall between presenting and storing.
type stallingBackend struct {
	tokencache.Backend
	stall atomic.Pointer[func()]
}

func (b *stallingBackend) Refresh(ctx context.Context, key *dpop.Key, rt string) (*tokencache.Grant, error) {
	g, err := b.Backend.Refresh(ctx, key, rt)
	if f := b.stall.Swap(nil); f != nil {
		(*f)()
	}
	return g, err
}

// pause returns a stall func and channels to see it start and end it.
func pause() (f *func(), stalled, resume chan struct{}) {
	stalled, resume = make(chan struct{}), make(chan struct{})
	fn := func() {
		close(stalled)
		<-resume
	}
	return &fn, stalled, resume
}

func await(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// Hole 5: an instance that stalls while holding the lock, longer than the
// lock's lease, must neither present a refresh token the other instance
// spent meanwhile nor overwrite the newer record.
func TestStalledLockHolderIsFenced(t *testing.T) { bothKinds(t, testStalledLockHolderIsFenced) }

func testStalledLockHolderIsFenced(t *testing.T, runtime bool) {
	// A stall right after the re-read, and one between the fence's read and
	// the intent's write (certmagic storage has no compare-and-swap, so the
	// read-back alone cannot see that the intent overwrote newer state).
	for name, skip := range map[string]int32{"stall after the re-read": 0, "stall between the fence and the intent": 1} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.runtime = runtime
			l := newLeases(e.clk, 10*time.Second)
			stA, stB := newLeased(e.dir, l, "A"), newLeased(e.dir, l, "B")
			a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
			b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stB, true })
			e.login(a)
			old := mustToken(t, a)
			if mustToken(t, b).Value != old.Value {
				t.Fatal("B did not adopt the stored session")
			}
			f, stalled, resume := pause()
			stA.skip.Store(skip)
			stA.stall.Store(f)
			done := make(chan error, 1)
			go func() { done <- a.Refresh(context.Background()) }()
			await(t, "A to stall under the lock", stalled)
			e.clk.Advance(11 * time.Second) // A's lease runs out while it is frozen
			if err := b.Refresh(context.Background()); err != nil {
				t.Fatalf("B could not refresh while A was frozen: %v", err)
			}
			fresh := mustToken(t, b)
			close(resume)
			<-done
			if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshCalls != 1 {
				t.Fatalf("refresh calls %d, reuse events %d: the frozen instance presented a spent token", s.RefreshCalls, s.ReuseEvents)
			}
			if skip == 0 {
				if got := mustToken(t, a); got.Value != fresh.Value {
					t.Fatal("A did not adopt B's token after losing the lock")
				}
				if rec := e.stored(); rec["state"] != tokencache.StateActive || rec["access_token"] != fresh.Value {
					t.Fatalf("stored state %v: B's refresh was overwritten", rec["state"])
				}
				return
			}
			// A's intent overwrote B's refresh and stands as a spent
			// marker (or A already gave the session up over it): the
			// token is never presented twice.
			if rec := e.stored(); rec["intent"] == nil && rec["state"] != tokencache.StateLoggedOut {
				t.Fatalf("stored record %v has no intent: A's late write left no trace", rec)
			}
			_ = b.Refresh(context.Background())
			if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshCalls != 1 {
				t.Fatalf("refresh calls %d, reuse events %d after the overwrite", s.RefreshCalls, s.ReuseEvents)
			}
		})
	}
	t.Run("stall after presenting", func(t *testing.T) {
		e := newEnv(t)
		e.runtime = runtime
		l := newLeases(e.clk, 10*time.Second)
		stA, stB := newLeased(e.dir, l, "A"), newLeased(e.dir, l, "B")
		slow := &stallingBackend{Backend: e.backend(e.cl)}
		a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy, cfg.Backend = stA, true, slow })
		b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stB, true })
		e.login(a)
		mustToken(t, b)
		f, stalled, resume := pause()
		slow.stall.Store(f)
		done := make(chan error, 1)
		go func() { done <- a.Refresh(context.Background()) }()
		await(t, "A to stall after presenting", stalled)
		e.clk.Advance(11 * time.Second)
		// B finds A's unresolved intent: the token may be spent, so B gives
		// it up rather than present it.
		_ = b.Refresh(context.Background())
		close(resume)
		<-done
		if s := e.srv.Stats(); s.ReuseEvents != 0 {
			t.Fatalf("reuse events %d", s.ReuseEvents)
		}
		if rec := e.stored(); rec["state"] != tokencache.StateLoggedOut {
			t.Fatalf("stored state %v: the frozen instance overwrote newer state with its late result", rec["state"])
		}
		if st := a.Status(); st.State != tokencache.StateLoggedOut {
			t.Fatalf("A state %s; want it to follow storage", st.State)
		}
	})
	// A stall between the fence of the result's write and the write: A's
	// late result overwrites B's giving-up and B's new login. It stays as
	// written (rewriting it would reopen the same gap), so the next
	// refresh finds B's claims and gives the session up: a login, never a
	// reuse.
	t.Run("stall between the fence and the result", func(t *testing.T) {
		e := newEnv(t)
		e.runtime = runtime
		l := newLeases(e.clk, 10*time.Second)
		stA, stB := newLeased(e.dir, l, "A"), newLeased(e.dir, l, "B")
		a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
		b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy, cfg.Login = stB, true, e.passwordLogin() })
		e.login(a)
		mustToken(t, b)
		f, stalled, resume := pause()
		stA.skip.Store(3) // the re-read, the intent's fence, its read-back
		stA.stall.Store(f)
		done := make(chan error, 1)
		go func() { done <- a.Refresh(context.Background()) }()
		await(t, "A to stall before storing its result", stalled)
		e.clk.Advance(11 * time.Second)
		// B finds A's intent, gives the token up and logs in again.
		_ = b.Refresh(context.Background())
		close(resume)
		if err := <-done; err != nil {
			t.Fatalf("A's refresh: %v", err)
		}
		_ = a.Refresh(context.Background())
		_ = b.Refresh(context.Background())
		if s := e.srv.Stats(); s.ReuseEvents != 0 {
			t.Fatalf("refresh calls %d, reuse events %d", s.RefreshCalls, s.ReuseEvents)
		}
	})
}

// Hole 2: a Retry-After of a day is capped at MaxBackoff and at the end of
// the token's usable life, and a caller with no valid token meanwhile
// adopts a token another instance stored.
func TestRetryAfterIsCappedAndStorageIsPeeked(t *testing.T) {
	bothKinds(t, testRetryAfterIsCappedAndStorageIsPeeked)
}

func testRetryAfterIsCappedAndStorageIsPeeked(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	direct, err := prelude.New(e.srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	slow := func(cfg *tokencache.Config) {
		cfg.Lazy, cfg.MinBackoff, cfg.MaxBackoff = true, time.Second, 2*time.Minute
	}
	a := e.cache(func(cfg *tokencache.Config) { slow(cfg); cfg.Backend = e.backend(direct) })
	b := e.cache(slow) // through the gate
	e.login(a)
	tok := mustToken(t, b)
	e.gate.retryAfter.Store(86400)
	e.gate.fail(true)

	// With a valid token: the retry comes before the token runs out.
	_ = b.Refresh(context.Background())
	if next := b.Status().NextRefresh; next == nil || next.After(tok.Expiry) {
		t.Fatalf("next attempt %v is after the token expires (%v)", next, tok.Expiry)
	}
	// Without one: capped at MaxBackoff, and shown.
	e.clk.Advance(time.Until(tok.Expiry))
	if _, err := b.Token(context.Background()); err == nil {
		t.Fatal("got a token with the token server down and the token expired")
	}
	next := b.Status().NextRefresh
	if next == nil || !next.After(e.clk.Now()) || next.Sub(e.clk.Now()) > 2*time.Minute {
		t.Fatalf("next attempt %v, now %v: want within MaxBackoff", next, e.clk.Now())
	}
	// Another instance refreshes; B, still backing off, finds its token.
	fresh := mustToken(t, a)
	e.clk.Advance(time.Second)
	got, err := b.Token(context.Background())
	if err != nil || got.Value != fresh.Value {
		t.Fatalf("B did not adopt the token A stored while backing off: %v", err)
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("reuse events %d", s.ReuseEvents)
	}
}

// crashMidRefresh leaves the state an instance that crashed after
// presenting its refresh token leaves: the intent written, and the token
// really spent at the server.
func crashMidRefresh(t *testing.T, e *env) (spent string) {
	t.Helper()
	rec := e.stored()
	spent = rec["refresh_token"].(string)
	pem, err := os.ReadFile(filepath.Join(e.sessionPath(), "keys", certmagic.StorageKeys.Safe(rec["key_thumbprint"].(string))+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := dpop.ParseKeyPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	// The other client is this session's: same key, same device.
	ctx := tokencache.ContextWithDeviceID(context.Background(), rec["device_id"].(string))
	if _, err := e.cl.Refresh(ctx, key, spent); err != nil {
		t.Fatal(err)
	}
	rec["intent"] = intentFor(t, spent)
	e.writeStored(rec)
	return spent
}

// Hole 3: logout and login honour an unresolved intent: the possibly spent
// refresh token is not presented, neither to revoke nor as the previous one.
func TestLogoutAndLoginHonourTheIntent(t *testing.T) { bothKinds(t, testLogoutAndLoginHonourTheIntent) }

func testLogoutAndLoginHonourTheIntent(t *testing.T, runtime bool) {
	t.Run("logout", func(t *testing.T) {
		e := newEnv(t)
		e.runtime = runtime
		c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
		e.login(c)
		c.Close()
		crashMidRefresh(t, e)
		c = e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
		if err := c.Logout(context.Background()); err != nil {
			t.Fatal(err)
		}
		if s := e.srv.Stats(); s.ReuseEvents != 0 {
			t.Fatalf("logout presented the spent refresh token (reuse events %d)", s.ReuseEvents)
		}
		if st := c.Status(); st.State != tokencache.StateLoggedOut || st.AutoLogin {
			t.Fatalf("status after logout %+v", st)
		}
	})
	t.Run("login", func(t *testing.T) {
		e := newEnv(t)
		e.runtime = runtime
		c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
		e.login(c)
		c.Close()
		spent := crashMidRefresh(t, e)
		c = e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
		var prev string
		login := e.passwordLogin()
		err := c.Login(context.Background(), func(ctx context.Context, key *dpop.Key, p string) (*tokencache.Grant, error) {
			prev = p
			return login(ctx, key, p)
		})
		if err != nil {
			t.Fatal(err)
		}
		if prev == spent {
			t.Fatal("login sent the possibly spent refresh token as the previous one")
		}
		if s := e.srv.Stats(); s.ReuseEvents != 0 {
			t.Fatalf("reuse events %d", s.ReuseEvents)
		}
	})
}

// Hole 4: a token that arrives already expired is stored (its refresh
// token is the live one) but not handed out, the refresher backs off
// instead of spinning, and the session is not reported logged out.
func TestUnusableTokenOnArrivalBacksOff(t *testing.T) {
	bothKinds(t, testUnusableTokenOnArrivalBacksOff)
}

func testUnusableTokenOnArrivalBacksOff(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(func(cfg *tokencache.Config) { cfg.MinBackoff, cfg.MaxBackoff = time.Second, 2*time.Minute })
	e.login(c)
	tok := mustToken(t, c)
	expired := -10 * time.Second
	e.gate.expireIn.Store(&expired)
	e.clk.Advance(time.Until(tok.Expiry) + time.Second) // refresh due, token gone
	// Ten seconds of engine time in small steps, letting the loop act.
	for range 100 {
		waitFor(t, "refresher idle", 10*time.Second, e.waiting)
		e.clk.Advance(100 * time.Millisecond)
	}
	s := e.srv.Stats()
	if s.RefreshCalls > 8 || s.RefreshCalls < 2 {
		t.Fatalf("%d refreshes in 10 s for tokens that arrive expired; want a few, backing off", s.RefreshCalls)
	}
	if s.ReuseEvents != 0 {
		t.Fatalf("reuse events %d: a rotated refresh token was dropped", s.ReuseEvents)
	}
	_, err := c.Token(context.Background())
	var ue *tokencache.UnavailableError
	if !errors.As(err, &ue) || errors.Is(err, tokencache.ErrLoggedOut) || ue.State != tokencache.StateActive {
		t.Fatalf("Token = %v; want unavailable, active, not logged out", err)
	}
	if st := c.Status(); st.State != tokencache.StateActive {
		t.Fatalf("state %s", st.State)
	}
	// Every rotation was stored: the session goes on once tokens are sane.
	e.gate.expireIn.Store(nil)
	e.advanceUntil("a usable token", 500*time.Millisecond, func() bool {
		_, err := c.Token(context.Background())
		return err == nil
	})
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("reuse events %d", s.ReuseEvents)
	}
}

// Hole 6: a refreshed grant that could not be stored is written by Close,
// or taken over by the cache that replaces this one on a reload.
func TestPendingGrantSurvivesCloseAndRebuild(t *testing.T) {
	t.Parallel()
	t.Run("close stores it", func(t *testing.T) {
		e := newEnv(t)
		flaky := &scriptedStorage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
		a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = flaky, true })
		e.login(a)
		flaky.set(false, true, true, true) // intent stored, the result not
		if err := a.Refresh(context.Background()); err == nil {
			t.Fatal("refresh whose result could not be stored reported success")
		}
		a.Close()
		b := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
		if st := b.Status(); st.State != tokencache.StateActive {
			t.Fatalf("after Close the session is %s (%s): the refreshed grant was dropped", st.State, st.Reason)
		}
		if err := b.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != 2 {
			t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
		}
	})
	t.Run("rebuilt cache takes it over", func(t *testing.T) {
		e := newEnv(t)
		flaky := &scriptedStorage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
		a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = flaky, true })
		e.login(a)
		flaky.set(false, true, true, true, true, true, true) // and Close cannot store it either
		_ = a.Refresh(context.Background())
		n, err := tokencache.New(tokencache.Config{Name: "test", Storage: &certmagic.FileStorage{Path: e.dir},
			Backend: e.backend(e.cl), Clock: e.clk, RefreshBefore: 2 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		n.TakeOver(a)
		n.Start()
		waitFor(t, "the grant stored by the new cache", 10*time.Second, func() bool {
			return n.Status().LastOutcome == tokencache.OutcomeRefreshed
		})
		if st := n.Status(); st.State != tokencache.StateActive {
			t.Fatalf("state %s (%s)", st.State, st.Reason)
		}
		if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != 1 {
			t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
		}
	})
}

// Hole 7: Close does not wait out the lock timeout for an operation that is
// only queued for the lock and has sent nothing.
func TestCloseCancelsAnOperationWaitingForTheLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := newLeases(e.clk, time.Hour)
	st := newLeased(e.dir, l, "A")
	c := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy, cfg.LockTimeout = st, true, time.Hour })
	e.login(c)
	if !l.tryAcquire("inject_token_test", "another instance") {
		t.Fatal("lock taken")
	}
	queued := make(chan struct{})
	f := func() { close(queued) }
	st.locking.Store(&f)
	go func() { _ = c.Refresh(context.Background()) }()
	await(t, "the refresh to queue for the lock", queued)
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	await(t, "Close (it waited for the storage lock)", closed)
	if n := e.srv.Stats().RefreshCalls; n != 0 {
		t.Fatalf("%d refreshes sent", n)
	}
}

// Rejected credentials: retried a few times with backoff, then automatic
// login pauses (login_failed) until the credentials change.
func TestRejectedCredentialsPauseAutoLogin(t *testing.T) {
	bothKinds(t, testRejectedCredentialsPauseAutoLogin)
}

func testRejectedCredentialsPauseAutoLogin(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	var password atomic.Value
	password.Store("wrong")
	var attempts atomic.Int64
	// A password login whose rejection carries ErrCredentialsRejected, as
	// the prelude backend reports it.
	login := func(ctx context.Context, key *dpop.Key, prev string) (*tokencache.Grant, error) {
		attempts.Add(1)
		g, err := prelude.PasswordLogin(e.cl, demoEmail, password.Load().(string))(ctx, key, prev)
		if err != nil && !errors.Is(err, tokencache.ErrCredentialsRejected) && errors.Is(err, tokencache.ErrSessionDead) {
			err = fmt.Errorf("%w: %w", tokencache.ErrCredentialsRejected, err)
		}
		return e.clk.shift(g), err
	}
	var states []string
	var mu sync.Mutex
	c := e.cache(func(cfg *tokencache.Config) {
		cfg.Login = login
		cfg.Observe = func(ev tokencache.Event) {
			if ev.Kind == tokencache.EventState {
				mu.Lock()
				states = append(states, ev.State)
				mu.Unlock()
			}
		}
	})
	e.advanceUntil("login_failed", 50*time.Millisecond, func() bool { return c.Status().State == tokencache.StateLoginFailed })
	for range 50 {
		e.clk.Advance(time.Minute)
	}
	if n := attempts.Load(); n != 3 {
		t.Fatalf("%d login attempts with rejected credentials; want 3 then a pause", n)
	}
	if st := c.Status(); st.AutoLogin || st.LastError == "" {
		t.Fatalf("status %+v", st)
	}
	mu.Lock()
	saw := strings.Join(states, ",")
	mu.Unlock()
	if !strings.Contains(saw, tokencache.StateLoginFailed) {
		t.Fatalf("state events %s", saw)
	}
	// A reload with the right password resumes.
	password.Store(demoPassword)
	c.ResumeLogin()
	e.advanceUntil("login", 50*time.Millisecond, func() bool { return c.Status().State == tokencache.StateActive })
}

// Invalidate: the rejected token keeps serving while the refresh fails (no
// 503 for everyone), a burst of rejections counts once, and after a lost
// refresh the rejected token is not re-installed.
func TestInvalidatedTokenServesUntilReplaced(t *testing.T) {
	bothKinds(t, testInvalidatedTokenServesUntilReplaced)
}

func testInvalidatedTokenServesUntilReplaced(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.login(c)
	tok := mustToken(t, c)
	e.gate.fail(true)
	if !c.Invalidate(tok.Value) {
		t.Fatal("first Invalidate did not mark the token")
	}
	for range 4 {
		if c.Invalidate(tok.Value) {
			t.Fatal("a burst of 401s on one token marked it more than once")
		}
	}
	for range 5 {
		if got, err := c.Token(context.Background()); err != nil || got.Value != tok.Value {
			t.Fatalf("while the refresh fails, Token = %v; want the rejected token (the upstream judges)", err)
		}
	}
	// A lost refresh must not bring the rejected token back.
	e.gate.fail(false)
	e.srv.DropAfterRotate(1)
	e.clk.Advance(time.Minute / 4) // past the backoff, token still valid
	waitFor(t, "the lost refresh", 10*time.Second, func() bool {
		_, _ = c.Token(context.Background())
		return c.Status().LastOutcome == tokencache.OutcomeUnknown
	})
	if got, err := c.Token(context.Background()); err == nil && got.Value == tok.Value {
		t.Fatal("the rejected token was re-installed after the lost refresh")
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 {
		t.Fatalf("reuse events %d", s.ReuseEvents)
	}
}

// Hole 1, engine side: whatever a backend makes of a 5xx, the engine
// obeys its class. A failure that proves the server did not act keeps the
// refresh token (the gate's 503 with Retry-After), an unknown outcome
// gives it up (rotate-then-drop), and an injected 500 is either: in no
// case is a refresh token presented twice. (The backends' classification
// of 500/502/504 after a rotation is tested end to end in prelude/.)
func TestServerFaultsNeverCauseReuse(t *testing.T) { bothKinds(t, testServerFaultsNeverCauseReuse) }

func testServerFaultsNeverCauseReuse(t *testing.T, runtime bool) {
	faults := map[string]func(e *env){
		"503 with Retry-After": func(e *env) { e.gate.fail(true) },
		"rotate then drop":     func(e *env) { e.srv.DropAfterRotate(1) },
		"500":                  func(e *env) { e.srv.FailRefreshes(1) },
	}
	for name, inject := range faults {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.runtime = runtime
			c := e.cache(func(cfg *tokencache.Config) {
				cfg.Lazy = true
				cfg.Login = e.passwordLogin()
			})
			e.login(c)
			inject(e)
			_ = c.Refresh(context.Background())
			e.gate.fail(false)
			for range 3 {
				e.clk.Advance(time.Second)
				_ = c.Refresh(context.Background())
			}
			if s := e.srv.Stats(); s.ReuseEvents != 0 {
				t.Fatalf("reuse events %d", s.ReuseEvents)
			}
			if _, err := c.Token(context.Background()); err != nil {
				t.Fatalf("the session did not survive: %v", err)
			}
		})
	}
}
