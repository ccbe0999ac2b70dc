// Package filecas gives Caddy's file_system storage (certmagic.FileStorage)
// conditional writes: a value stored only if the version beside it is
// still the one the writer read (tokencache.VersionedStorage).
//
// The value stays where FileStorage keeps it, byte for byte, so every
// other reader (certmagic, Load, List) sees it unchanged. Its version lives
// in a small file under <root>/versions/, and each compare-and-write runs
// under flock(2) on a lock file beside it. flock is held by the kernel, not
// leased: a process that stalls inside the few file operations of a write
// makes the others wait instead of losing its lock, and a crash releases
// it. Readers take the lock shared, so a value and its version are always
// read together.
//
// This is atomic among processes of one host. On NFS, flock is emulated
// with NFS byte-range locks (NFSv4: leased by the server; NFSv3: the NLM
// lock manager, unless mounted nolock, where locks are local only); see
// docs/storage-guarantees.md.
package filecas

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// Storage is FileStorage with conditional writes.
type Storage struct {
	*certmagic.FileStorage
}

// New wraps fs.
func New(fs *certmagic.FileStorage) *Storage { return &Storage{FileStorage: fs} }

// versionsDir holds the version and lock files, outside the key tree so
// that listings of keys never show them.
const versionsDir = "versions"

func (s *Storage) versionFile(key string) string {
	return filepath.Join(s.Path, versionsDir, filepath.FromSlash(key)+".version")
}

// LoadVersioned returns the value at key and its version (0 when the
// value was stored without one).
func (s *Storage) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	unlock, err := s.lock(ctx, key, false)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	v, err := s.FileStorage.Load(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	ver, err := s.version(key)
	return v, ver, err
}

// StoreIfVersion stores value with version next only if key's version is
// prev; otherwise it returns an error wrapping fs.ErrExist.
func (s *Storage) StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error {
	unlock, err := s.lock(ctx, key, true)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := s.version(key)
	if err != nil {
		return err
	}
	if cur != prev {
		return fmt.Errorf("%s is at version %d, not %d: %w", key, cur, prev, fs.ErrExist)
	}
	// Value first: a crash between the two leaves the new value under the
	// old version, which the next writer (it read both) simply replaces.
	if err := s.FileStorage.Store(ctx, key, value); err != nil {
		return err
	}
	return s.FileStorage.Store(ctx, path(versionsDir, key)+".version", []byte(strconv.FormatInt(next, 10)))
}

func path(dir, key string) string { return dir + "/" + key }

// version reads key's version; none is 0.
func (s *Storage) version(key string) (int64, error) {
	b, err := os.ReadFile(s.versionFile(key))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("version of %s unreadable: %w", key, err)
	}
	return n, nil
}

// Delete removes key and its version, so a key stored again starts over
// at version 0 as its writer, having read it missing, expects.
func (s *Storage) Delete(ctx context.Context, key string) error {
	err := s.FileStorage.Delete(ctx, key)
	// key may be a directory: its keys' versions go with it.
	dir := filepath.Join(s.Path, versionsDir, filepath.FromSlash(key))
	for _, name := range []string{s.versionFile(key), dir} {
		if rerr := os.RemoveAll(name); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// lockPoll is how often a held flock is retried while ctx allows.
const lockPoll = 2 * time.Millisecond

// lock takes the flock beside key's version, exclusive or shared.
func (s *Storage) lock(ctx context.Context, key string, exclusive bool) (func(), error) {
	name := s.versionFile(key) + ".lock"
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := flock(f, exclusive)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, errWouldBlock) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", name, err)
		}
		t := time.NewTimer(lockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = f.Close()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Interface guard: FileStorage's other methods pass through.
var _ certmagic.Storage = (*Storage)(nil)
