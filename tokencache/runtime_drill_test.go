package tokencache_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
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

// TestDrillRuntimeRefreshLoad is the refresh-load drill of
// docs/runtime-sessions.md, on real time: INJECT_TOKEN_DRILL_SESSIONS
// run-time sessions (say 2000) logged in at the sandbox within a few
// seconds, so their 60 s tokens all expire within the same minute, each
// used once; one Runtime on file storage must refresh every one of them
// before its token expires, once, with no failure and no reuse. Skipped
// unless the variable is set.
func TestDrillRuntimeRefreshLoad(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("INJECT_TOKEN_DRILL_SESSIONS"))
	if n == 0 {
		t.Skip("set INJECT_TOKEN_DRILL_SESSIONS to run the refresh-load drill")
	}
	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: time.Minute})
	cl, err := prelude.New(srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var late, failures atomic.Int64
	rt, err := tokencache.NewRuntime(tokencache.Template{
		Name: "users", Secret: runtimeSecret, Storage: &certmagic.FileStorage{Path: memDir(t)},
		Backend: prelude.Backend{Client: cl}, UseWindow: 2 * time.Minute,
		Observe: func(e tokencache.Event) {
			switch {
			case e.Kind != tokencache.EventAttempt:
			case e.Outcome == tokencache.OutcomeRefreshed && e.Lead <= 0:
				late.Add(1) // the token it replaced had expired
			case e.Outcome != tokencache.OutcomeRefreshed && e.Outcome != tokencache.OutcomeLoggedIn:
				failures.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	login := prelude.PasswordLogin(cl, demoEmail, demoPassword)
	keys := make([]string, n)
	first := make([]*tokencache.Token, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 16)
	start := time.Now()
	for i := range n {
		keys[i] = fmt.Sprintf("user%05d@example.com", i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := rt.Login(context.Background(), keys[i], login); err != nil {
				failed.Add(1)
				return
			}
			tok, err := rt.Token(context.Background(), keys[i])
			if err != nil {
				failed.Add(1)
				return
			}
			first[i] = tok
		})
	}
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d logins failed", f)
	}
	t.Logf("%d sessions logged in in %s", n, time.Since(start).Round(time.Millisecond))
	var last time.Time
	for _, tok := range first {
		if tok.Expiry.After(last) {
			last = tok.Expiry
		}
	}
	unrefreshed := func() (n int) {
		for _, k := range keys {
			c, err := rt.Session(k)
			if err != nil {
				t.Fatal(err)
			}
			if c.Status().RefreshCount == 0 {
				n++
			}
		}
		return n
	}
	waitFor(t, "every session refreshed", time.Until(last)+10*time.Second, func() bool {
		return srv.Stats().RefreshSuccesses >= int64(n) && unrefreshed() == 0
	})
	st := srv.Stats()
	// Sessions logged in first may be refreshed a second time before the
	// last ones are due (when logging in takes longer than half a
	// lifetime): counted, not a failure.
	t.Logf("refresh calls %d, successes %d, reuse %d, failed %d, after expiry %d, all done %s after the first login",
		st.RefreshCalls, st.RefreshSuccesses, st.ReuseEvents, failures.Load(), late.Load(), time.Since(start).Round(time.Millisecond))
	if late.Load() != 0 || failures.Load() != 0 || st.ReuseEvents != 0 || st.RefreshCalls != st.RefreshSuccesses {
		t.Fatal("not every session was refreshed before expiry without failure or reuse")
	}
}
