// Package redisstore is a certmagic.Storage on Redis, built so this
// project's token engine can be tested against a real networked store: the
// drills in interop/drills run several Caddy processes on one Redis and cut,
// slow down, pause and wipe it. It is not meant for production and is not
// registered in cmd/caddy; interop/cmd/caddy-redis builds a Caddy with it.
//
// It follows the protocol of the widely used Caddy Redis storage module
// (pberkel/caddy-storage-redis), because that is what a cluster of Caddy
// instances meets in practice:
//
//   - every key is stored under a prefix ("caddy" by default), as a JSON
//     envelope holding the value and its modification time;
//   - a lock is a key <prefix>/locks/<name> taken with SET NX PX by
//     github.com/bsm/redislock, i.e. a lease: it expires after LockTTL
//     unless its holder refreshes it, which a goroutine does every
//     LockRefresh while the lock is held;
//   - Lock polls every LockPoll while another holder has the lease, and
//     Unlock releases by compare-and-delete, so it never frees a lease that
//     expired and was taken by someone else.
//
// A lease is only as good as its holder's clock and liveness: a holder
// paused longer than LockTTL (GC, VM freeze, SIGSTOP) loses the lock without
// knowing it. The engine must not rely on the lock alone; the drills check
// that it does not.
package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults of Options, the same as the Caddy Redis storage module's.
const (
	DefaultKeyPrefix   = "caddy"
	DefaultLockTTL     = 5 * time.Second
	DefaultLockRefresh = 3 * time.Second
	DefaultLockPoll    = time.Second
	DefaultTimeout     = 5 * time.Second
)

// Options configure a Storage.
type Options struct {
	// Addr is the Redis server's host:port.
	Addr string
	// KeyPrefix is prepended to every key, so several applications can
	// share one Redis database. Default "caddy".
	KeyPrefix string
	// LockTTL is the lease length: a lock whose holder stops refreshing
	// it expires after this long. Default 5s.
	LockTTL time.Duration
	// LockRefresh is how often a held lock's lease is renewed; it must be
	// shorter than LockTTL. Default 3s.
	LockRefresh time.Duration
	// LockPoll is how often Lock retries while another holder has the
	// lease. Default 1s.
	LockPoll time.Duration
	// Timeout bounds dialling and each read or write on the connection.
	// Default 5s.
	Timeout time.Duration
	// Owner is stored with every lock this Storage takes (after the
	// lease's random token), so an operator or a test can see who holds
	// it. Default "<hostname>:<pid>".
	Owner string
	// Logger receives a warning when a held lease could not be renewed
	// or turned out to be lost. Default: no logging.
	Logger *zap.Logger
}

func (o *Options) setDefaults() error {
	if o.Addr == "" {
		return errors.New("redisstore: address is required")
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.LockTTL <= 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.LockRefresh <= 0 {
		o.LockRefresh = min(DefaultLockRefresh, o.LockTTL*3/5)
	}
	if o.LockRefresh >= o.LockTTL {
		return fmt.Errorf("redisstore: lock_refresh %v must be shorter than lock_ttl %v", o.LockRefresh, o.LockTTL)
	}
	if o.LockPoll <= 0 {
		o.LockPoll = DefaultLockPoll
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Owner == "" {
		host, _ := os.Hostname()
		o.Owner = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	return nil
}

// Storage is a certmagic.Storage on one Redis server. Its zero value is not
// usable; call New.
type Storage struct {
	opts   Options
	client *redis.Client
	locker *redislock.Client

	mu    sync.Mutex
	locks map[string]*heldLock // by lock key
}

// heldLock is a lease this Storage holds and the goroutine renewing it.
type heldLock struct {
	lock *redislock.Lock
	stop context.CancelFunc
	done chan struct{}
}

var _ certmagic.Storage = (*Storage)(nil)

// New connects lazily: no I/O happens until the first operation, so a
// Caddy config with this storage loads while Redis is down.
func New(opts Options) (*Storage, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	client := redis.NewClient(&redis.Options{
		Addr:         opts.Addr,
		DialTimeout:  opts.Timeout,
		ReadTimeout:  opts.Timeout,
		WriteTimeout: opts.Timeout,
		// One retry: a connection the server (or a fault) closed is
		// replaced at once, but an outage is reported, not hidden.
		MaxRetries: 1,
		// go-redis sends CLIENT SETINFO by default; the fault drills
		// count calls, and this keeps every connection's first call a
		// real one.
		DisableIdentity: true,
	})
	return &Storage{
		opts:   opts,
		client: client,
		locker: redislock.New(client),
		locks:  make(map[string]*heldLock),
	}, nil
}

// Close stops renewing every lease still held and closes the connections.
// The leases themselves expire on their own.
func (s *Storage) Close() error {
	s.mu.Lock()
	held := s.locks
	s.locks = make(map[string]*heldLock)
	s.mu.Unlock()
	for _, h := range held {
		h.stop()
		<-h.done
	}
	return s.client.Close()
}

// envelope is what a value is stored as: the module's StorageData without
// its compression and encryption flags, which this package never sets.
type envelope struct {
	Value    []byte    `json:"value"`
	Modified time.Time `json:"modified"`
	Size     int64     `json:"size"`
	// Version is compared by StoreIfVersion; the module's decoder
	// ignores it, so both can share one Redis.
	Version int64 `json:"version,omitempty"`
}

func (s *Storage) key(k string) string { return path.Join(s.opts.KeyPrefix, k) }

func (s *Storage) lockKey(name string) string { return s.key(path.Join("locks", name)) }

// Store writes value under key.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	b, err := json.Marshal(envelope{Value: value, Modified: time.Now(), Size: int64(len(value))})
	if err != nil {
		return err
	}
	if err := s.client.Set(ctx, s.key(key), b, 0).Err(); err != nil {
		return fmt.Errorf("redisstore: storing %s: %w", key, err)
	}
	return nil
}

func (s *Storage) load(ctx context.Context, key string) (envelope, error) {
	var e envelope
	b, err := s.client.Get(ctx, s.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return e, fmt.Errorf("redisstore: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return e, fmt.Errorf("redisstore: loading %s: %w", key, err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("redisstore: decoding %s: %w", key, err)
	}
	return e, nil
}

// storeIfVersion sets KEYS[1] to ARGV[2] only if the version in the JSON
// envelope it holds (0: none, or missing) is ARGV[1]; it returns -1 when
// it did, else the version found. One script, so atomic on the server.
var storeIfVersion = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then
	local ok, e = pcall(cjson.decode, cur)
	if ok and type(e) == 'table' and tonumber(e.version) then v = tonumber(e.version) end
end
if v ~= tonumber(ARGV[1]) then return v end
redis.call('SET', KEYS[1], ARGV[2])
return -1
`)

// LoadVersioned returns the value under key and its version (see
// tokencache.VersionedStorage).
func (s *Storage) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	e, err := s.load(ctx, key)
	return e.Value, e.Version, err
}

// StoreIfVersion stores value with version next only if key's version is
// prev; otherwise an error wrapping fs.ErrExist. A failed call (a reply
// timeout) may or may not have stored it.
func (s *Storage) StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error {
	b, err := json.Marshal(envelope{Value: value, Modified: time.Now(), Size: int64(len(value)), Version: next})
	if err != nil {
		return err
	}
	cur, err := storeIfVersion.Run(ctx, s.client, []string{s.key(key)}, prev, b).Int64()
	switch {
	case err != nil:
		return fmt.Errorf("redisstore: storing %s: %w", key, err)
	case cur != -1:
		return fmt.Errorf("redisstore: %s is at version %d, not %d: %w", key, cur, prev, fs.ErrExist)
	}
	return nil
}

// Load returns the value under key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	e, err := s.load(ctx, key)
	return e.Value, err
}

// Delete removes key and, like certmagic's FileStorage, everything under
// it. Deleting a key that does not exist is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	keys, err := s.List(ctx, key, true)
	if err != nil {
		return err
	}
	redisKeys := []string{s.key(key)}
	for _, k := range keys {
		redisKeys = append(redisKeys, s.key(k))
	}
	if err := s.client.Del(ctx, redisKeys...).Err(); err != nil {
		return fmt.Errorf("redisstore: deleting %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key holds a value; an unreachable Redis reads as
// false, as certmagic's interface leaves no room for an error.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	n, err := s.client.Exists(ctx, s.key(key)).Result()
	return err == nil && n > 0
}

// List returns the keys under dir: its direct children, or with recursive
// every key below it. It scans instead of keeping the module's directory
// index, which is fine for the handful of keys a test stores.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	prefix := s.key(dir) + "/"
	locks := s.key("locks") + "/"
	seen := make(map[string]bool)
	var out []string
	iter := s.client.Scan(ctx, 0, escapeGlob(prefix)+"*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasPrefix(k, locks) {
			continue
		}
		rel := strings.TrimPrefix(k, prefix)
		if i := strings.IndexByte(rel, '/'); i >= 0 && !recursive {
			rel = rel[:i]
		}
		name := path.Join(dir, rel)
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("redisstore: listing %s: %w", dir, err)
	}
	return out, nil
}

// escapeGlob quotes the characters SCAN MATCH treats specially.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Stat returns what is known about key.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	e, err := s.load(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, Modified: e.Modified, Size: e.Size, IsTerminal: true}, nil
}

// Lock takes the lease on name, polling every LockPoll until it is free or
// ctx ends, and keeps it renewed until Unlock.
func (s *Storage) Lock(ctx context.Context, name string) error {
	key := s.lockKey(name)
	for {
		lock, err := s.locker.Obtain(ctx, key, s.opts.LockTTL, &redislock.Options{Metadata: s.opts.Owner})
		if err == nil {
			s.hold(key, lock)
			return nil
		}
		if !errors.Is(err, redislock.ErrNotObtained) {
			return fmt.Errorf("redisstore: locking %s: %w", name, err)
		}
		t := time.NewTimer(s.opts.LockPoll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// hold renews lock every LockRefresh until Unlock or Close stops it, or the
// lease turns out to be lost (it expired and someone else may have it).
// A failed renewal is retried at the next tick: the lease may still be
// valid, and giving up early would only shorten it.
func (s *Storage) hold(key string, lock *redislock.Lock) {
	ctx, stop := context.WithCancel(context.Background())
	h := &heldLock{lock: lock, stop: stop, done: make(chan struct{})}
	s.mu.Lock()
	if old := s.locks[key]; old != nil {
		// A lease this process lost to expiry and took again: the old
		// renewer would only fail.
		old.stop()
	}
	s.locks[key] = h
	s.mu.Unlock()
	go func() {
		defer close(h.done)
		t := time.NewTicker(s.opts.LockRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := lock.Refresh(ctx, s.opts.LockTTL, nil)
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, redislock.ErrNotObtained):
				// The holder goes on believing it has the lock: only the
				// caller's own fencing can save it now.
				s.opts.Logger.Warn("lock lease lost while held", zap.String("key", key))
				return
			default:
				s.opts.Logger.Warn("renewing lock lease", zap.String("key", key), zap.Error(err))
			}
		}
	}()
}

// Unlock stops renewing the lease on name and releases it if this Storage
// still holds it. A lease that already expired is not an error, as in the
// module: there is nothing left to release.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	key := s.lockKey(name)
	s.mu.Lock()
	h := s.locks[key]
	delete(s.locks, key)
	s.mu.Unlock()
	if h == nil {
		return nil
	}
	h.stop()
	<-h.done
	if err := h.lock.Release(ctx); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
		return fmt.Errorf("redisstore: unlocking %s: %w", name, err)
	}
	return nil
}

// String identifies the storage in Caddy's logs.
func (s *Storage) String() string {
	return fmt.Sprintf("redis://%s/%s", s.opts.Addr, s.opts.KeyPrefix)
}
