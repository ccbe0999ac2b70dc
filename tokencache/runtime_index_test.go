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
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// offlineLogin is a login answered without a token server: a Bearer
// grant with no refresh token, so nothing is ever revoked or refreshed.
// It makes thousands of sessions cheaply where the test is about the
// index, not the token server.
func offlineLogin(clk tokencache.Clock) tokencache.LoginFunc { return offlineLoginFor(clk, time.Hour) }

// offlineLoginFor is offlineLogin with tokens valid for ttl.
func offlineLoginFor(clk tokencache.Clock, ttl time.Duration) tokencache.LoginFunc {
	var n atomic.Int64
	return func(context.Context, *dpop.Key, string) (*tokencache.Grant, error) {
		return &tokencache.Grant{AccessToken: fmt.Sprintf("offline-%d", n.Add(1)), TokenType: "Bearer",
			Expiry: clk.Now().Add(ttl)}, nil
	}
}

// listAll pages through rt's sessions, calling between after each page.
func listAll(t *testing.T, rt *tokencache.Runtime, limit int, between func(page int)) []tokencache.SessionInfo {
	t.Helper()
	var all []tokencache.SessionInfo
	cursor := ""
	for page := 0; ; page++ {
		got, next, err := rt.List(context.Background(), cursor, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > limit {
			t.Fatalf("page of %d, limit %d", len(got), limit)
		}
		all = append(all, got...)
		if next == "" {
			return all
		}
		cursor = next
		if between != nil {
			between(page)
		}
	}
}

// seedSessions stores logged-out sessions of tmpl for keys the way a
// Runtime of an earlier release left them (a record, no index entry),
// and has a Runtime find them: the index entries of stored sessions it
// holds are written when it lets them go. Cheaper than thousands of
// logins, and the path that indexes sessions stored before the index.
func (e *env) seedSessions(tmpl tokencache.Template, keys []string) {
	e.t.Helper()
	for _, k := range keys {
		dir := filepath.Join(e.dir, tmpl.Dir(k))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			e.t.Fatal(err)
		}
		rec := fmt.Sprintf(`{"state":"logged_out","reason":"seeded","generation":1,"key":%q,"format":2}`, k)
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(rec), 0o600); err != nil {
			e.t.Fatal(err)
		}
	}
	tmpl.MaxResident = len(keys)
	rt, err := tokencache.NewRuntime(tmpl)
	if err != nil {
		e.t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(keys); i += 4 {
				if _, err := rt.Session(keys[i]); err != nil {
					e.t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	rt.Close()
}

// Paging over 2,500 sessions while sessions are made and erased between
// pages: every session stored for the whole listing comes exactly once,
// and none comes twice.
func TestRuntimeListPagesStable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.dir = memDir(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	tmpl.MaxResident = 100 // most sessions are listed from storage, not memory
	const n, volatile = 2500, 100
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%04d@example.com", i)
	}
	e.seedSessions(tmpl, keys)
	rt := e.newRuntime(tmpl)
	login := offlineLogin(e.clk)
	make1 := func(k string) {
		if err := rt.Login(context.Background(), k, login); err != nil {
			t.Fatal(err)
		}
	}
	// The first `volatile` users are erased while the listing runs, and as
	// many new ones made.
	next := 0
	lister := e.newRuntime(tmpl) // another instance lists
	all := listAll(t, lister, 97, func(int) {
		for range 4 {
			if next < volatile {
				if err := rt.Erase(context.Background(), fmt.Sprintf("user-%04d@example.com", next)); err != nil {
					t.Fatal(err)
				}
				make1(fmt.Sprintf("new-%04d@example.com", next))
				next++
			}
		}
	})
	if next < volatile {
		t.Fatalf("only %d changes between pages", next)
	}
	seen := map[string]int{}
	for _, s := range all {
		seen[s.Key]++
		if seen[s.Key] > 1 {
			t.Fatalf("%s listed twice", s.Key)
		}
		if s.Created.IsZero() || s.State == "" {
			t.Fatalf("listing entry without creation time or state: %+v", s)
		}
	}
	for i := volatile; i < n; i++ {
		if k := fmt.Sprintf("user-%04d@example.com", i); seen[k] != 1 {
			t.Fatalf("%s listed %d times, want once", k, seen[k])
		}
	}
	// A quiet listing afterwards has exactly the sessions stored.
	final := listAll(t, lister, 500, nil)
	if want := n; len(final) != want {
		t.Fatalf("listed %d sessions, want %d", len(final), want)
	}
}

// Lookup shows a session without loading it: key, state, subject and
// expiry from its stored record; unknown keys are not found.
func TestRuntimeLookup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	rt := e.newRuntime(tmpl)
	if err := rt.Login(context.Background(), runtimeKey, e.passwordLogin()); err != nil {
		t.Fatal(err)
	}
	tok, err := rt.Token(context.Background(), runtimeKey)
	if err != nil {
		t.Fatal(err)
	}
	other := e.newRuntime(tmpl) // nothing resident: read from storage
	for _, r := range []*tokencache.Runtime{rt, other} {
		info, ok, err := r.Lookup(context.Background(), runtimeKey)
		if err != nil || !ok {
			t.Fatalf("lookup: %v %v", ok, err)
		}
		if info.Key != runtimeKey || info.State != tokencache.StateActive || info.Sub == "" || info.Sub != tok.Subject ||
			!info.Expires.Equal(tok.Expiry) || info.Created.IsZero() || info.LastUsed.IsZero() {
			t.Fatalf("lookup = %+v", info)
		}
	}
	if other.Resident() != 0 {
		t.Fatal("lookup loaded the session")
	}
	if _, ok, err := other.Lookup(context.Background(), "nobody@example.com"); ok || err != nil {
		t.Fatalf("unknown key found: %v %v", ok, err)
	}
	if err := other.Revoke(context.Background(), "nobody@example.com"); !errors.Is(err, tokencache.ErrUnknownSession) {
		t.Fatalf("revoke of an unknown key: %v", err)
	}
}

// Revoke logs one session out at the token server and it stays listed as
// logged out; RevokeAll revokes every active one.
func TestRuntimeRevokeOneAndAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	rt := e.newRuntime(tmpl)
	keys := []string{"a", "b", "c", "d"}
	for _, k := range keys {
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
	}
	if c := rt.Counts(); c[tokencache.StateActive] != 4 {
		t.Fatalf("counts = %v", c)
	}
	other := e.newRuntime(tmpl) // another instance, nothing resident
	if err := other.Revoke(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Stats(); s.Revokes != 1 {
		t.Fatalf("sandbox revokes = %d, want 1", s.Revokes)
	}
	if other.Resident() != 0 {
		t.Fatal("revoke left a session it loaded resident")
	}
	info, ok, err := rt.Lookup(context.Background(), "a")
	if err != nil || !ok || info.State != tokencache.StateLoggedOut {
		t.Fatalf("revoked session: %+v %v %v", info, ok, err)
	}
	n, err := other.RevokeAll(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("revoke all = %d, %v; want 3", n, err)
	}
	if s := e.srv.Stats(); s.Revokes != 4 || s.ReuseEvents != 0 {
		t.Fatalf("sandbox revokes = %d, reuse %d; want 4, 0", s.Revokes, s.ReuseEvents)
	}
	all := listAll(t, other, 10, nil)
	if len(all) != 4 {
		t.Fatalf("listed %d after revoking, want 4", len(all))
	}
	for _, s := range all {
		if s.State != tokencache.StateLoggedOut {
			t.Fatalf("%s: %s after revoke all", s.Key, s.State)
		}
	}
	// The instance holding them learns it at its next refresh: it never
	// refreshes a revoked session.
	c, _ := rt.Session("b")
	if err := c.Refresh(context.Background()); err == nil || c.Status().State != tokencache.StateLoggedOut {
		t.Fatalf("revoked session refreshed: %v, %s", err, c.Status().State)
	}
}

// filesUnder lists the files below dir (relative to root).
func filesUnder(t *testing.T, root, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Erase revokes the session upstream and leaves nothing of it in storage:
// no record, key, claim or index entry.
func TestRuntimeEraseLeavesNoTrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	rt := e.newRuntime(tmpl)
	for _, k := range []string{runtimeKey, "bob@example.com"} {
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Token(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	if len(filesUnder(t, e.dir, tmpl.Dir(runtimeKey))) == 0 {
		t.Fatal("nothing stored for the session")
	}
	if err := rt.Erase(context.Background(), runtimeKey); err != nil {
		t.Fatal(err)
	}
	if left := filesUnder(t, e.dir, tmpl.Dir(runtimeKey)); len(left) != 0 {
		t.Fatalf("erase left %v", left)
	}
	hash := filepath.Base(tmpl.Dir(runtimeKey))
	for _, p := range filesUnder(t, e.dir, "") {
		if strings.Contains(p, hash) {
			t.Fatalf("erase left %s", p)
		}
	}
	if _, err := os.Stat(filepath.Join(e.dir, tmpl.Dir(runtimeKey))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("erase left the session directory: %v", err)
	}
	if s := e.srv.Stats(); s.Revokes != 1 {
		t.Fatalf("sandbox revokes = %d, want 1", s.Revokes)
	}
	for _, p := range filesUnder(t, e.dir, "inject_token/users/index") {
		data, _ := os.ReadFile(p)
		if strings.Contains(string(data), runtimeKey) {
			t.Fatalf("index page %s still names the erased key", p)
		}
	}
	if _, ok, _ := rt.Lookup(context.Background(), runtimeKey); ok {
		t.Fatal("erased session still found")
	}
	if all := listAll(t, rt, 10, nil); len(all) != 1 || all[0].Key != "bob@example.com" {
		t.Fatalf("listing after erase: %+v", all)
	}
	if err := rt.Erase(context.Background(), runtimeKey); !errors.Is(err, tokencache.ErrUnknownSession) {
		t.Fatalf("second erase: %v", err)
	}
}

// Retention erases the sessions idle longer than Retention, revoking each
// upstream first, and keeps the ones in use, through the housekeeper's
// sweep (one index page a tick) on the injected clock.
func TestRuntimeRetentionErasesOnlyIdle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk,
		MinBackoff: 20 * time.Millisecond})
	tmpl.Retention = 24 * time.Hour
	tmpl.IdleTimeout = 48 * time.Hour // busy stays in memory: its uses reach the index by the housekeeper alone
	tmpl.UseWindow = time.Nanosecond // no scheduled refreshes: uses refresh
	rt := e.newRuntime(tmpl)
	// The idle ones are sandbox sessions, to be revoked there; busy's
	// token outlives the test, so its uses cost no refresh.
	for k, login := range map[string]tokencache.LoginFunc{
		"busy": offlineLoginFor(e.clk, 48*time.Hour), "idle1": e.passwordLogin(), "idle2": e.passwordLogin(),
	} {
		if err := rt.Login(context.Background(), k, login); err != nil {
			t.Fatal(err)
		}
	}
	// busy is used every 20 minutes for a day and stays in memory; the
	// others are never used. The sweep below takes 256 ticks (minutes) or
	// more: busy's last use stays well within Retention.
	for range 75 {
		e.clk.Advance(20 * time.Minute)
		if _, err := rt.Token(context.Background(), "busy"); err != nil {
			t.Fatal(err)
		}
	}
	// Another instance (nothing resident) sweeps: it knows busy's use only
	// from the index, where the first instance's housekeeper writes it.
	other := e.newRuntime(tmpl)
	e.advanceUntil("the idle sessions erased", time.Minute, func() bool {
		if len(filesUnder(t, e.dir, tmpl.Dir("idle1")))+len(filesUnder(t, e.dir, tmpl.Dir("idle2"))) > 0 {
			return false
		}
		_, ok1, _ := other.Lookup(context.Background(), "idle1")
		_, ok2, _ := other.Lookup(context.Background(), "idle2")
		return !ok1 && !ok2
	})
	// A whole sweep more (the pages not reached yet): busy stays.
	if n, err := other.Sweep(context.Background()); n != 0 || err != nil {
		t.Fatalf("a further sweep erased %d: %v", n, err)
	}
	if _, ok, err := other.Lookup(context.Background(), "busy"); !ok || err != nil {
		t.Fatalf("the session in use was erased: %v", err)
	}
	if s := e.srv.Stats(); s.Revokes != 2 || s.ReuseEvents != 0 {
		t.Fatalf("sandbox revokes = %d, reuse %d; want 2 (the idle ones), 0", s.Revokes, s.ReuseEvents)
	}
	for _, k := range []string{"idle1", "idle2"} {
		if left := filesUnder(t, e.dir, tmpl.Dir(k)); len(left) != 0 {
			t.Fatalf("retention left %v", left)
		}
	}
}

// IdleTimeout evicts sessions not used for that long, besides the count
// bound; a session in use stays.
func TestRuntimeIdleTimeoutEvicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	tmpl.IdleTimeout = 10 * time.Minute
	rt := e.newRuntime(tmpl)
	login := offlineLogin(e.clk)
	for _, k := range []string{"busy", "a", "b", "c"} {
		if err := rt.Login(context.Background(), k, login); err != nil {
			t.Fatal(err)
		}
	}
	busy, _ := rt.Session("busy") // held: used through the *Cache
	for range 15 {
		e.clk.Advance(time.Minute)
		mustToken(t, busy)
	}
	waitFor(t, "idle sessions evicted", 10*time.Second, func() bool { return rt.Resident() == 1 })
	if _, err := busy.Token(context.Background()); err != nil {
		t.Fatalf("the session in use was evicted: %v", err)
	}
}

// countingBackend counts concurrent Refresh calls and holds each until
// the test lets it through.
type countingBackend struct {
	tokencache.Backend
	inflight, most, calls atomic.Int64
	gate                  chan struct{}
}

func (b *countingBackend) Refresh(ctx context.Context, key *dpop.Key, rt string) (*tokencache.Grant, error) {
	n := b.inflight.Add(1)
	defer b.inflight.Add(-1)
	b.calls.Add(1)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return b.Backend.Refresh(ctx, key, rt)
}

// The scheduler never runs more than MaxRefreshing refreshes at once;
// the sessions beyond wait their turn and are all refreshed.
func TestRuntimeSchedulerCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b := &countingBackend{Backend: e.backend(e.cl), gate: make(chan struct{})}
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: b, Clock: e.clk, MinBackoff: 20 * time.Millisecond})
	tmpl.MaxRefreshing = 2
	tmpl.UseWindow = time.Hour
	rt := e.newRuntime(tmpl)
	const n = 7
	for i := range n {
		k := fmt.Sprint("u", i)
		if err := rt.Login(context.Background(), k, e.passwordLogin()); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Token(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	e.clk.Advance(40 * time.Second) // past every refresh time, before expiry
	// Let the held refreshes through one at a time, each once the
	// scheduler has filled every slot it may.
	for done := 0; done < n; done++ {
		want := int64(min(2, n-done))
		waitFor(t, "the slots filled", 10*time.Second, func() bool { return b.inflight.Load() >= want })
		b.gate <- struct{}{}
	}
	waitFor(t, "every session refreshed", 10*time.Second, func() bool { return e.srv.Stats().RefreshSuccesses == n })
	if m := b.most.Load(); m > 2 {
		t.Fatalf("%d refreshes ran at once; MaxRefreshing is 2", m)
	}
	if m := b.most.Load(); m < 2 {
		t.Fatalf("at most %d refresh at a time: the cap is not used", m)
	}
}

// Update swaps the backend of resident sessions in place: the next
// refresh of a session loaded before goes to the new backend, with the
// same DPoP key and no reload. Name and Secret cannot change in place.
func TestRuntimeUpdateSwapsBackend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Storage: &certmagic.FileStorage{Path: e.dir}, Backend: e.backend(e.cl), Clock: e.clk})
	rt := e.newRuntime(tmpl)
	if err := rt.Login(context.Background(), runtimeKey, e.passwordLogin()); err != nil {
		t.Fatal(err)
	}
	c, _ := rt.Session(runtimeKey)
	jkt := c.Status().KeyThumbprint
	nb := &countingBackend{Backend: e.backend(e.cl)}
	updated := tmpl
	updated.Backend = nb
	updated.Storage = &certmagic.FileStorage{Path: e.dir} // a reload's new instance of the same storage
	updated.MaxRefreshing = 4
	if err := rt.Update(updated); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if nb.calls.Load() != 1 {
		t.Fatalf("new backend saw %d refreshes, want 1", nb.calls.Load())
	}
	if same, _ := rt.Session(runtimeKey); same != c || c.Status().KeyThumbprint != jkt {
		t.Fatal("update rebuilt the session or changed its key")
	}
	for name, mod := range map[string]func(*tokencache.Template){
		"name":    func(t *tokencache.Template) { t.Name = "others" },
		"secret":  func(t *tokencache.Template) { t.Secret = []byte("another-secret-of-16+") },
		"storage": func(t *tokencache.Template) { t.Storage = &certmagic.FileStorage{Path: t.Name + "-elsewhere"} },
	} {
		bad := updated
		mod(&bad)
		if err := rt.Update(bad); err == nil || !strings.Contains(err.Error(), "Runtime") {
			t.Fatalf("update changing the %s: %v", name, err)
		}
	}
}

// On a sealing storage the index pages, which hold the raw keys, are
// sealed like the records: no byte on disk shows a key.
func TestRuntimeIndexSealedAtRest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sealer, err := seal.New([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	st := seal.Storage{Storage: &certmagic.FileStorage{Path: e.dir}, Sealer: sealer, Prefix: tokencache.StoragePrefix + "/", Plain: tokencache.IsClaim}
	tmpl := e.template(tokencache.Config{Storage: st, Backend: e.backend(e.cl), Clock: e.clk})
	rt := e.newRuntime(tmpl)
	keys := []string{"carol@example.com", "dave@example.com", "erin@example.com"}
	for _, k := range keys {
		if err := rt.Login(context.Background(), k, offlineLogin(e.clk)); err != nil {
			t.Fatal(err)
		}
	}
	pages := filesUnder(t, e.dir, "inject_token/users/index")
	if len(pages) == 0 {
		t.Fatal("no index page stored")
	}
	for _, p := range filesUnder(t, e.dir, "") {
		data, _ := os.ReadFile(p)
		for _, k := range keys {
			local, _, _ := strings.Cut(k, "@")
			if containsAny(p+string(data), k, local) {
				t.Fatalf("%s holds a session key in the clear", p)
			}
		}
	}
	if all := listAll(t, e.newRuntime(tmpl), 10, nil); len(all) != len(keys) {
		t.Fatalf("listing over sealed storage: %d sessions", len(all))
	}
}

// Two instances making sessions at once in the same index page lose
// none of each other's entries: a page is rewritten under its storage
// lock.
func TestRuntimeIndexWritersOnTwoInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tmpl := e.template(tokencache.Config{Backend: e.backend(e.cl), Clock: e.clk})
	// Keys whose hashes share the first index page.
	var keys []string
	for i := 0; len(keys) < 24; i++ {
		k := fmt.Sprintf("user-%d", i)
		if strings.HasPrefix(filepath.Base(tmpl.Dir(k)), "00") {
			keys = append(keys, k)
		}
	}
	l := newLeases(e.clk, time.Minute)
	var wg sync.WaitGroup
	for i, who := range []string{"A", "B"} {
		inst := tmpl
		inst.Storage = newLeased(e.dir, l, who)
		rt := e.newRuntime(inst)
		for w := range 2 {
			wg.Go(func() {
				for j := i*2 + w; j < len(keys); j += 4 {
					if err := rt.Login(context.Background(), keys[j], offlineLogin(e.clk)); err != nil {
						t.Error(err)
					}
				}
			})
		}
	}
	wg.Wait()
	tmpl.Storage = &certmagic.FileStorage{Path: e.dir}
	if all := listAll(t, e.newRuntime(tmpl), 100, nil); len(all) != len(keys) {
		t.Fatalf("listed %d of %d sessions made on two instances: index entries lost", len(all), len(keys))
	}
}
