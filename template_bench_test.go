package injecttoken

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// BenchmarkHandlerTemplate is BenchmarkHandlerInject for a template's
// sessions: the handler finds each request's session by X-User among
// 10,000 logged-in keys in rotation (INJECT_TOKEN_BENCH_KEYS to change).
// Run it with the named-session one, in the same run:
//
//	go test -run x -bench 'Handler(Inject|Template)' -benchmem .
func BenchmarkHandlerTemplate(b *testing.B) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("INJECT_TOKEN_BENCH_KEYS")); err == nil && v > 0 {
		n = v
	}
	srv := sandboxtest.NewServer(b, sandbox.Options{AccessTokenTTL: time.Hour})
	storage, _ := json.Marshal(map[string]string{"module": "file_system", "root": b.TempDir()})
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: storage})
	if err != nil {
		b.Fatal(err)
	}
	h := &Handler{Prelude: srv.URL, TemplateSessions: TemplateSessions{Template: "bench-users",
		Key: "{http.request.header.X-User}", MaxResident: n + 1000}}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	keys := make([]string, n)
	login := issuer("Bearer")
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(i)
		if err := h.tmpl.runtime().Login(context.Background(), keys[i], login); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	b.ResetTimer()
	runHandlerWith(b, h, func(r *http.Request) {
		r.Header.Set("X-User", keys[next.Add(1)%uint64(n)])
	})
}
