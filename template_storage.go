package injecttoken

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"sync/atomic"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// reloadStorage is the storage a template's Runtime holds for its whole
// life. A config reload hands out a new storage value (and the old config's
// is cleaned up, which for a networked storage closes its connection), but
// a Runtime's Storage must not change while its sessions live; so the
// Runtime gets this stable wrapper and a reload swaps what it points at.
// A swap is only made between storages that hold the same template secret,
// which is how "the same storage" is told (see loadTemplateSecret).
type reloadStorage struct {
	cur atomic.Pointer[certmagic.Storage]
}

// versionedReloadStorage is a reloadStorage over a storage with conditional
// writes, forwarding them (the engine finds them by type assertion).
type versionedReloadStorage struct{ *reloadStorage }

// newReloadStorage wraps st; the result has conditional writes iff st has.
func newReloadStorage(st certmagic.Storage) (certmagic.Storage, *reloadStorage) {
	r := new(reloadStorage)
	r.cur.Store(&st)
	if _, ok := st.(tokencache.VersionedStorage); ok {
		return versionedReloadStorage{r}, r
	}
	return r, r
}

// swap points r at st; false when st lacks (or gains) conditional writes,
// which a running Runtime cannot be switched across.
func (r *reloadStorage) swap(st certmagic.Storage) bool {
	_, had := r.inner().(tokencache.VersionedStorage)
	if _, has := st.(tokencache.VersionedStorage); has != had {
		return false
	}
	r.cur.Store(&st)
	return true
}

func (r *reloadStorage) inner() certmagic.Storage { return *r.cur.Load() }

func (r *reloadStorage) Lock(ctx context.Context, name string) error {
	return r.inner().Lock(ctx, name)
}
func (r *reloadStorage) Unlock(ctx context.Context, name string) error {
	return r.inner().Unlock(ctx, name)
}
func (r *reloadStorage) Store(ctx context.Context, key string, value []byte) error {
	return r.inner().Store(ctx, key, value)
}
func (r *reloadStorage) Load(ctx context.Context, key string) ([]byte, error) {
	return r.inner().Load(ctx, key)
}
func (r *reloadStorage) Delete(ctx context.Context, key string) error {
	return r.inner().Delete(ctx, key)
}
func (r *reloadStorage) Exists(ctx context.Context, key string) bool {
	return r.inner().Exists(ctx, key)
}
func (r *reloadStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	return r.inner().List(ctx, path, recursive)
}
func (r *reloadStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	return r.inner().Stat(ctx, key)
}

func (v versionedReloadStorage) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	return v.inner().(tokencache.VersionedStorage).LoadVersioned(ctx, key)
}
func (v versionedReloadStorage) StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error {
	return v.inner().(tokencache.VersionedStorage).StoreIfVersion(ctx, key, value, prev, next)
}

// templateSecretSize is the length of a template's HMAC secret.
const templateSecretSize = 32

// templateSecretKey is where template name's HMAC secret is stored.
func templateSecretKey(name string) string {
	return tokencache.SessionDir(name) + "/hmac_secret"
}

// loadTemplateSecret returns the HMAC secret of template name (see
// tokencache.Template.Secret), creating it on first use: 32 random bytes
// stored under inject_token/<template>/hmac_secret. It is created under
// the storage lock of that key and re-read inside it, so instances sharing
// storage that start together agree on one secret. st is the template's
// sealed storage: with a seal key the secret is sealed like every token,
// and survives a seal key rotation (it is re-sealed, never re-derived),
// which a secret derived from the seal key would not: every session of the
// template would be orphaned by the rotation.
func loadTemplateSecret(ctx context.Context, st certmagic.Storage, name string) ([]byte, error) {
	key := templateSecretKey(name)
	load := func() ([]byte, error) {
		v, err := st.Load(ctx, key)
		if err != nil {
			return nil, err
		}
		if len(v) != templateSecretSize {
			return nil, fmt.Errorf("stored template secret %s has %d bytes, want %d", key, len(v), templateSecretSize)
		}
		return v, nil
	}
	if v, err := load(); !errors.Is(err, fs.ErrNotExist) {
		return v, err
	}
	if err := st.Lock(ctx, key); err != nil {
		return nil, fmt.Errorf("locking %s: %w", key, err)
	}
	defer func() { _ = st.Unlock(context.WithoutCancel(ctx), key) }()
	if v, err := load(); !errors.Is(err, fs.ErrNotExist) {
		return v, err // another instance created it meanwhile
	}
	v := make([]byte, templateSecretSize)
	_, _ = rand.Read(v)
	if err := st.Store(ctx, key, v); err != nil {
		return nil, fmt.Errorf("storing %s: %w", key, err)
	}
	return v, nil
}
