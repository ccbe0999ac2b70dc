package tokencache_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

const (
	demoEmail    = "demo@example.com"
	demoPassword = "demo-password"
)

// env is one sandbox plus a storage directory shared by the caches built on it.
type env struct {
	t   *testing.T
	srv *sandboxtest.Server
	cl  *prelude.Client
	dir string
}

func newEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: ttl})
	cl, err := prelude.New(srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, cl: cl, dir: t.TempDir()}
}

// cache builds a cache on its own FileStorage instance over the shared
// directory, as a separate Caddy instance would.
func (e *env) cache(mod func(*tokencache.Config)) *tokencache.Cache {
	e.t.Helper()
	cfg := tokencache.Config{
		Name:       "test",
		Storage:    &certmagic.FileStorage{Path: e.dir},
		Backend:    prelude.Backend{Client: e.cl},
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := tokencache.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	c.Start()
	e.t.Cleanup(c.Close)
	return c
}

func (e *env) login(c *tokencache.Cache) {
	e.t.Helper()
	if err := c.Login(context.Background(), prelude.PasswordLogin(e.cl, demoEmail, demoPassword)); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes; it is a
// deadline on an observable condition, not a sleep for synchronisation.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		<-tick.C
	}
}

func mustToken(t *testing.T, c *tokencache.Cache) *tokencache.Token {
	t.Helper()
	tok, err := c.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestThousandCallersAtExpiryCauseOneRefresh(t *testing.T) {
	e := newEnv(t, 4*time.Second)
	c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.login(c)
	first := mustToken(t, c)
	e.srv.SetRefreshLatency(100 * time.Millisecond) // keep the flight open while callers pile in

	// Wait for the real expiry: the test is about callers arriving then.
	<-time.After(time.Until(first.Expiry))
	before := e.srv.Stats().RefreshCalls

	const n = 1000
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	tokens := make([]*tokencache.Token, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tok, err := c.Token(context.Background())
			if err != nil {
				failed.Add(1)
				return
			}
			tokens[i] = tok
		}()
	}
	close(start)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d callers failed", f)
	}
	if got := e.srv.Stats().RefreshCalls - before; got != 1 {
		t.Fatalf("refresh calls = %d, want exactly 1", got)
	}
	if _, err := e.srv.VerifyAccessToken(tokens[0].Value); err != nil {
		t.Fatalf("token not accepted by the sandbox: %v", err)
	}
	for _, tok := range tokens {
		if tok.Value != tokens[0].Value {
			t.Fatal("callers got different tokens from one refresh")
		}
	}
	if tokens[0].Value == first.Value {
		t.Fatal("callers got the expired token")
	}
	if w := c.Status().WaitCount; w == 0 {
		t.Fatal("expected callers to have waited for the refresh (token was expired)")
	}
}

func TestNoCallerWaitsWhileTokenValid(t *testing.T) {
	// Generous lifetime: the hammering below competes for the CPU with the
	// refresh itself (two cores, race detector).
	e := newEnv(t, 10*time.Second)
	c := e.cache(func(cfg *tokencache.Config) { cfg.RefreshBefore = 5 * time.Second }) // refresh at half-life
	e.login(c)
	first := mustToken(t, c)
	e.srv.SetRefreshLatency(500 * time.Millisecond)

	// Hammer Token until the background refresh (500 ms long) has finished.
	var calls, stale atomic.Int64
	stop := hammer(8, c, func(tok *tokencache.Token, err error, _ time.Time) {
		if err != nil || !tok.Expiry.After(time.Now()) {
			stale.Add(1)
		}
		calls.Add(1)
	})
	waitFor(t, "background refresh", 10*time.Second, func() bool { return e.srv.Stats().RefreshSuccesses >= 1 })
	waitFor(t, "new token installed", 5*time.Second, func() bool { return mustToken(t, c).Value != first.Value })
	stop()
	st := c.Status()
	if st.WaitCount != 0 {
		t.Fatalf("%d callers blocked during a refresh while a valid token existed", st.WaitCount)
	}
	if stale.Load() != 0 {
		t.Fatalf("%d calls got no token or an expired one", stale.Load())
	}
	if calls.Load() < 100 {
		t.Fatalf("only %d calls made during the refresh window; test is not exercising the hot path", calls.Load())
	}
	if got := e.srv.Stats().MaxRefreshInFlight; got != 1 {
		t.Fatalf("max refreshes in flight = %d", got)
	}
}

func TestThreeInstancesShareOneSession(t *testing.T) {
	const lifetimes = 20
	// Sandbox expiries are whole seconds, so a 3 s token lives 2–3 s and is
	// refreshed every 1–1.5 s.
	e := newEnv(t, 3*time.Second)
	var caches []*tokencache.Cache
	for range 3 {
		caches = append(caches, e.cache(func(cfg *tokencache.Config) { cfg.RefreshBefore = 1500 * time.Millisecond }))
	}
	e.login(caches[0])
	for _, c := range caches[1:] {
		if err := c.Refresh(context.Background()); err != nil { // adopts the stored session
			t.Fatal(err)
		}
	}
	base := e.srv.Stats()

	var bad atomic.Int64
	var badErr atomic.Value
	var stops []func()
	for _, c := range caches {
		stops = append(stops, hammer(2, c, func(tok *tokencache.Token, err error, asked time.Time) {
			if err == nil {
				err = validAt(e.srv, tok, asked)
			}
			if err != nil {
				bad.Add(1)
				badErr.Store(err)
			}
		}))
	}
	waitFor(t, "20 refreshes", lifetimes*3*time.Second, func() bool {
		return e.srv.Stats().RefreshSuccesses-base.RefreshSuccesses >= lifetimes
	})
	for _, stop := range stops {
		stop()
	}
	st := e.srv.Stats()
	calls := st.RefreshCalls - base.RefreshCalls
	if calls != st.RefreshSuccesses-base.RefreshSuccesses || calls > lifetimes+1 {
		t.Fatalf("refresh calls = %d for %d refreshes: some instance refreshed twice or failed", calls, lifetimes)
	}
	if st.ReuseEvents != 0 {
		t.Fatalf("refresh token reuse detected %d times", st.ReuseEvents)
	}
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d calls got no valid token; last error: %v", n, badErr.Load())
	}
	var adopted int64
	for _, c := range caches {
		adopted += c.Status().AdoptCount
	}
	if adopted < lifetimes {
		t.Fatalf("adoptions = %d; instances are not sharing refreshed tokens", adopted)
	}
}

func TestRestartUsesStoredSession(t *testing.T) {
	e := newEnv(t, time.Minute)
	c1 := e.cache(nil)
	e.login(c1)
	tok := mustToken(t, c1)
	c1.Close()
	before := e.srv.Stats()

	c2 := e.cache(func(cfg *tokencache.Config) { cfg.Login = prelude.PasswordLogin(e.cl, demoEmail, demoPassword) })
	got := mustToken(t, c2)
	if got.Value != tok.Value {
		t.Fatal("restarted cache did not reuse the stored token")
	}
	if c2.Status().KeyThumbprint != c1.Status().KeyThumbprint {
		t.Fatal("DPoP key changed across restart")
	}
	after := e.srv.Stats()
	if after.Logins != before.Logins || after.RefreshCalls != before.RefreshCalls {
		t.Fatalf("restart caused logins %d→%d, refreshes %d→%d", before.Logins, after.Logins, before.RefreshCalls, after.RefreshCalls)
	}
	// The stored session refreshes with the stored key.
	if err := c2.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.srv.Stats().RefreshSuccesses != after.RefreshSuccesses+1 {
		t.Fatal("refresh with the stored key failed")
	}
}

func TestTransientFailuresBackOffAndRecover(t *testing.T) {
	e := newEnv(t, 30*time.Second)
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	e.srv.FailRefreshes(-1)
	if err := c.Refresh(context.Background()); err == nil {
		t.Fatal("refresh against a failing server succeeded")
	}
	// The forced refresh is retried in the background with backoff, while
	// the still-valid token keeps serving: an operator's refresh during an
	// outage must not take it away.
	waitFor(t, "three failed attempts", 10*time.Second, func() bool { return e.srv.Stats().RefreshCalls >= 4 })
	if got := mustToken(t, c); got.Value != tok.Value {
		t.Fatal("expected the still-valid token during the outage")
	}
	if st := c.Status(); st.LastOutcome != tokencache.OutcomeTransient || st.State != tokencache.StateActive {
		t.Fatalf("status during outage: %+v", st)
	}
	e.srv.FailRefreshes(0)
	waitFor(t, "recovery", 10*time.Second, func() bool { return c.Status().LastOutcome == tokencache.OutcomeRefreshed })
	got := mustToken(t, c)
	if got.Value == tok.Value {
		t.Fatal("no new token after recovery")
	}
	if e.srv.Stats().ReuseEvents != 0 {
		t.Fatal("failed refreshes burned the refresh token")
	}
}

func TestValidTokenServesDuringOutage(t *testing.T) {
	e := newEnv(t, 4*time.Second)
	c := e.cache(func(cfg *tokencache.Config) { cfg.RefreshBefore = 3 * time.Second }) // refresh due at 2 s
	e.login(c)
	tok := mustToken(t, c)
	e.srv.FailRefreshes(-1)
	waitFor(t, "failed background refresh", 10*time.Second, func() bool { return c.Status().LastOutcome == tokencache.OutcomeTransient })
	if got := mustToken(t, c); got.Value != tok.Value {
		t.Fatal("expected the still-valid token during the outage")
	}
	e.srv.FailRefreshes(0)
	waitFor(t, "recovery", 10*time.Second, func() bool { return c.Status().LastOutcome == tokencache.OutcomeRefreshed })
}

func TestRevokedSessionLogsOutAndRelogsIn(t *testing.T) {
	e := newEnv(t, time.Minute)
	t.Run("without password", func(t *testing.T) {
		c := e.cache(func(cfg *tokencache.Config) { cfg.Name = "nopw" })
		e.login(c)
		e.srv.RevokeSession(mustToken(t, c).SessionID)
		if err := c.Refresh(context.Background()); !errors.Is(err, tokencache.ErrSessionDead) && !errors.Is(err, tokencache.ErrLoggedOut) {
			t.Fatalf("refresh of a revoked session: %v", err)
		}
		if st := c.Status(); st.State != tokencache.StateLoggedOut || st.Reason == "" {
			t.Fatalf("status = %+v, want logged_out with a reason", st)
		}
		if _, err := c.Token(context.Background()); !errors.Is(err, tokencache.ErrLoggedOut) && !errors.Is(err, tokencache.ErrSessionDead) {
			t.Fatalf("Token after revoke = %v", err)
		}
	})
	t.Run("with password", func(t *testing.T) {
		c := e.cache(func(cfg *tokencache.Config) {
			cfg.Name = "pw"
			cfg.Login = prelude.PasswordLogin(e.cl, demoEmail, demoPassword)
		})
		waitFor(t, "automatic first login", 5*time.Second, func() bool { return c.Status().State == tokencache.StateActive })
		old := mustToken(t, c)
		oldJKT := c.Status().KeyThumbprint
		e.srv.RevokeSession(old.SessionID)
		_ = c.Refresh(context.Background())
		waitFor(t, "automatic re-login", 5*time.Second, func() bool {
			tok, err := c.Token(context.Background())
			return err == nil && tok.SessionID != old.SessionID
		})
		if c.Status().KeyThumbprint == oldJKT {
			t.Fatal("a new session must get a new DPoP key")
		}
	})
}

func TestLostRefreshResponseNeverReusesToken(t *testing.T) {
	e := newEnv(t, time.Minute)
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	e.srv.DropAfterRotate(1)
	err := c.Refresh(context.Background())
	if err == nil {
		t.Fatal("refresh with a dropped response succeeded")
	}
	st := c.Status()
	if st.State != tokencache.StateLoggedOut || st.LastOutcome != tokencache.OutcomeUnknown {
		t.Fatalf("status = %+v", st)
	}
	// More attempts must not present the possibly spent token again.
	_ = c.Refresh(context.Background())
	if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshCalls != 1 {
		t.Fatalf("refresh calls = %d, reuse = %d; the lost token was presented again", s.RefreshCalls, s.ReuseEvents)
	}
	// The access token is still valid and keeps serving (Refresh dropped
	// it from this cache on purpose, so a cache loaded from storage shows it).
	c2 := e.cache(nil)
	if got := mustToken(t, c2); got.Value != tok.Value {
		t.Fatal("the still-valid access token should keep serving after a lost refresh")
	}
}

// A crash between presenting a refresh token and storing the answer leaves
// the write-ahead intent behind; the next attempt must not present it.
func TestInterruptedRefreshIntentIsNotRetried(t *testing.T) {
	e := newEnv(t, time.Minute)
	c := e.cache(nil)
	e.login(c)
	c.Close()
	path := filepath.Join(e.dir, "inject_token", "test", "state.json")
	var rec map[string]any
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	// Simulate the crash: mark the current refresh token as being presented.
	rec["intent"] = intentFor(t, rec["refresh_token"].(string))
	data, _ = json.Marshal(rec)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	before := e.srv.Stats().RefreshCalls
	c3 := e.cache(nil)
	_ = c3.Refresh(context.Background())
	if e.srv.Stats().RefreshCalls != before {
		t.Fatal("a refresh token with an unresolved intent was presented")
	}
	if st := c3.Status(); st.State != tokencache.StateLoggedOut {
		t.Fatalf("state = %s, want logged_out", st.State)
	}
}

func TestCorruptStateIsReportedAndKept(t *testing.T) {
	e := newEnv(t, time.Minute)
	path := filepath.Join(e.dir, "inject_token", "test", "state.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	garbage := []byte(`{"state":"active","refresh_token":"secret-rt",`)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	c := e.cache(nil)
	st := c.Status()
	if st.State != tokencache.StateLoggedOut || st.Reason == "" {
		t.Fatalf("status = %+v", st)
	}
	if got, _ := os.ReadFile(path); string(got) != string(garbage) {
		t.Fatal("unreadable state was overwritten at load")
	}
	b, _ := json.Marshal(st)
	if containsAny(string(b), "secret-rt") {
		t.Fatal("status leaks stored secrets")
	}
	// A login replaces it.
	e.login(c)
	if c.Status().State != tokencache.StateActive {
		t.Fatal("login did not replace unreadable state")
	}
}

func TestLogoutRevokesAndStaysLoggedOut(t *testing.T) {
	e := newEnv(t, time.Minute)
	c := e.cache(func(cfg *tokencache.Config) { cfg.Login = prelude.PasswordLogin(e.cl, demoEmail, demoPassword) })
	waitFor(t, "automatic login", 5*time.Second, func() bool { return c.Status().State == tokencache.StateActive })
	if err := c.Logout(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.srv.Stats().Revokes != 1 {
		t.Fatal("logout did not revoke at the server")
	}
	st := c.Status()
	if st.State != tokencache.StateLoggedOut || st.AutoLogin || st.KeyThumbprint != "" {
		t.Fatalf("status after logout = %+v", st)
	}
	if _, err := c.Token(context.Background()); err == nil {
		t.Fatal("token handed out after logout")
	}
	logins := e.srv.Stats().Logins
	// An explicit login clears the operator's logout.
	e.login(c)
	if e.srv.Stats().Logins != logins+1 || !c.Status().AutoLogin {
		t.Fatal("explicit login after logout failed")
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "inject_token", "test", "keys"))
	if len(entries) != 1 {
		t.Fatalf("%d key files kept; old keys must be deleted", len(entries))
	}
	info, _ := entries[0].Info()
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", info.Mode().Perm())
	}
}

func TestStatusHasNoSecrets(t *testing.T) {
	e := newEnv(t, time.Minute)
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	b, _ := json.Marshal(c.Status())
	data, _ := os.ReadFile(filepath.Join(e.dir, "inject_token", "test", "state.json"))
	var rec map[string]any
	_ = json.Unmarshal(data, &rec)
	if containsAny(string(b), tok.Value, rec["refresh_token"].(string), "PRIVATE KEY") {
		t.Fatal("status contains a secret")
	}
	st := c.Status()
	if st.Subject == "" || st.SessionID == "" || st.KeyThumbprint == "" || st.ExpiresAt == nil || st.TokenClaims["sub"] != st.Subject {
		t.Fatalf("status missing fields: %s", b)
	}
}

func BenchmarkTokenHot(b *testing.B) {
	srv := sandboxtest.NewServer(b, sandbox.Options{AccessTokenTTL: time.Hour})
	cl, _ := prelude.New(srv.URL, prelude.Options{})
	c, err := tokencache.New(tokencache.Config{Name: "bench", Storage: &certmagic.FileStorage{Path: b.TempDir()}, Backend: prelude.Backend{Client: cl}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(context.Background(), prelude.PasswordLogin(cl, demoEmail, demoPassword)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMutexBaseline is the same read behind a mutex, as
// golang.org/x/oauth2's reuseTokenSource does: the baseline the lock-free
// BenchmarkTokenHot is compared with in the same run.
func BenchmarkMutexBaseline(b *testing.B) {
	var mu sync.Mutex
	tok := &tokencache.Token{Value: "x", Type: "Bearer", Expiry: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			t := tok
			valid := time.Now().Before(t.Expiry)
			mu.Unlock()
			if !valid {
				b.Fatal("expired")
			}
		}
	})
}
