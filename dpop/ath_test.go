package dpop

import (
	"strings"
	"testing"
)

// A key hashes the token it presents once: further proofs for the same
// token do not hash it again, and a new token (after a refresh), or the old
// one again, gets its own ath.
func TestAccessTokenHashedOncePerToken(t *testing.T) {
	k := mustKey(t, EdDSA)
	u := mustURL(t, benchTarget)
	a, b := strings.Repeat("a", 800), strings.Repeat("b", 800)
	for _, tok := range []string{a, b, a, a, b} {
		_, claims, _ := splitProof(t, mustProof(t, k, "GET", benchTarget, ProofOptions{AccessToken: tok}))
		if claims["ath"] != AccessTokenHash(tok) {
			t.Fatalf("ath %v, want the hash of the token presented", claims["ath"])
		}
	}
	// Proofs' own allocations vary under -race (sync.Pool drops items), so
	// the hash is checked directly: the token just presented costs nothing.
	if n := testing.AllocsPerRun(50, func() { _ = k.accessTokenHash(b) }); n != 0 {
		t.Errorf("the ath of the token just presented costs %v allocations: it is hashed again", n)
	}
	if _, err := k.ProofForURL("GET", u, ProofOptions{AccessToken: a}); err != nil {
		t.Fatal(err)
	}
	if got := k.accessTokenHash(b); got != AccessTokenHash(b) {
		t.Errorf("ath after another token %s, want %s", got, AccessTokenHash(b))
	}
}

// BenchmarkATHHash is what each proof paid for its ath before the cache;
// BenchmarkATHCached what it pays now for a token it already hashed.
func BenchmarkATHHash(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = AccessTokenHash(benchToken)
	}
}

func BenchmarkATHCached(b *testing.B) {
	k := mustKey(b, EdDSA)
	b.ReportAllocs()
	for b.Loop() {
		_ = k.accessTokenHash(benchToken)
	}
}
