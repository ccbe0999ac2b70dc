package redisstorage

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/caddy-inject-token/internal/redistest"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Redis commands per steady-state refresh on a dedicated Redis, from INFO
// commandstats (which counts the commands scripts run, and would count
// lease renewals had any fallen due): GET (state), SET NX PX (lock), GET
// (state, under the lock), two conditional writes (EVALSHA + SET ... GET
// each), unlock (EVALSHA + GET + DEL): 10, in 6 round trips.
func TestCommandsPerRefresh(t *testing.T) {
	addr := redistest.Start(t)
	s := newStorage(t, addr, "caddy", leaseTimes{})
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	cl, err := prelude.New(srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tokencache.New(tokencache.Config{Name: "test", Storage: s, Backend: prelude.Backend{Client: cl}, Lazy: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	if err := c.Login(ctx, prelude.PasswordLogin(cl, "demo@example.com", "demo-password")); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil { // loads the scripts
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { admin.Close() })
	before := commands(t, admin)
	const n = 20
	for range n {
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after := commands(t, admin)
	var total int64
	for k, v := range after {
		total += v - before[k]
	}
	per := float64(total) / n
	t.Logf("%.1f Redis commands per refresh (%d refreshes): before %v after %v", per, n, before, after)
	if st := srv.Stats(); st.ReuseEvents != 0 || st.RefreshSuccesses != n+1 {
		t.Fatalf("refresh successes %d, reuse %d", st.RefreshSuccesses, st.ReuseEvents)
	}
	if per > 10 {
		t.Fatalf("%.1f Redis commands per refresh; want ≤ 10", per)
	}
	keys, err := admin.Keys(ctx, "caddy/inject_token/*").Result()
	if err != nil || len(keys) > 10 {
		t.Fatalf("keys of one session after %d refreshes: %q, %v", n+1, keys, err)
	}
}

// commands is INFO commandstats' calls per command, without INFO itself.
func commands(t *testing.T, c *redis.Client) map[string]int64 {
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		m[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(calls, 10, 64)
	}
	return m
}
