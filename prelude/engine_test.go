package prelude

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tokenwarden/caddy-inject-token/dpop"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// End to end with the engine: tokencache.New with this package's Backend,
// real FileStorage, the strict sandbox. The cache is not started, so only
// the test's own calls refresh: every presentation of a token is counted.

// engine is a logged-in cache over srv.
func engine(t *testing.T) (*sandboxtest.Server, *tokencache.Cache) {
	t.Helper()
	srv, c := sandboxClient(t, sandbox.Options{})
	cache, err := tokencache.New(tokencache.Config{
		Name:       "e2e",
		Storage:    &certmagic.FileStorage{Path: t.TempDir()},
		Backend:    Backend{Client: c},
		Login:      PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword),
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	if err := cache.Login(context.Background(), PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)); err != nil {
		t.Fatal(err)
	}
	return srv, cache
}

// presented counts the /refresh requests that carried refresh token rt.
func presented(srv *sandboxtest.Server, rt string) int {
	n := 0
	for _, r := range srv.Requests() {
		if r.Path == pathRefresh && r.Header.Get(headerRefreshToken) == rt {
			n++
		}
	}
	return n
}

// lastPresented is the refresh token of the latest /refresh request.
func lastPresented(t *testing.T, srv *sandboxtest.Server) string {
	t.Helper()
	reqs := srv.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Path == pathRefresh {
			return reqs[i].Header.Get(headerRefreshToken)
		}
	}
	t.Fatal("no refresh was sent")
	return ""
}

func sid(t *testing.T, srv *sandboxtest.Server, cache *tokencache.Cache) string {
	t.Helper()
	tok, err := cache.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return sessionID(t, srv, tok.Value)
}

// A load balancer answering 500/502/504 after the token server rotated:
// the engine must never present that refresh token again.
func TestEngineRotateThenFaultNeverReuses(t *testing.T) {
	for _, status := range []int{500, 502, 504} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			srv, cache := engine(t)
			ctx := context.Background()
			srv.FaultRefreshes(1, sandbox.Fault{Status: status, AfterRotate: true})
			err := cache.Refresh(ctx)
			spent := lastPresented(t, srv)
			for range 3 { // whatever the engine does next (re-login, refresh)
				_ = cache.Refresh(ctx)
			}
			st := srv.Stats()
			if st.ReuseEvents != 0 || presented(srv, spent) != 1 {
				t.Fatalf("after %d: reuse events %d, spent token presented %d times (first error: %v)",
					status, st.ReuseEvents, presented(srv, spent), err)
			}
			if _, err := cache.Token(ctx); err != nil {
				t.Fatalf("session not recovered: %v", err)
			}
		})
	}
}

// Answers that prove the server did not act keep the session: the same
// token is presented again and works, no re-login.
func TestEngineNotActedKeepsSession(t *testing.T) {
	for _, f := range []sandbox.Fault{
		{Status: 429, Code: "rate_limited"},
		{Status: 503, Code: "internal", RetryAfter: "0"},
		{Status: 401, Code: "invalid_dpop_proof"},
		{Status: 400, Code: "missing_dpop_proof"},
		{Status: 400, Code: "use_dpop_nonce"},
	} {
		t.Run(fmt.Sprintf("%d_%s", f.Status, f.Code), func(t *testing.T) {
			srv, cache := engine(t)
			ctx := context.Background()
			before := sid(t, srv, cache)
			srv.FaultRefreshes(2, f) // the in-call retry (nonce) is spent too
			err := cache.Refresh(ctx)
			if err == nil || errors.Is(err, tokencache.ErrOutcomeUnknown) || errors.Is(err, tokencache.ErrSessionDead) {
				t.Fatalf("refresh: %v", err)
			}
			for range 2 { // backoff is ignored by a forced refresh
				if err = cache.Refresh(ctx); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("refresh after the faults: %v", err)
			}
			st := srv.Stats()
			if st.ReuseEvents != 0 || st.Logins != 1 || st.RefreshSuccesses != 1 || sid(t, srv, cache) != before {
				t.Fatalf("stats %+v, session %s → %s", st, before, sid(t, srv, cache))
			}
			if s := cache.Status(); s.State != tokencache.StateActive {
				t.Errorf("state %s", s.State)
			}
		})
	}
}

// A refresh answered without X-Refresh-Token keeps the current token: the
// session survives and the token is presented again without reuse.
func TestEngineUnrotatedRefreshKeepsSession(t *testing.T) {
	srv, cache := engine(t)
	ctx := context.Background()
	before := sid(t, srv, cache)
	srv.SkipRotation(1)
	if err := cache.Refresh(ctx); err != nil {
		t.Fatalf("unrotated refresh: %v", err)
	}
	kept := lastPresented(t, srv)
	if err := cache.Refresh(ctx); err != nil {
		t.Fatalf("refresh with the kept token: %v", err)
	}
	st := srv.Stats()
	if presented(srv, kept) != 2 || st.ReuseEvents != 0 || st.Logins != 1 || st.RefreshSuccesses != 2 || sid(t, srv, cache) != before {
		t.Fatalf("kept token presented %d times; stats %+v", presented(srv, kept), st)
	}
}

// dpop_key_mismatch is reported with its own text, and is no reason to
// log in again.
func TestEngineKeyMismatchReportedNotLooped(t *testing.T) {
	srv, cache := engine(t)
	ctx := context.Background()
	srv.FaultRefreshes(3, sandbox.Fault{Status: 401, Code: "dpop_key_mismatch"})
	for range 3 {
		err := cache.Refresh(ctx)
		if err == nil || !strings.Contains(err.Error(), "dpop_key_mismatch") || !strings.Contains(err.Error(), "bug") {
			t.Fatalf("refresh: %v", err)
		}
		var re tokencache.ReasonError
		if !errors.As(err, &re) || re.FailureReason() != tokencache.ReasonDPoPRejected {
			t.Errorf("reason: %v", err)
		}
	}
	if st := srv.Stats(); st.Logins != 1 || st.ReuseEvents != 0 {
		t.Fatalf("stats %+v: a key mismatch must not trigger logins", st)
	}
	if s := cache.Status(); s.State != tokencache.StateActive || !strings.Contains(s.LastError, "dpop_key_mismatch") {
		t.Errorf("status %+v", s)
	}
}

// Every request the engine makes to Prelude carries the session's
// X-Device-Id, the same one across refreshes, a logout, a re-login and a
// restart over the same storage; another session has another.
func TestEngineDeviceIDStoredWithSession(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	dir := t.TempDir()
	login := PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)
	open := func(name string) *tokencache.Cache {
		cache, err := tokencache.New(tokencache.Config{Name: name, Storage: &certmagic.FileStorage{Path: dir},
			Backend: Backend{Client: c}, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cache.Close)
		return cache
	}
	ctx := context.Background()
	cache := open("dev")
	for _, step := range []func() error{
		func() error { return cache.Login(ctx, login) },
		func() error { return cache.Refresh(ctx) },
		func() error { return cache.Logout(ctx) },
		func() error { return cache.Login(ctx, login) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cache.Close()
	restarted := open("dev")
	if err := restarted.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	other := open("other")
	if err := other.Login(ctx, login); err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, r := range srv.Requests() {
		if r.Path == "/.well-known/jwks.json" {
			continue // the engine's first look at the server's clock (ServerSkew), no session's
		}
		ids[r.Header.Get(headerDeviceID)]++
	}
	if len(ids) != 2 || ids[""] != 0 || ids[restarted.DeviceID()] != 7 || ids[other.DeviceID()] != 2 {
		t.Fatalf("X-Device-Id per request: %v (want 7 of %s, 2 of %s)", ids, restarted.DeviceID(), other.DeviceID())
	}
	if !uuidV4.MatchString(restarted.DeviceID()) {
		t.Fatalf("device id %q is not a random UUID", restarted.DeviceID())
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// A refresh token presented twice (here by a thief holding the session's
// key and device id) makes the server revoke the session with 409
// token_reused: the engine reports it as its own reason in the event
// (the metrics label), in the status, and in exactly one ERROR line.
func TestEngineTokenReusedIsItsOwnReason(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	core, logs := observer.New(zap.DebugLevel)
	var reasons []string
	var mu sync.Mutex
	dir := t.TempDir()
	cache, err := tokencache.New(tokencache.Config{
		Name: "reuse", Storage: &certmagic.FileStorage{Path: dir}, Backend: Backend{Client: c},
		Logger: zap.New(core), MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
		Observe: func(e tokencache.Event) {
			if e.Kind == tokencache.EventAttempt && e.Reason != "" {
				mu.Lock()
				reasons = append(reasons, e.Reason)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	ctx := context.Background()
	if err := cache.Login(ctx, PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)); err != nil {
		t.Fatal(err)
	}
	rt, key := storedSession(t, dir, "reuse")
	if _, err := c.Refresh(cache.WithDeviceID(ctx), key, rt); err != nil { // the thief spends it first
		t.Fatal(err)
	}
	err = cache.Refresh(ctx)
	if err == nil || !strings.Contains(err.Error(), "token_reused") {
		t.Fatalf("refresh after theft: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(reasons, []string{tokencache.ReasonTokenReused}) {
		t.Fatalf("event reasons %v, want [token_reused]", reasons)
	}
	if st := cache.Status(); st.State != tokencache.StateLoggedOut || !strings.Contains(st.Reason, "token_reused") {
		t.Fatalf("status %s: %q", st.State, st.Reason)
	}
	if errs := logs.FilterLevelExact(zap.ErrorLevel).All(); len(errs) != 1 || !strings.Contains(errs[0].Message, "reuse") {
		t.Fatalf("ERROR lines %v, want one about reuse", errs)
	}
	if srv.Stats().ReuseEvents != 1 {
		t.Fatal("the sandbox saw no reuse")
	}
}

// storedSession reads session name's refresh token and DPoP key from the
// file storage in dir, as another party with a copy of storage would.
func storedSession(t *testing.T, dir, name string) (string, *dpop.Key) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "inject_token", name, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		RefreshToken  string `json:"refresh_token"`
		KeyThumbprint string `json:"key_thumbprint"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "inject_token", name, "keys", certmagic.StorageKeys.Safe(rec.KeyThumbprint)+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := dpop.ParseKeyPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	return rec.RefreshToken, key
}
