package tokencache_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The run-time session the env's tests use, under the template "users".
const runtimeKey = "alice@example.com"

var runtimeSecret = []byte("0123456789abcdef-test-secret")

// bothKinds runs body for a Caddyfile-named session and for a run-time
// session: every guarantee it checks holds for both.
func bothKinds(t *testing.T, body func(t *testing.T, runtime bool)) {
	t.Parallel()
	for _, rt := range []bool{false, true} {
		name := "named"
		if rt {
			name = "runtime"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			body(t, rt)
		})
	}
}

// template is the run-time template with cfg's settings. Each call is a
// new Runtime, as another Caddy instance (or a restart) would hold: they
// meet in storage. Lazy maps to a use window too short for any use to
// count, so a session refreshes only when a caller finds it expired.
func (e *env) template(cfg tokencache.Config) tokencache.Template {
	t := tokencache.Template{
		Name: "users", Secret: runtimeSecret, Storage: cfg.Storage, Backend: cfg.Backend, Login: cfg.Login,
		RefreshBefore: cfg.RefreshBefore, KeyAlgorithm: cfg.KeyAlgorithm, KeySource: cfg.KeySource,
		LockTimeout: cfg.LockTimeout, CallTimeout: cfg.CallTimeout, MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
		Logger: cfg.Logger, Observe: cfg.Observe, Clock: cfg.Clock,
	}
	if cfg.Lazy {
		t.UseWindow = time.Nanosecond
	}
	return t
}

func (e *env) newRuntime(t tokencache.Template) *tokencache.Runtime {
	e.t.Helper()
	rt, err := tokencache.NewRuntime(t)
	if err != nil {
		e.t.Fatal(err)
	}
	e.housekeepers.Add(1)
	e.t.Cleanup(rt.Close)
	return rt
}

func (e *env) runtimeSession(cfg tokencache.Config) *tokencache.Cache {
	e.t.Helper()
	key := runtimeKey
	if cfg.Name != "test" {
		key = cfg.Name // a test's second session
	}
	c, err := e.newRuntime(e.template(cfg)).Session(key)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// waiting reports whether a refresher (a named session's loop or a
// Runtime's scheduler) is idle with its next wake-up scheduled: a timer
// is armed besides the housekeeping timer each Runtime keeps armed.
func (e *env) waiting() bool { return e.clk.Armed() > int(e.housekeepers.Load()) }

// sessionKey is the storage directory of the env's session: the named
// session "test", or the run-time session runtimeKey.
func (e *env) sessionKey() string {
	if e.runtime {
		t := tokencache.Template{Name: "users", Secret: runtimeSecret}
		return t.Dir(runtimeKey)
	}
	return tokencache.StoragePrefix + "/test"
}

// sessionPath is the session's directory on disk.
func (e *env) sessionPath() string { return filepath.Join(e.dir, e.sessionKey()) }

// statePath is the file holding the session's record.
func (e *env) statePath() string { return filepath.Join(e.sessionPath(), "state.json") }

// stored is the session's stored record.
func (e *env) stored() map[string]any {
	e.t.Helper()
	data, err := os.ReadFile(e.statePath())
	if err != nil {
		e.t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(data, &rec); err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// writeStored replaces the session's stored record.
func (e *env) writeStored(rec map[string]any) {
	e.t.Helper()
	data, _ := json.Marshal(rec)
	if err := os.MkdirAll(e.sessionPath(), 0o700); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.statePath(), data, 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// generation is the stored generation of key's session.
func (e *env) generation(t tokencache.Template, key string) float64 {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.dir, t.Dir(key), "state.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var rec struct{ Generation float64 }
	if err := json.Unmarshal(data, &rec); err != nil {
		e.t.Fatal(err)
	}
	return rec.Generation
}

func TestRuntimeStorageLayout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.runtime = true
	c := e.cache(nil)
	e.login(c)
	tmpl := tokencache.Template{Name: "users", Secret: runtimeSecret}
	dir := tmpl.Dir(runtimeKey)
	if strings.Contains(dir, "alice") || !strings.HasPrefix(dir, "inject_token/users/") {
		t.Fatalf("dir = %s", dir)
	}
	other := tokencache.Template{Name: "users", Secret: []byte("another-secret-of-16+")}
	if other.Dir(runtimeKey) == dir {
		t.Fatal("the directory does not depend on the secret: a guessed key can be checked against a listing")
	}
	data, err := os.ReadFile(e.statePath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"key":"`+runtimeKey+`"`) {
		t.Fatal("record does not carry the key") // data holds tokens: not printed
	}
	// A refresh keeps it (op.write carries it from record to record).
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if data, _ = os.ReadFile(e.statePath()); !strings.Contains(string(data), runtimeKey) {
		t.Fatal("refresh dropped the key from the record")
	}
}

// An evicted session is loaded again from storage on its next use: same
// DPoP key, same generation, same token, no call to the token server.
func TestRuntimeEvictionReloadsSameSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	tmpl.MaxResident = 2
	rt := e.newRuntime(tmpl)
	keys := []string{"a", "b", "c"}
	toks := map[string]*tokencache.Token{}
	st := map[string]tokencache.Status{}
	gen := map[string]float64{}
	for _, k := range keys {
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
		tok, err := rt.Token(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := rt.Session(k)
		toks[k], st[k], gen[k] = tok, c.Status(), e.generation(tmpl, k)
	}
	if n := rt.Resident(); n != 2 {
		t.Fatalf("resident = %d, want 2 (MaxResident)", n)
	}
	before := e.srv.Stats()
	for _, k := range keys {
		c, err := rt.Session(k)
		if err != nil {
			t.Fatal(err)
		}
		tok := mustToken(t, c)
		s, g := c.Status(), e.generation(tmpl, k)
		if tok.Value != toks[k].Value || s.KeyThumbprint != st[k].KeyThumbprint || g != gen[k] {
			t.Fatalf("%s after reload: jkt %s→%s, generation %v→%v, same token %v", k,
				st[k].KeyThumbprint, s.KeyThumbprint, gen[k], g, tok.Value == toks[k].Value)
		}
	}
	if after := e.srv.Stats(); after.Logins != before.Logins || after.RefreshCalls != before.RefreshCalls {
		t.Fatal("reloading an evicted session called the token server")
	}
	if st["a"].KeyThumbprint == st["b"].KeyThumbprint {
		t.Fatal("two run-time sessions share a DPoP key")
	}
}

// The scheduler refreshes a session in use before its token expires,
// without a caller waiting; a session not used within the window is left
// alone until its next use.
func TestRuntimeSchedulerRefreshesOnlySessionsInUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl),
		Clock: e.clk, MinBackoff: 20 * time.Millisecond})
	tmpl.UseWindow = 10 * time.Second
	rt := e.newRuntime(tmpl)
	for _, k := range []string{"busy", "idle"} {
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
	}
	busy, _ := rt.Session("busy")
	idle, _ := rt.Session("idle")
	first := mustToken(t, busy)
	idleFirst := mustToken(t, idle)
	base := e.srv.Stats().RefreshSuccesses
	// Refresh time is half-life (30 s) plus up to a fifth of the rest
	// (6 s): used at 28 s, busy is in use (window 10 s); idle, used at 0,
	// is not.
	e.clk.Advance(28 * time.Second)
	mustToken(t, busy)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("busy: %+v", busy.Status())
		}
	})
	e.advanceUntil("busy refreshed by the scheduler", 100*time.Millisecond, func() bool {
		return busy.Status().RefreshCount == 1
	})
	if tok := mustToken(t, busy); tok.Value == first.Value {
		t.Fatal("busy session's token not replaced")
	}
	if w := busy.Status().WaitCount; w != 0 {
		t.Fatalf("%d callers waited for a scheduled refresh", w)
	}
	if got := e.srv.Stats().RefreshSuccesses - base; got != 1 {
		t.Fatalf("refreshes = %d, want 1 (only the session in use)", got)
	}
	if n := idle.Status().RefreshCount; n != 0 {
		t.Fatal("idle session refreshed before use")
	}
	if tok := mustToken(t, idle); tok.Value != idleFirst.Value {
		t.Fatal("idle session refreshed before use")
	}
	// Its use now (near or past its refresh time, token still valid) gets
	// the held token at once and a refresh in the background.
	e.advanceUntil("idle refreshed after its use", 100*time.Millisecond, func() bool {
		return e.srv.Stats().RefreshSuccesses-base == 2
	})
	if w := idle.Status().WaitCount; w != 0 {
		t.Fatalf("%d callers of the idle session waited while its token was valid", w)
	}
}

// After a restart with stored sessions nothing is loaded or refreshed
// until used; the first use of one loads it without a refresh.
func TestRuntimeRestartRefreshesNothingUntilUsed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk, MinBackoff: 20 * time.Millisecond}
	rt := e.newRuntime(e.template(cfg))
	const n = 20
	for i := range n {
		k := string(rune('a' + i))
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Token(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	rt.Close()
	base := e.srv.Stats()
	rt2 := e.newRuntime(e.template(cfg))
	e.clk.Advance(45 * time.Second) // past every refresh time, tokens still valid
	if rt2.Resident() != 0 {
		t.Fatal("sessions loaded before use")
	}
	tok, err := rt2.Token(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if tok == nil || rt2.Resident() != 1 {
		t.Fatal("first use did not load exactly one session")
	}
	waitFor(t, "the used session refreshed", 10*time.Second, func() bool {
		return e.srv.Stats().RefreshSuccesses-base.RefreshSuccesses == 1
	})
	if s := e.srv.Stats(); s.RefreshCalls-base.RefreshCalls != 1 || s.Logins != base.Logins {
		t.Fatalf("after restart: %d refreshes, %d logins; want 1 (the used session), 0",
			s.RefreshCalls-base.RefreshCalls, s.Logins-base.Logins)
	}
}

// Two instances (Runtimes) sharing storage, callers racing at expiry on
// both: one refresh, the other instance adopts it.
func TestRuntimeTwoInstancesOneRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk,
		MinBackoff: 20 * time.Millisecond, Lazy: true}
	a := e.newRuntime(e.template(cfg))
	b := e.newRuntime(e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl),
		Clock: e.clk, MinBackoff: 20 * time.Millisecond, Lazy: true}))
	if err := a.Login(context.Background(), runtimeKey, e.passwordLogin()); err != nil {
		t.Fatal(err)
	}
	first, err := a.Token(context.Background(), runtimeKey)
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Until(first.Expiry) + time.Second)
	before := e.srv.Stats()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		rt := a
		if i%2 == 1 {
			rt = b
		}
		wg.Go(func() {
			if _, err := rt.Token(context.Background(), runtimeKey); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := e.srv.Stats(); s.RefreshCalls-before.RefreshCalls != 1 || s.ReuseEvents != 0 {
		t.Fatalf("refresh calls = %d, reuse = %d; want 1, 0", s.RefreshCalls-before.RefreshCalls, s.ReuseEvents)
	}
}

// Concurrent first uses of one key load it once: one Cache, so one single
// flight per session in the process.
func TestRuntimeConcurrentFirstUseLoadsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rt := e.newRuntime(e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk}))
	const n = 32
	got := make([]*tokencache.Cache, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			c, err := rt.Session(runtimeKey)
			if err != nil {
				t.Error(err)
			}
			got[i] = c
		})
	}
	close(start)
	wg.Wait()
	for _, c := range got {
		if c != got[0] {
			t.Fatal("concurrent first uses made two caches of one session")
		}
	}
	if rt.Resident() != 1 {
		t.Fatalf("resident = %d", rt.Resident())
	}
}

// On a sealing storage the raw key, like the tokens, is only in sealed
// values: no file in storage holds it in any form the disk shows.
func TestRuntimeKeySealedAtRest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sealer, err := seal.New([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	st := seal.Storage{Storage: &certmagic.FileStorage{Path: e.dir}, Sealer: sealer, Prefix: tokencache.StoragePrefix + "/", Plain: tokencache.IsClaim}
	cfg := tokencache.Config{Storage: st, Backend: e.backend(e.cl), Clock: e.clk}
	rt := e.newRuntime(e.template(cfg))
	if err := rt.Login(context.Background(), runtimeKey, e.passwordLogin()); err != nil {
		t.Fatal(err)
	}
	tok, err := rt.Token(context.Background(), runtimeKey)
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	files := 0
	err = filepath.WalkDir(e.dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		data, err := os.ReadFile(path)
		if containsAny(path+string(data), runtimeKey, "alice", tok.Value) {
			t.Errorf("%s holds the key or the token in the clear", path)
		}
		return err
	})
	if err != nil || files == 0 {
		t.Fatalf("walked %d files: %v", files, err)
	}
	// A restart opens them again: same session, same token.
	again, err := e.newRuntime(e.template(cfg)).Token(context.Background(), runtimeKey)
	if err != nil || again.Value != tok.Value {
		t.Fatalf("restart over sealed storage: %v", err)
	}
}
