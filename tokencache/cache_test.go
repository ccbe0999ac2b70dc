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

// env is one sandbox plus a storage directory shared by the caches built
// on it. The engine runs on clk (a fake clock the test moves) unless the
// env is real-time; the sandbox and the client run on real time with
// tokens that stay valid for the whole test (see onClock).
type env struct {
	t    *testing.T
	srv  *sandboxtest.Server
	gate *gate
	cl   *prelude.Client // talks to the sandbox through gate
	dir  string
	clk  *fakeClock // nil: real time
	// runtime: e.cache makes run-time sessions (see runtime_test.go)
	runtime bool
	// housekeepers counts the Runtimes made (see waiting).
	housekeepers atomic.Int32
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := newRealEnv(t, time.Minute)
	e.clk = newFakeClock()
	return e
}

// newRealEnv is an env on real time, for the tests where real time is the
// point (the storage lock's own timing).
func newRealEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: ttl})
	g := newGate(t, srv.Sandbox)
	cl, err := prelude.New(g.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, gate: g, cl: cl, dir: t.TempDir()}
}

// cache builds a cache on its own FileStorage instance over the shared
// directory, as a separate Caddy instance would.
func (e *env) cache(mod func(*tokencache.Config)) *tokencache.Cache {
	e.t.Helper()
	cfg := tokencache.Config{
		Name:       "test",
		Storage:    &certmagic.FileStorage{Path: e.dir},
		Backend:    e.backend(e.cl),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
	if e.clk != nil {
		cfg.Clock = e.clk
	}
	if mod != nil {
		mod(&cfg)
	}
	if e.runtime {
		return e.runtimeSession(cfg)
	}
	c, err := tokencache.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	c.Start()
	e.t.Cleanup(c.Close)
	return c
}

// backend is the real Prelude backend over cl, on the env's clock.
func (e *env) backend(cl *prelude.Client) tokencache.Backend {
	b := prelude.Backend{Client: cl}
	if e.clk == nil {
		return b
	}
	return onClock{Backend: b, clk: e.clk}
}

// passwordLogin is the demo user's password login, on the env's clock.
func (e *env) passwordLogin() tokencache.LoginFunc {
	l := prelude.PasswordLogin(e.cl, demoEmail, demoPassword)
	if e.clk == nil {
		return l
	}
	return e.clk.login(l)
}

func (e *env) login(c *tokencache.Cache) {
	e.t.Helper()
	if err := c.Login(context.Background(), e.passwordLogin()); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes; it is a
// deadline on an observable condition, not a sleep for synchronisation.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		<-tick.C
	}
}

// advanceUntil moves the fake clock by step until cond holds, so backoffs
// and schedules pass without waiting for them.
func (e *env) advanceUntil(what string, step time.Duration, cond func() bool) {
	e.t.Helper()
	waitFor(e.t, what, 10*time.Second, func() bool {
		if cond() {
			return true
		}
		e.clk.Advance(step)
		return false
	})
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
	bothKinds(t, testThousandCallersAtExpiryCauseOneRefresh)
}

func testThousandCallersAtExpiryCauseOneRefresh(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	e.login(c)
	first := mustToken(t, c)
	e.srv.SetRefreshLatency(100 * time.Millisecond) // keep the flight open while callers pile in
	e.clk.Advance(time.Until(first.Expiry) + time.Second)
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
	// Single flight: the callers shared one refresh in memory; without it
	// each would run an operation of its own and adopt the stored result.
	if a := c.Status().AdoptCount; a != 0 {
		t.Fatalf("%d callers went to storage for the token one refresh brought", a)
	}
}

func TestNoCallerWaitsWhileTokenValid(t *testing.T) { bothKinds(t, testNoCallerWaitsWhileTokenValid) }

func testNoCallerWaitsWhileTokenValid(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(nil)
	e.login(c)
	first := mustToken(t, c)
	e.srv.SetRefreshLatency(500 * time.Millisecond)

	// Hammer Token while the background refresh (500 ms long) runs.
	var calls, stale atomic.Int64
	stop := hammer(8, c, func(tok *tokencache.Token, err error, _ time.Time) {
		if err != nil || !tok.Expiry.After(e.clk.Now()) {
			stale.Add(1)
		}
		calls.Add(1)
	})
	// Half-life plus the largest jitter: the refresh is due, the token
	// still has a quarter of its life.
	e.clk.Advance(time.Until(first.Expiry) * 3 / 4)
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

// Real time on purpose: this is the storage lock's own timing (file lock
// polling, contention between three instances).
func TestThreeInstancesShareOneSession(t *testing.T) {
	t.Parallel()
	const lifetimes = 4
	// Sandbox expiries are whole seconds, so a 3 s token lives 2–3 s and is
	// refreshed every 1–1.5 s.
	e := newRealEnv(t, 3*time.Second)
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
	var at sandbox.Stats // when the last of the refreshes was answered
	waitFor(t, "refreshes", lifetimes*3*time.Second, func() bool {
		at = e.srv.Stats()
		return at.RefreshSuccesses-base.RefreshSuccesses >= lifetimes
	})
	for _, stop := range stops {
		stop()
	}
	if calls := at.RefreshCalls - base.RefreshCalls; calls > lifetimes+1 {
		t.Fatalf("refresh calls = %d for %d refreshes: some instance refreshed twice", calls, lifetimes)
	}
	// The instances go on refreshing. A call is counted when it reaches the
	// sandbox and a success when it is answered, so the two are compared
	// once no refresh is at the sandbox (counted from the start: base may
	// have caught one in flight); a failed or rejected call never balances.
	var st sandbox.Stats
	waitFor(t, "every refresh call to be answered with a success", 20*time.Second, func() bool {
		st = e.srv.Stats()
		return st.RefreshCalls == st.RefreshSuccesses
	})
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

func TestRestartUsesStoredSession(t *testing.T) { bothKinds(t, testRestartUsesStoredSession) }

func testRestartUsesStoredSession(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c1 := e.cache(nil)
	e.login(c1)
	tok := mustToken(t, c1)
	c1.Close()
	before := e.srv.Stats()

	c2 := e.cache(func(cfg *tokencache.Config) { cfg.Login = e.passwordLogin() })
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
	bothKinds(t, testTransientFailuresBackOffAndRecover)
}

func testTransientFailuresBackOffAndRecover(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	e.gate.fail(true)
	if err := c.Refresh(context.Background()); err == nil {
		t.Fatal("refresh against a failing server succeeded")
	}
	// Backoff: with the clock standing still, the loop schedules the retry
	// and makes no further attempt, and callers do not either.
	waitFor(t, "retry scheduled", 5*time.Second, e.waiting)
	for range 20 {
		if got := mustToken(t, c); got.Value != tok.Value {
			t.Fatal("expected the still-valid token during the outage")
		}
	}
	if n := e.gate.refused.Load(); n != 1 {
		t.Fatalf("%d attempts without the clock moving; backoff not applied", n)
	}
	// The forced refresh is retried in the background with backoff, while
	// the still-valid token keeps serving: an operator's refresh during an
	// outage must not take it away.
	e.advanceUntil("three more failed attempts", 50*time.Millisecond, func() bool { return e.gate.refused.Load() >= 4 })
	if got := mustToken(t, c); got.Value != tok.Value {
		t.Fatal("expected the still-valid token during the outage")
	}
	waitFor(t, "retry scheduled", 5*time.Second, e.waiting)
	if st := c.Status(); st.LastOutcome != tokencache.OutcomeTransient || st.State != tokencache.StateActive ||
		st.NextRefresh == nil || !st.NextRefresh.After(e.clk.Now()) {
		t.Fatalf("status during outage: %+v (next attempt must be shown)", st)
	}
	e.gate.fail(false)
	e.advanceUntil("recovery", 50*time.Millisecond, func() bool { return c.Status().LastOutcome == tokencache.OutcomeRefreshed })
	got := mustToken(t, c)
	if got.Value == tok.Value {
		t.Fatal("no new token after recovery")
	}
	if e.srv.Stats().ReuseEvents != 0 {
		t.Fatal("failed refreshes burned the refresh token")
	}
}
func TestValidTokenServesDuringOutage(t *testing.T) { bothKinds(t, testValidTokenServesDuringOutage) }

func testValidTokenServesDuringOutage(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	e.gate.fail(true)
	e.clk.Advance(time.Until(tok.Expiry) * 3 / 4) // the refresh is due
	waitFor(t, "failed background refresh", 10*time.Second, func() bool { return c.Status().LastOutcome == tokencache.OutcomeTransient })
	if got := mustToken(t, c); got.Value != tok.Value {
		t.Fatal("expected the still-valid token during the outage")
	}
	e.gate.fail(false)
	e.advanceUntil("recovery", 50*time.Millisecond, func() bool { return c.Status().LastOutcome == tokencache.OutcomeRefreshed })
}
func TestRevokedSessionLogsOutAndRelogsIn(t *testing.T) {
	bothKinds(t, testRevokedSessionLogsOutAndRelogsIn)
}

func testRevokedSessionLogsOutAndRelogsIn(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
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
			cfg.Login = e.passwordLogin()
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
	bothKinds(t, testLostRefreshResponseNeverReusesToken)
}

func testLostRefreshResponseNeverReusesToken(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
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
	bothKinds(t, testInterruptedRefreshIntentIsNotRetried)
}

func testInterruptedRefreshIntentIsNotRetried(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(nil)
	e.login(c)
	c.Close()
	path := e.statePath()
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
	t.Parallel()
	e := newEnv(t)
	path := e.statePath()
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
	bothKinds(t, testLogoutRevokesAndStaysLoggedOut)
}

func testLogoutRevokesAndStaysLoggedOut(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(func(cfg *tokencache.Config) { cfg.Login = e.passwordLogin() })
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
	entries, _ := os.ReadDir(filepath.Join(filepath.Dir(e.statePath()), "keys"))
	if len(entries) != 1 {
		t.Fatalf("%d key files kept; old keys must be deleted", len(entries))
	}
	info, _ := entries[0].Info()
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", info.Mode().Perm())
	}
}

func TestStatusHasNoSecrets(t *testing.T) { bothKinds(t, testStatusHasNoSecrets) }

func testStatusHasNoSecrets(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	c := e.cache(nil)
	e.login(c)
	tok := mustToken(t, c)
	b, _ := json.Marshal(c.Status())
	data, _ := os.ReadFile(e.statePath())
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
