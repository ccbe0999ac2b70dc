package injecttoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The per-request cost of inject_token with a valid token, each next to a
// baseline in the same run. Run them in one go:
//
//	go test -run x -bench 'Handler|Transport|RawSign' -benchmem .
//
// Handler: the handler in front of a next handler that answers 200, next to
// a baseline that only does the header work any injector must do.
// Transport: one round trip through the transport to a no-op base
// transport (the upstream costs nothing), Bearer and DPoP, next to a
// baseline that copies the request and sets a static header, and to the
// raw signature a DPoP proof cannot avoid.
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

func runHandler(b *testing.B, h caddyhttp.MiddlewareHandler) { runHandlerWith(b, h, nil) }

// runHandlerWith is runHandler with prep, when set, called on each request
// first (by one goroutine at a time per request, concurrently across them).
func runHandlerWith(b *testing.B, h caddyhttp.MiddlewareHandler, prep func(*http.Request)) {
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
			if prep != nil {
				prep(req)
			}
			if err := h.ServeHTTP(httptest.NewRecorder(), req, next); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// noopBase answers every request 200 without doing anything: the cost
// measured is the transport's own.
type noopBase struct{}

func (noopBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Authorization") == "" {
		panic("no Authorization")
	}
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

// issuer is a token server that logs in at once with a JWT-sized token of
// the given type (an external server, not our code).
func issuer(typ string) tokencache.LoginFunc {
	tok := strings.Repeat("eyJhbGciOiJFUzI1NiJ9", 40)
	return func(context.Context, *dpop.Key, string) (*tokencache.Grant, error) {
		return &tokencache.Grant{AccessToken: tok, TokenType: typ, Expiry: time.Now().Add(time.Hour)}, nil
	}
}

type noRefresh struct{}

func (noRefresh) Refresh(context.Context, *dpop.Key, string) (*tokencache.Grant, error) {
	return nil, tokencache.ErrSessionDead
}
func (noRefresh) Revoke(context.Context, *dpop.Key, string) error { return nil }
func (noRefresh) AutoLogin() tokencache.LoginFunc                 { return nil }

// benchSession is a session with a valid token of type typ, its key of alg.
func benchSession(b *testing.B, typ string, alg dpop.Algorithm) *session {
	c, err := tokencache.New(tokencache.Config{Name: "bench-" + typ, Storage: &certmagic.FileStorage{Path: b.TempDir()},
		Backend: noRefresh{}, Login: issuer(typ), KeyAlgorithm: alg, RefreshBefore: time.Minute, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	s := newSession("bench")
	s.tc.Store(c)
	if _, err := c.Token(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

func benchTransport(b *testing.B, typ string, alg dpop.Algorithm) {
	s := benchSession(b, typ, alg)
	t := &Transport{HTTPTransport: new(reverseproxy.HTTPTransport), base: noopBase{}, logger: zap.NewNop(), auth: new(authHeader)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := benchUpstreamRequest()
			ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{credVar: &credential{sess: s, name: s.name}})
			resp, err := t.RoundTrip(req.WithContext(ctx))
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
		}
	})
}

// benchUpstreamRequest is a request as reverse_proxy hands it to its
// transport.
func benchUpstreamRequest() *http.Request {
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8080/v1/accounts/acct_123/sessions?limit=20", nil)
	req.Host = "api.example.com"
	req.URL.Scheme, req.URL.Host, req.RequestURI = "", "127.0.0.1:8080", ""
	req.Header.Set("X-Forwarded-For", "127.0.0.1")
	return req
}

func BenchmarkTransportBearer(b *testing.B)    { benchTransport(b, "Bearer", dpop.ES256) }
func BenchmarkTransportDPoPES256(b *testing.B) { benchTransport(b, "DPoP", dpop.ES256) }
func BenchmarkTransportDPoPEdDSA(b *testing.B) { benchTransport(b, "DPoP", dpop.EdDSA) }

// BenchmarkTransportBaseline copies the request and sets a static header,
// the least any transport presenting a credential does.
func BenchmarkTransportBaseline(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := benchUpstreamRequest()
			out := req.Clone(req.Context())
			out.Header.Set("Authorization", "Bearer static")
			resp, _ := noopBase{}.RoundTrip(out)
			_, _ = io.Copy(io.Discard, resp.Body)
		}
	})
}

// The raw signatures a DPoP proof is made of: the floor for the DPoP
// transport benchmarks above.
func BenchmarkRawSignES256(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	msg := make([]byte, 600)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h := sha256.Sum256(msg)
			if _, _, err := ecdsa.Sign(rand.Reader, k, h[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRawSignEdDSA(b *testing.B) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 600)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = ed25519.Sign(k, msg)
		}
	})
}
