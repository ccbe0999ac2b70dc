package redisstorage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/redis/go-redis/v9"

	_ "github.com/tokenwarden/caddy-inject-token"
	"github.com/tokenwarden/caddy-inject-token/internal/redistest"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// A real Caddy config on this storage, with a password-protected Redis:
// the inject_token engine logs in to the sandbox, keeps its session in
// Redis (conditional writes, in the common layout) and injects its token
// upstream; a reload keeps the one client; stopping Caddy closes it.
func TestCaddyConfigOnRedis(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	addr := redistest.Start(t)
	admin := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { admin.Close() })
	ctx := context.Background()
	if err := admin.ConfigSet(ctx, "requirepass", "redis-pw-1").Err(); err != nil {
		t.Fatal(err)
	}
	admin = redis.NewClient(&redis.Options{Addr: addr, Password: "redis-pw-1", DisableIdentity: true})
	t.Cleanup(func() { admin.Close() })
	t.Setenv("IT_REDIS_PW", "redis-pw-1")
	t.Setenv("IT_EMAIL", sandbox.DemoEmail)
	t.Setenv("IT_PASSWORD", sandbox.DemoPassword)

	srv := sandboxtest.NewServer(t, sandbox.Options{})
	uid := srv.AddUser(sandbox.DemoEmail, sandbox.DemoPassword)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + l.Addr().String()
	l.Close()
	config := func(lockPoll string) string {
		return fmt.Sprintf(`{
	admin off
	persist_config off
	log {
		output discard
	}
	storage inject_token_redis {
		address %s
		password {env.IT_REDIS_PW}
		lock_poll %s
	}
}
%s {
	inject_token {
		session redis-1
		prelude %s
		login password {env.IT_EMAIL} {env.IT_PASSWORD}
	}
	rewrite * /whoami
	reverse_proxy %s
}
`, addr, lockPoll, base, srv.URL, srv.URL)
	}
	load(t, config("100ms"))
	t.Cleanup(func() { _ = caddy.Stop() })

	whoami := func() {
		t.Helper()
		resp, err := http.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var w struct {
			Claims map[string]any `json:"claims"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &w) != nil || w.Claims["sub"] != uid {
			t.Fatalf("through the proxy: %d %s; want the session's token for %s upstream", resp.StatusCode, body, uid)
		}
	}
	whoami()
	// The session is in Redis, versioned, and listed where the common
	// module lists.
	b, err := admin.Get(ctx, "caddy/inject_token/redis-1/state.json").Bytes()
	var env map[string]any
	if err != nil || json.Unmarshal(b, &env) != nil || env["version"] == nil {
		t.Fatalf("session state in Redis: %s, %v; want a versioned envelope", b, err)
	}
	if n, err := admin.ZCard(ctx, "caddy/inject_token/redis-1").Result(); err != nil || n == 0 {
		t.Fatalf("session directory set: %d members, %v", n, err)
	}
	first := onlyConn(t)

	load(t, config("200ms")) // a reload
	whoami()
	if onlyConn(t) != first {
		t.Fatal("a reload replaced the Redis client instead of keeping it")
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := countConns(); n != 0 {
		t.Fatalf("%d Redis clients left open after Caddy stopped", n)
	}
	if err := first.client.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("client after stop: %v, want closed", err)
	}
}

func load(t *testing.T, caddyfile string) {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("adapting: %v %v", err, warnings)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading: %v", err)
	}
}

func countConns() int {
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	return n
}

func onlyConn(t *testing.T) *conn {
	t.Helper()
	var c *conn
	conns.Range(func(_, v any) bool { c = v.(*conn); return true })
	if n := countConns(); n != 1 {
		t.Fatalf("%d Redis clients in the pool, want 1", n)
	}
	return c
}
