package injecttoken

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// The per-request cost of inject_token with a valid token, next to a
// baseline handler that only does the header work any injector must do
// (strip the client's credentials, set one header). Run both in one go:
//
//	go test -run x -bench Handler -benchmem .
func BenchmarkHandlerInject(b *testing.B) {
	srv := sandboxtest.NewServer(b, sandbox.Options{AccessTokenTTL: time.Hour})
	storage, _ := json.Marshal(map[string]string{"module": "file_system", "root": b.TempDir()})
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: storage})
	if err != nil {
		b.Fatal(err)
	}
	h := &Handler{Session: "bench", Prelude: srv.URL,
		Login: &Login{Method: "password", Email: sandbox.DemoEmail, Password: sandbox.DemoPassword}}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	if _, err := h.sess.cache().Token(context.Background()); err != nil { // logs in once
		b.Fatal(err)
	}
	runHandler(b, h)
}

func BenchmarkHandlerBaseline(b *testing.B) {
	runHandler(b, baseline{})
}

// baseline strips the client's credentials and sets a static header.
type baseline struct{}

func (baseline) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	r.Header.Del("Authorization")
	r.Header.Del("DPoP")
	r.Header.Set("Authorization", "Bearer static")
	return next.ServeHTTP(w, r)
}

func runHandler(b *testing.B, h caddyhttp.MiddlewareHandler) {
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Header.Get("Authorization") == "" {
			b.Fatal("no Authorization")
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			repl := caddy.NewReplacer()
			req := httptest.NewRequest(http.MethodGet, "http://gw/x", nil)
			ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl)
			ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
			req = req.WithContext(ctx)
			req.Header.Set("Authorization", "Bearer client")
			if err := h.ServeHTTP(httptest.NewRecorder(), req, next); err != nil {
				b.Fatal(err)
			}
		}
	})
}
