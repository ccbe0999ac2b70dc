package tokencache_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// hooked is leased storage whose Store, List and Delete first ask hook;
// an error from hook fails the call without acting.
type hooked struct {
	*leased
	hook atomic.Pointer[func(op, key string) error]
}

var _ certmagic.Storage = (*hooked)(nil)

func (s *hooked) ask(op, key string) error {
	if f := s.hook.Load(); f != nil {
		return (*f)(op, key)
	}
	return nil
}

func (s *hooked) Store(ctx context.Context, key string, v []byte) error {
	if err := s.ask("store", key); err != nil {
		return err
	}
	return s.leased.Store(ctx, key, v)
}

func (s *hooked) List(ctx context.Context, dir string, rec bool) ([]string, error) {
	if err := s.ask("list", dir); err != nil {
		return nil, err
	}
	return s.leased.List(ctx, dir, rec)
}

func (s *hooked) Delete(ctx context.Context, key string) error {
	if err := s.ask("delete", key); err != nil {
		return err
	}
	return s.leased.Delete(ctx, key)
}

func setHook(s *hooked, f func(op, key string) error) { s.hook.Store(&f) }

// A stale intent overwrites B's completed refresh; A's listing of the claims
// then fails (one storage error). The engine keeps "clear the intent" as a
// pending write; on the next attempt that cleared record is contested by
// B's claims, but settle rewrites it above them (it is not an intent), and
// the refresh goes on to present the refresh token B already spent.
func TestFailedClaimListingNeverLeadsToReuse(t *testing.T) {
	e := newEnv(t)
	l := newLeases(e.clk, 10*time.Second)
	stA := &hooked{leased: newLeased(e.dir, l, "A")}
	stB := newLeased(e.dir, l, "B")
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
	b := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stB, true })
	e.login(a)
	mustToken(t, b)

	f, stalled, resume := pause()
	var stallOnce, failList atomic.Bool
	setHook(stA, func(op, key string) error {
		if op == "store" && strings.Contains(key, "/claims/") && stallOnce.CompareAndSwap(false, true) {
			(*f)() // between the intent's fence read and its claim
			failList.Store(true)
		}
		if op == "list" && failList.CompareAndSwap(true, false) {
			return errors.New("injected list failure")
		}
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- a.Refresh(context.Background()) }()
	await(t, "A to stall before its intent's claim", stalled)
	e.clk.Advance(11 * time.Second)
	if err := b.Refresh(context.Background()); err != nil {
		t.Fatalf("B: %v", err)
	}
	close(resume)
	t.Logf("A's first refresh: %v", <-done)
	t.Logf("stored after A's late intent: %v", e.stored()["intent"])
	e.clk.Advance(time.Second)
	t.Logf("A's second refresh: %v", a.Refresh(context.Background()))
	if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshCalls > 2 {
		t.Fatalf("refresh calls %d, reuse events %d: a refresh token B spent was presented again", s.RefreshCalls, s.ReuseEvents)
	}
}

// IsClaim is a substring test: for a session named "claims" every key of
// the session (state.json with the refresh token, the DPoP private key)
// counts as a claim and is stored unsealed.
func TestIsClaimMatchesOnlyClaimKeys(t *testing.T) {
	for _, k := range []string{
		tokencache.StoragePrefix + "/claims/state.json",
		tokencache.StoragePrefix + "/claims/keys/abc.pem",
	} {
		if tokencache.IsClaim(k) {
			t.Errorf("IsClaim(%q) = true: stored without sealing", k)
		}
	}
}

// A claim left behind by a write that failed (the save failed, and so did
// removing the claim) does not stop the same instance's next refresh: an
// instance's own operations never overlap, so its claims never contest
// each other. Failed with per-operation claim names: the orphan claim made
// the next refresh give the session up.
func TestOrphanClaimDoesNotStopItsOwnInstance(t *testing.T) {
	e := newEnv(t)
	l := newLeases(e.clk, 10*time.Second)
	stA := &hooked{leased: newLeased(e.dir, l, "A")}
	a := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy = stA, true })
	e.login(a)
	var down atomic.Bool
	setHook(stA, func(op, key string) error {
		if op == "store" && tokencache.IsClaim(key) && !down.Load() {
			down.Store(true) // storage goes down right after the claim
			return nil
		}
		if down.Load() && (op == "delete" || op == "store" && strings.HasSuffix(key, "state.json")) {
			return errors.New("injected outage")
		}
		return nil
	})
	if err := a.Refresh(context.Background()); err == nil {
		t.Fatal("refresh during the outage reported success")
	}
	setHook(stA, func(string, string) error { return nil })
	e.clk.Advance(time.Second)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatalf("refresh after storage came back: %v (state %v)", err, e.stored()["state"])
	}
	if s := e.srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != 1 {
		t.Fatalf("refresh successes %d, reuse events %d", s.RefreshSuccesses, s.ReuseEvents)
	}
}
