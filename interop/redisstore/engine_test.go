package redisstore

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Redis commands per steady-state refresh on a dedicated Redis, counted by
// INFO commandstats (which counts the commands a script runs too): the
// engine on conditional writes needs no claims, so a refresh is GET,
// lock (redislock: EVALSHA+SET), GET, two scripts (EVALSHA+GET+SET each),
// unlock (EVALSHA+GET+DEL): 13 commands in 6 round trips. With claims it
// was about 22 round trips. The issue's ≤ 10 needs a lock of its own
// (SET NX PX) and is left to the deployable module.
func TestCommandsPerRefresh(t *testing.T) {
	r := interop.StartRedis(t, interop.RedisOptions{})
	s := newStorage(t, r, Options{})
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
	if err := c.Refresh(ctx); err != nil { // loads the script
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: r.Addr, DisableIdentity: true})
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
	if s := srv.Stats(); s.ReuseEvents != 0 || s.RefreshSuccesses != n+1 {
		t.Fatalf("refresh successes %d, reuse %d", s.RefreshSuccesses, s.ReuseEvents)
	}
	if per > 13 {
		t.Fatalf("%.1f Redis commands per refresh; want ≤ 13", per)
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
