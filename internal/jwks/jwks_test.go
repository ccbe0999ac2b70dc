package jwks

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// TestCacheRefetch: a known kid never fetches again; an unknown kid
// fetches once more, then not again within MinRefetch; after a failure
// the set is not asked for again within MinRefetch either.
func TestCacheRefetch(t *testing.T) {
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{KeyID: "a"}}}
	fetches, fail := 0, false
	c := Cache{MinRefetch: time.Minute, Fetch: func(context.Context) (*jose.JSONWebKeySet, error) {
		fetches++
		if fail {
			return nil, errors.New("down")
		}
		return set, nil
	}}
	t0 := time.Unix(1e9, 0)
	step := func(kid string, at time.Duration, wantKeys, wantFetches int) {
		t.Helper()
		ks, err := c.Keys(context.Background(), kid, t0.Add(at))
		if len(ks) != wantKeys || fetches != wantFetches || err != nil && wantKeys > 0 {
			t.Errorf("kid %q at %s: %d keys, %d fetches (%v); want %d, %d", kid, at, len(ks), fetches, err, wantKeys, wantFetches)
		}
	}
	step("a", 0, 1, 1)
	step("a", 2*time.Minute, 1, 1) // known: no fetch however old
	step("b", 2*time.Minute, 0, 2) // unknown: one fetch
	step("b", 2*time.Minute+time.Second, 0, 2)
	set = &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{KeyID: "a"}, {KeyID: "b"}}}
	step("b", 3*time.Minute, 1, 3) // rotated in
	step("", 3*time.Minute, 2, 3)  // no kid: every key

	fail = true
	d := Cache{Fetch: c.Fetch}
	if _, err := d.Keys(context.Background(), "a", t0); err == nil {
		t.Fatal("no error from a failed first fetch")
	}
	if _, err := d.Keys(context.Background(), "a", t0.Add(time.Second)); !errors.Is(err, ErrUnavailable) || fetches != 4 {
		t.Errorf("%v after %d fetches; want ErrUnavailable without a fetch", err, fetches)
	}
}
