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
// written over storage later (lock → re-read → act).
func TestUnstoredGrantNeverOverwritesNewerState(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
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
	data, err := os.ReadFile(filepath.Join(e.dir, "inject_token", "test", "state.json"))
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

// A DPoP-bound token is never handed out without the key it is bound to.
func TestDPoPTokenNeedsItsKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	path := filepath.Join(e.dir, "inject_token", "test", "state.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	rec := map[string]any{
		"state": "active", "token_type": "DPoP", "access_token": "a.b.c", "refresh_token": "rt",
		"key_thumbprint": "no-such-key", "expiry": time.Now().Add(time.Hour), "issued_at": time.Now(),
	}
	data, _ := json.Marshal(rec)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c := e.cache(func(cfg *tokencache.Config) { cfg.Lazy = true })
	if tok, err := c.Token(context.Background()); err == nil {
		t.Fatalf("handed out a %s token without its key (key %v)", tok.Type, tok.Key)
	}
}
