package injecttoken

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkHandlerTemplate is BenchmarkHandlerInject for a template's
// sessions: the handler finds each request's session by X-User among
// 10,000 logged-in keys in rotation (INJECT_TOKEN_BENCH_KEYS to change).
// Run it with the named-session one, in the same run:
//
//	go test -run x -bench 'Handler(Inject|Template)' -benchmem .
func BenchmarkHandlerTemplate(b *testing.B) {
	h, keys := templateBenchHandler(b)
	var next atomic.Uint64
	b.ResetTimer()
	runHandlerWith(b, h, func(r *http.Request) {
		r.Header.Set("X-User", keys[next.Add(1)%uint64(len(keys))])
	})
}

// templateBench is BenchmarkHandlerTemplate's handler, made once per
// process: logging 10,000 sessions in for each of the benchmark's calls
// would take minutes. Its storage directory is left behind on purpose (the
// sessions are resident; it is a benchmark).
var templateBench struct {
	once sync.Once
	h    *Handler
	keys []string
	err  error
}

func templateBenchHandler(b *testing.B) (*Handler, []string) {
	tb := &templateBench
	tb.once.Do(func() {
		n := 10_000
		if v, err := strconv.Atoi(os.Getenv("INJECT_TOKEN_BENCH_KEYS")); err == nil && v > 0 {
			n = v
		}
		dir, err := os.MkdirTemp("", "inject-token-bench-")
		if err != nil {
			tb.err = err
			return
		}
		storage, _ := json.Marshal(map[string]string{"module": "file_system", "root": dir})
		ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: storage})
		if err != nil {
			tb.err = err
			return
		}
		// The token server is never called: every session logs in with
		// issuer and its token outlives the benchmark.
		h := &Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: "bench-users",
			Key: "{http.request.header.X-User}", MaxResident: n + 1000}}
		if tb.err = h.Provision(ctx); tb.err != nil {
			return
		}
		login := issuer("Bearer")
		for i := range n {
			key := "user-" + strconv.Itoa(i)
			if tb.err = h.tmpl.runtime().Login(context.Background(), key, login); tb.err != nil {
				return
			}
			tb.keys = append(tb.keys, key)
		}
		tb.h = h
	})
	if tb.err != nil {
		b.Fatal(tb.err)
	}
	return tb.h, tb.keys
}
