package seal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/caddyserver/certmagic"
)

// Storage is a certmagic.Storage that seals every value stored under
// Prefix with Sealer, using the value's storage key as additional data,
// and opens them on Load. Other keys, locks, listing and metadata pass
// through. With a nil Sealer values are stored plain, and a sealed value
// found under Prefix is a clear error rather than garbage for the caller
// to misread.
type Storage struct {
	certmagic.Storage
	Sealer *Sealer
	Prefix string
	// Immutable, when set, reports keys whose value never changes once
	// written (a DPoP key file named by its thumbprint). Such a value
	// opened with a previous key, or plain, is re-sealed with the current
	// key when loaded, since no later write would do it; rewriting a
	// mutable value outside its owner's lock could undo a newer write.
	Immutable func(key string) bool
	// Plain, when set, reports keys under Prefix that hold no secret and
	// are stored as they are (the engine's write claims): sealing them
	// would only make a plain one left from before sealing was turned on
	// fail the load-time check.
	Plain func(key string) bool
}

func (s Storage) sealed(key string) bool {
	return strings.HasPrefix(key, s.Prefix) && (s.Plain == nil || !s.Plain(key))
}

// Store seals value when key is under Prefix.
func (s Storage) Store(ctx context.Context, key string, value []byte) error {
	value, err := s.seal(key, value)
	if err != nil {
		return err
	}
	return s.Storage.Store(ctx, key, value)
}

// seal seals value when key is under Prefix.
func (s Storage) seal(key string, value []byte) ([]byte, error) {
	if !s.sealed(key) {
		return value, nil
	}
	v, err := s.Sealer.Seal(value, key)
	if err != nil {
		return nil, fmt.Errorf("sealing %s: %w", key, err)
	}
	return v, nil
}

// Load opens the value when key is under Prefix. An error opening it
// (see Open's errors) is not fs.ErrNotExist: the value is there and must
// not be taken for absent.
func (s Storage) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := s.Storage.Load(ctx, key)
	if err != nil || !s.sealed(key) {
		return v, err
	}
	plain, err := s.Sealer.Open(v, key)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", key, err)
	}
	if s.Immutable != nil && s.Immutable(key) && s.Sealer.stale(v) {
		// Best effort: the value is read either way, and the next load
		// tries again.
		_ = s.Store(ctx, key, plain)
	}
	return plain, nil
}

// Check opens every value under dir (a storage prefix such as one
// session's directory), so that a wrong or missing key is reported when a
// config loads instead of when the session is next used.
func (s Storage) Check(ctx context.Context, dir string) error {
	keys, err := s.Storage.List(ctx, dir, true)
	if err != nil {
		return nil // nothing stored yet (or unlistable: Load will tell)
	}
	for _, k := range keys {
		if info, err := s.Storage.Stat(ctx, k); err == nil && !info.IsTerminal || !s.sealed(k) {
			continue
		}
		if _, err := s.Load(ctx, k); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// versioned is a storage with conditional writes (the methods of
// tokencache.VersionedStorage, named here so seal need not import it).
type versioned interface {
	LoadVersioned(ctx context.Context, key string) ([]byte, int64, error)
	StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error
}

// Versioned is Storage over a storage with conditional writes, which it
// forwards, sealing and opening values as Store and Load do. The version
// is a plain number the storage keeps beside the sealed value: sealing is
// randomized, so comparing values could never work.
type Versioned struct {
	Storage
}

// WithVersions is s as a Versioned when the storage it wraps has
// conditional writes, else s.
func (s Storage) WithVersions() certmagic.Storage {
	if _, ok := s.Storage.(versioned); ok {
		return Versioned{s}
	}
	return s
}

// LoadVersioned is Load with the version stored beside the value.
func (s Versioned) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	v, ver, err := s.Storage.Storage.(versioned).LoadVersioned(ctx, key)
	if err != nil || !s.sealed(key) {
		return v, ver, err
	}
	plain, err := s.Sealer.Open(v, key)
	if err != nil {
		return nil, ver, fmt.Errorf("opening %s: %w", key, err)
	}
	return plain, ver, nil
}

// StoreIfVersion is Store, only if the version beside key is still prev.
func (s Versioned) StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error {
	value, err := s.seal(key, value)
	if err != nil {
		return err
	}
	return s.Storage.Storage.(versioned).StoreIfVersion(ctx, key, value, prev, next)
}

// Interface guards
var (
	_ certmagic.Storage = Storage{}
	_ versioned         = Versioned{}
)
