package tokencache

import (
	"context"
	"testing"
)

// BenchmarkRuntimeList is the admin side of the index over 10,000 stored
// sessions, on an instance holding none of them: one page of 100 (index
// pages and the 100 records read), and a lookup by key.
func BenchmarkRuntimeList(b *testing.B) {
	const n = 10_000
	tmpl, keys, _ := storedSessions(b, n)
	ctx := context.Background()
	rt, err := NewRuntime(tmpl)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if _, err := rt.Token(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
	rt.Close() // writes the index entries of the sessions it held
	lister, err := NewRuntime(tmpl)
	if err != nil {
		b.Fatal(err)
	}
	defer lister.Close()
	b.Run("page-of-100", func(b *testing.B) {
		cursor, listed := "", 0
		for b.Loop() {
			page, next, err := lister.List(ctx, cursor, 100)
			if err != nil {
				b.Fatal(err)
			}
			listed += len(page)
			cursor = next
		}
		if b.N >= n/100 && listed < n {
			b.Fatalf("listed %d", listed)
		}
	})
	b.Run("lookup", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok, err := lister.Lookup(ctx, keys[i%n]); !ok || err != nil {
				b.Fatal(ok, err)
			}
			i++
		}
	})
}
