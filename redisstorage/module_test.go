package redisstorage

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/internal/redistest"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	var m Module
	d := caddyfile.NewTestDispenser(`inject_token_redis {
		address redis.internal:6380
		username caddy
		password {env.REDIS_PASSWORD}
		db 2
		tls
		key_prefix cluster-a
		timeout 2s
		lock_ttl 10s
		lock_refresh 4s
		lock_poll 250ms
	}`)
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Module{Address: "redis.internal:6380", Username: "caddy", Password: "{env.REDIS_PASSWORD}", DB: 2, TLS: true,
		KeyPrefix: "cluster-a", Timeout: caddy.Duration(2 * time.Second), LockTTL: caddy.Duration(10 * time.Second),
		LockRefresh: caddy.Duration(4 * time.Second), LockPoll: caddy.Duration(250 * time.Millisecond)}
	if m != want {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}

	for _, tc := range []struct{ in, want string }{
		{"inject_token_redis localhost:6379", "Testfile:1"},
		{"inject_token_redis {\n\taddress\n}", "Testfile:2"},
		{"inject_token_redis {\n\taddress a:1\n\tdb two\n}", "Testfile:3"},
		{"inject_token_redis {\n\tdb -1\n}", "Testfile:2"},
		{"inject_token_redis {\n\tdb 1\n\n\ttls yes\n}", "Testfile:4"},
		{"inject_token_redis {\n\tlock_ttl soon\n}", "Testfile:2"},
		{"inject_token_redis {\n\tpassword a b\n}", "Testfile:2"},
		{"inject_token_redis {\n\taddress a:1\n\tpasword x\n}", "Testfile:3"},
	} {
		var m Module
		err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %s", tc.in, err, tc.want)
		}
	}
}

// Provision checks what the Caddyfile cannot, and resolves the password's
// placeholder without ever naming the password in an error.
func TestProvision(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	t.Setenv("IT_REDIS_PW", "s3cret-pw")
	for _, tc := range []struct {
		m    Module
		want string
	}{
		{Module{LockTTL: caddy.Duration(time.Second), LockRefresh: caddy.Duration(2 * time.Second)}, "lock_refresh 2s must be shorter than lock_ttl 1s"},
		{Module{KeyPrefix: "/abs"}, "must not start with /"},
		{Module{Password: "{env.IT_REDIS_UNSET_PW}"}, "password"},
	} {
		err := tc.m.Provision(ctx)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.m, err, tc.want)
		}
	}
	m := Module{Password: "{env.IT_REDIS_PW}"}
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Cleanup()
	if m.conn.id.Password != "s3cret-pw" || strings.Contains(m.storage.String(), "s3cret") {
		t.Fatalf("password %q, String %q", m.conn.id.Password, m.storage.String())
	}
}

// One client per connection settings, shared by every config using it and
// closed with the last (a reload provisions the new config first).
func TestPoolSharedAcrossConfigs(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	old, next, other := Module{Address: "127.0.0.1:1"}, Module{Address: "127.0.0.1:1", KeyPrefix: "x"}, Module{Address: "127.0.0.1:2"}
	for _, m := range []*Module{&old, &next, &other} {
		if err := m.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if old.conn != next.conn || old.conn == other.conn {
		t.Fatal("configs with the same connection settings do not share one client, or different ones do")
	}
	old.Cleanup()
	if _, ok := conns.References(next.conn.id); !ok {
		t.Fatal("client closed while a config still uses it")
	}
	next.Cleanup()
	other.Cleanup()
	if _, ok := conns.References(next.conn.id); ok {
		t.Fatal("client kept after the last config using it was cleaned up")
	}
	if err := next.conn.client.Ping(t.Context()).Err(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Ping on the released client: %v, want closed", err)
	}
}

// A lock taken under one config and released under the next (the engine's
// session outlives a reload) is released, and its renewal stops.
func TestLockAcrossReload(t *testing.T) {
	addr := redistest.Start(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	old, next := Module{Address: addr}, Module{Address: addr}
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := old.storage.Lock(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := next.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer next.Cleanup()
	old.Cleanup()
	if err := next.storage.Unlock(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if n, err := next.conn.client.Exists(ctx, next.storage.lockKey("s")).Result(); err != nil || n != 0 {
		t.Fatalf("lock still in Redis after Unlock under the new config (%d, %v)", n, err)
	}
	if len(next.conn.held) != 0 {
		t.Fatal("a renewal still runs for the released lock")
	}
}
