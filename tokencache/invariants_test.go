package tokencache_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// scriptedStorage is file storage whose writes of session state follow a
// script (true = fail), to reproduce a storage outage at an exact step.
type scriptedStorage struct {
	*certmagic.FileStorage
	mu     sync.Mutex
	script []bool
}

// set replaces the script.
func (s *scriptedStorage) set(script ...bool) {
	s.mu.Lock()
	s.script = script
	s.mu.Unlock()
}

func (s *scriptedStorage) Store(ctx context.Context, key string, value []byte) error {
	if strings.HasSuffix(key, "/state.json") {
		s.mu.Lock()
		fail := len(s.script) > 0 && s.script[0]
		if len(s.script) > 0 {
			s.script = s.script[1:]
		}
		s.mu.Unlock()
		if fail {
			return errors.New("injected storage failure")
		}
	}
	return s.FileStorage.Store(ctx, key, value)
}

// A refreshed grant that could not be stored stays in memory; if another
// instance meanwhile gave the session up, the stale grant must not be
// written over storage later (lock → re-read → act). Deterministic: A's
// background retry waits for a backoff on the fake clock, which stands
// still, so B always acts first.
func TestUnstoredGrantNeverOverwritesNewerState(t *testing.T) {
	bothKinds(t, testUnstoredGrantNeverOverwritesNewerState)
}

func testUnstoredGrantNeverOverwritesNewerState(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	flaky := &scriptedStorage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage = flaky; cfg.Lazy = true })
	e.login(a)
	// The intent write succeeds, the three writes of the result fail.
	flaky.set(false, true, true, true)
	if err := a.Refresh(context.Background()); err == nil {
		t.Fatal("refresh whose result could not be stored reported success")
	}
	// Instance B finds the unresolved intent and gives the token up.
	b := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	_ = b.Refresh(context.Background())
	if st := b.Status(); st.State != tokencache.StateLoggedOut {
		t.Fatalf("instance B state = %s, want logged_out", st.State)
	}
	// A retries with storage healthy again: storage has moved on, so A's
	// in-memory grant is dropped instead of resurrecting the session.
	_ = a.Refresh(context.Background())
	var rec map[string]any
	data, err := os.ReadFile(e.statePath())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec["state"] != tokencache.StateLoggedOut {
		t.Fatalf("stored state = %v: a stale in-memory grant overwrote newer state", rec["state"])
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != 1 {
		t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
	}
}

// keylessStorage is file storage that cannot read DPoP keys (a storage
// hiccup that lasts).
type keylessStorage struct{ *certmagic.FileStorage }

func (s keylessStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if strings.Contains(key, "/keys/") {
		return nil, errors.New("injected storage failure")
	}
	return s.FileStorage.Load(ctx, key)
}

// A DPoP-bound token is never handed out without the key it is bound to,
// even when the session is kept because its key merely failed to load.
func TestDPoPTokenNeedsItsKey(t *testing.T) { bothKinds(t, testDPoPTokenNeedsItsKey) }

func testDPoPTokenNeedsItsKey(t *testing.T, runtime bool) {
	e := newEnv(t)
	e.runtime = runtime
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := key.MarshalPEM()
	dir := e.sessionPath()
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", certmagic.StorageKeys.Safe(key.Thumbprint())+".pem"), pem, 0o600); err != nil {
		t.Fatal(err)
	}
	e.writeStored(map[string]any{
		"state": "active", "token_type": "DPoP", "access_token": "a.b.c", "refresh_token": "rt",
		"key_thumbprint": key.Thumbprint(), "expiry": e.clk.Now().Add(time.Hour), "issued_at": e.clk.Now(),
	})
	c := e.cache(func(cfg *tokencache.Config) {
		cfg.Storage, cfg.Lazy = keylessStorage{&certmagic.FileStorage{Path: e.dir}}, true
	})
	if st := c.Status(); st.State != tokencache.StateActive {
		t.Fatalf("a key that failed to load ended the session: %+v", st)
	}
	if tok, err := c.Token(context.Background()); err == nil {
		t.Fatalf("handed out a %s token without its key (key %v)", tok.Type, tok.Key)
	}
	if n := e.srv.Stats().RefreshCalls; n != 0 {
		t.Fatalf("%d refreshes without the key", n)
	}
}
