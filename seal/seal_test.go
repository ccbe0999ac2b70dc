package seal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
)

func newKeyBytes(t testing.TB) []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustSealer(t testing.TB, cur []byte, prev ...[]byte) *Sealer {
	s, err := New(cur, prev...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseKey(t *testing.T) {
	raw := newKeyBytes(t)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		k, err := ParseKey(" " + enc.EncodeToString(raw) + "\n") // {file.*} keeps the newline
		if err != nil || !bytes.Equal(k, raw) {
			t.Errorf("ParseKey(%v) = %x, %v", enc, k, err)
		}
	}
	for _, bad := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(raw[:16]), "c2VjcmV0LXNob3J0"} {
		_, err := ParseKey(bad)
		if err == nil || (bad != "" && strings.Contains(err.Error(), bad)) {
			t.Errorf("ParseKey(%q) = %v, want an error not quoting it", bad, err)
		}
	}
}

// TestSealOpen: a value opens only under the key it was sealed for, with
// the current or a previous key; rotation seals with the new one; other
// keys, plain values, missing keys and tampering are clear errors.
func TestSealOpen(t *testing.T) {
	oldKey, newKey, otherKey := newKeyBytes(t), newKeyBytes(t), newKeyBytes(t)
	plain := []byte(`{"refresh_token":"rt-PLAIN-SECRET"}`)
	const aad = "inject_token/billing/state.json"

	old := mustSealer(t, oldKey)
	v, err := old.Seal(plain, aad)
	if err != nil {
		t.Fatal(err)
	}
	if !Sealed(v) || bytes.Contains(v, []byte("rt-PLAIN-SECRET")) || bytes.Contains(v, oldKey) {
		t.Fatalf("sealed value holds plain text or key: %s", v)
	}
	if got, err := old.Open(v, aad); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v", got, err)
	}

	// Swapped between sessions: the storage key is authenticated.
	if _, err := old.Open(v, "inject_token/other/state.json"); !errors.Is(err, ErrForged) {
		t.Errorf("record under another storage key: %v, want ErrForged", err)
	}
	// Tampered.
	bad := bytes.Clone(v)
	bad[len(bad)-3] ^= 1
	if _, err := old.Open(bad, aad); !errors.Is(err, ErrForged) {
		t.Errorf("tampered: %v, want ErrForged", err)
	}

	// Rotation: the new key seals, the old one still opens old values.
	rot := mustSealer(t, newKey, oldKey)
	if got, err := rot.Open(v, aad); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("previous key does not open: %q, %v", got, err)
	}
	v2, _ := rot.Seal(plain, aad)
	if _, err := old.Open(v2, aad); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("re-sealed value opened with the old key only: %v", err)
	}
	if !strings.Contains(string(v2), KeyID(newKey)) {
		t.Errorf("re-sealed value does not name the new key: %s", v2)
	}

	// A wrong key: clear, names key IDs only.
	_, err = mustSealer(t, otherKey).Open(v, aad)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), KeyID(oldKey)) ||
		strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(oldKey)) {
		t.Errorf("wrong key: %v", err)
	}
	// No key configured, or a plain value where sealing is required.
	var none *Sealer
	if _, err := none.Open(v, aad); !errors.Is(err, ErrNoKey) {
		t.Errorf("nil sealer on sealed value: %v", err)
	}
	if _, err := old.Open(plain, aad); !errors.Is(err, ErrNotSealed) {
		t.Errorf("plain value with a key: %v", err)
	}
	migrating := mustSealer(t, oldKey)
	migrating.AcceptPlain = true
	if got, err := migrating.Open(plain, aad); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("AcceptPlain: %q, %v", got, err)
	}
	if got, err := none.Open(plain, aad); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("nil sealer on plain value: %q, %v", got, err)
	}
	if old.ID() == rot.ID() || old.ID() != mustSealer(t, oldKey).ID() || none.ID() != "" {
		t.Error("ID does not tell configurations apart")
	}
}

// TestStorage: values under the prefix are sealed on disk (real file
// storage) and open on Load; others pass through; Check reports a wrong
// key for a whole directory.
func TestStorage(t *testing.T) {
	dir := t.TempDir()
	fs0 := &certmagic.FileStorage{Path: dir}
	k := newKeyBytes(t)
	st := Storage{Storage: fs0, Sealer: mustSealer(t, k), Prefix: "inject_token/"}
	ctx := context.Background()
	secret := []byte("rt-ON-DISK-SECRET")
	if err := st.Store(ctx, "inject_token/a/state.json", secret); err != nil {
		t.Fatal(err)
	}
	if err := st.Store(ctx, "certificates/x", []byte("plain-cert")); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, "inject_token", "a", "state.json"))
	if err != nil || bytes.Contains(onDisk, secret) || !Sealed(onDisk) {
		t.Fatalf("on disk: %q, %v", onDisk, err)
	}
	if got, err := st.Load(ctx, "inject_token/a/state.json"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Load = %q, %v", got, err)
	}
	if got, err := st.Load(ctx, "certificates/x"); err != nil || string(got) != "plain-cert" {
		t.Fatalf("pass-through Load = %q, %v", got, err)
	}
	if err := st.Check(ctx, "inject_token/a"); err != nil {
		t.Fatalf("Check with the right key: %v", err)
	}
	if err := st.Check(ctx, "inject_token/none"); err != nil {
		t.Fatalf("Check of an empty directory: %v", err)
	}
	wrong := Storage{Storage: fs0, Sealer: mustSealer(t, newKeyBytes(t)), Prefix: "inject_token/"}
	err = wrong.Check(ctx, "inject_token/a")
	if !errors.Is(err, ErrUnknownKey) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Check with a wrong key: %v", err)
	}
	if _, err := wrong.Load(ctx, "inject_token/a/state.json"); errors.Is(err, fs.ErrNotExist) || err == nil {
		t.Fatalf("a value that does not open must not look absent: %v", err)
	}
}

// FuzzOpen: whatever a hostile or corrupted storage holds, Open answers
// with the plain value it sealed or an error, never a panic.
func FuzzOpen(f *testing.F) {
	k := make([]byte, KeySize)
	s := mustSealer(f, k)
	good, _ := s.Seal([]byte("value"), "k")
	f.Add(good, "k")
	f.Add([]byte(prefix+"0000:"), "k")
	f.Add([]byte(prefix), "")
	f.Add([]byte(prefix+KeyID(k)+":AAAA"), "k")
	f.Add([]byte("plain"), "k")
	f.Fuzz(func(t *testing.T, v []byte, aad string) {
		if _, err := s.Open(v, aad); err == nil && !Sealed(v) {
			t.Fatalf("opened a value that is not sealed: %q", v)
		} else if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}

// gcmWrapper wraps data keys with AES-GCM under an in-memory key, as an
// HSM's wrapping key does in the token.
type gcmWrapper struct{ k key }

func newGCMWrapper(t testing.TB) gcmWrapper {
	k, err := newKey(newKeyBytes(t))
	if err != nil {
		t.Fatal(err)
	}
	return gcmWrapper{k}
}

func (w gcmWrapper) WrapperID() string { return "test-wrapper" }

func (w gcmWrapper) Wrap(dk []byte) ([]byte, error) {
	nonce := make([]byte, w.k.aead.NonceSize())
	rand.Read(nonce)
	return w.k.aead.Seal(nonce, nonce, dk, nil), nil
}

func (w gcmWrapper) Unwrap(b []byte) ([]byte, error) {
	n := w.k.aead.NonceSize()
	if len(b) < n {
		return nil, errors.New("short")
	}
	return w.k.aead.Open(nil, b[:n], b[n:], nil)
}

// TestEnvelope: each value gets its own data key, stored only wrapped; a
// value opens under its storage key with the same wrapping key, not under
// another wrapping key of the same name (ErrUnwrap) nor moved (ErrForged);
// raw previous keys still open older values.
func TestEnvelope(t *testing.T) {
	w, fileKey := newGCMWrapper(t), newKeyBytes(t)
	plain := []byte(`{"refresh_token":"rt-PLAIN-SECRET"}`)
	const aad = "inject_token/u/alice/state.json"
	s, err := NewEnvelope(w, fileKey)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Seal(plain, aad)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Seal(plain, aad)
	if bytes.Contains(a, plain) || bytes.Equal(a[:60], b[:60]) {
		t.Fatalf("two seals share a wrapped data key or show the value: %s / %s", a, b)
	}
	if !bytes.HasPrefix(a, []byte(prefix+"test-wrapper:")) {
		t.Fatalf("sealed value %s does not name the wrapping key", a)
	}
	again, _ := NewEnvelope(w)
	if got, err := again.Open(a, aad); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open after restart = %q, %v", got, err)
	}
	if _, err := again.Open(a, "inject_token/u/bob/state.json"); !errors.Is(err, ErrForged) {
		t.Errorf("moved value: %v, want ErrForged", err)
	}
	other, _ := NewEnvelope(newGCMWrapper(t))
	if _, err := other.Open(a, aad); !errors.Is(err, ErrUnwrap) {
		t.Errorf("other wrapping key: %v, want ErrUnwrap", err)
	}
	old, _ := mustSealer(t, fileKey).Seal(plain, aad)
	if got, err := s.Open(old, aad); err != nil || !bytes.Equal(got, plain) || !s.stale(old) || s.stale(a) {
		t.Errorf("previous file key: %q, %v; stale %t/%t", got, err, s.stale(old), s.stale(a))
	}
}
