package filecas_test

import (
	"context"
	"errors"
	"io/fs"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/filecas"
)

// Two instances on one directory (as two Caddy processes on one host):
// of many writers that read the same version, exactly one wins, and the
// value stays what plain FileStorage reads.
func TestOneWriterWinsPerVersion(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a := filecas.New(&certmagic.FileStorage{Path: dir})
	b := filecas.New(&certmagic.FileStorage{Path: dir})
	if err := a.StoreIfVersion(ctx, "s/state.json", []byte("v1"), 0, 1); err != nil {
		t.Fatal(err)
	}
	var won atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st.StoreIfVersion(ctx, "s/state.json", []byte("v2"), 1, 2)
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, fs.ErrExist):
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := won.Load(); n != 1 {
		t.Fatalf("%d writers won version 2", n)
	}
	v, ver, err := b.LoadVersioned(ctx, "s/state.json")
	if err != nil || string(v) != "v2" || ver != 2 {
		t.Fatalf("LoadVersioned = %q, %d, %v", v, ver, err)
	}
	if plain, err := (&certmagic.FileStorage{Path: dir}).Load(ctx, "s/state.json"); err != nil || string(plain) != "v2" {
		t.Fatalf("plain Load = %q, %v", plain, err)
	}
	// A stale writer (read version 1 long ago) is refused.
	if err := a.StoreIfVersion(ctx, "s/state.json", []byte("late"), 1, 2); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("late write: %v", err)
	}
	keys, _ := a.List(ctx, "s", true)
	if len(keys) != 1 {
		t.Fatalf("keys %v: versions must stay out of listings", keys)
	}
	// Deleting the session's directory deletes its versions.
	if err := a.Delete(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := b.StoreIfVersion(ctx, "s/state.json", []byte("new"), 0, 1); err != nil {
		t.Fatalf("store after delete: %v", err)
	}
}

// A value stored without a version (before conditional writes) is at
// version 0.
func TestUnversionedValueIsVersionZero(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if err := (&certmagic.FileStorage{Path: dir}).Store(ctx, "k", []byte("old")); err != nil {
		t.Fatal(err)
	}
	s := filecas.New(&certmagic.FileStorage{Path: dir})
	if _, ver, err := s.LoadVersioned(ctx, "k"); err != nil || ver != 0 {
		t.Fatalf("version %d, %v", ver, err)
	}
	if err := s.StoreIfVersion(ctx, "k", []byte("new"), 0, 5); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LoadVersioned(ctx, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key: %v", err)
	}
}
