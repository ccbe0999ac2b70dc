package exchange_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The per-request subject path against the plain Bearer path in one run:
// both copy the request and set Authorization; the per-subject one also
// reads a 1.5 KB subject token from its header and looks its token up in
// the Cache (a hit, as for every request after a subject's first). The
// difference of the two is what a cached per-subject lookup adds
// (docs/grants.md has figures).

func benchRequest(subject string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://app.test/api/orders?page=2", nil)
	r.Header.Set("X-Subject", "Bearer "+subject)
	return r
}

func BenchmarkBearerPath(b *testing.B) {
	is, clk := newIssuer(b), newClock()
	req := benchRequest(is.subject(b, "u", clk.now(), time.Hour, "gw", 1500))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			out := req.Clone(req.Context())
			out.Header.Del("X-Subject")
			out.Header.Set("Authorization", "Bearer static-token-value")
		}
	})
}

func BenchmarkPerSubjectCachedPath(b *testing.B) {
	ts, is, clk := newTokenServer(b), newIssuer(b), newClock()
	c := newCache(b, ts, is, clk, nil)
	subject := is.subject(b, "u", clk.now(), time.Hour, "gw", 1500)
	if len(subject) < 1500 {
		b.Fatalf("subject is %d bytes, want ≥ 1500", len(subject))
	}
	if _, err := c.Get(context.Background(), subject); err != nil {
		b.Fatal(err)
	}
	req := benchRequest(subject)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			out := req.Clone(req.Context())
			s := out.Header.Get("X-Subject")
			out.Header.Del("X-Subject")
			g, err := c.Get(out.Context(), s[len("Bearer "):])
			if err != nil {
				b.Fatal(err)
			}
			out.Header.Set("Authorization", "Bearer "+g.AccessToken)
		}
	})
	if ts.exchanges.Load() != 1 {
		b.Fatalf("%d exchanges, want 1", ts.exchanges.Load())
	}
}
