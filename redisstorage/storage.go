// Package redisstorage is a Caddy storage module on Redis
// (caddy.storage.inject_token_redis) for certificates and inject_token's
// sessions alike, with the conditional write the token engine uses instead
// of write claims (tokencache.VersionedStorage).
//
// It keeps the key layout of the common Caddy Redis storage module
// (pberkel/caddy-storage-redis), so both can share one Redis and read each
// other's keys:
//
//   - a value is the JSON envelope {"value","modified","size",...} at
//     <prefix>/<key>; this package adds "version" beside the value, which
//     the other module's decoder ignores;
//   - every directory is a sorted set at <prefix>/<dir> of its children
//     (directories with a trailing "/"), which List reads; writes keep it;
//   - a lock is a lease at <prefix>/locks/<name>, taken with SET NX PX and
//     a random token, renewed while held, released by compare-and-delete.
//
// Values the other module stored compressed are read; values it encrypted
// with its encryption_key are not (use inject_token's seal_key instead).
package redisstorage

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Storage is a certmagic.Storage on one Redis database. Storages of
// several configs with the same connection settings share one client and
// one table of held leases (see pool.go), so a lock taken under one config
// can be released under the next.
type Storage struct {
	conn   *conn
	prefix string
	lease  leaseTimes
}

// envelope is a stored value: the common module's StorageData, plus the
// version StoreIfVersion compares.
type envelope struct {
	Value       []byte    `json:"value"`
	Modified    time.Time `json:"modified"`
	Size        int64     `json:"size"`
	Compression int       `json:"compression"`
	Encryption  int       `json:"encryption"`
	Version     int64     `json:"version,omitempty"`
}

// The common module's compression flags.
const (
	compressionFlate = 1
	compressionZlib  = 2
	// maxValue bounds a decompressed value, as the common module does.
	maxValue = 4 << 20
)

func (s *Storage) key(k string) string { return path.Join(s.prefix, k) }

// index lists, from the key up, the directory sets that hold key and its
// member in each: "a/b/c" is "c" in <prefix>/a/b, "b/" in <prefix>/a, and
// so on up to the prefix's own set, as the common module walks them.
func index(full string) (sets, members []string) {
	base, isDir := full, false
	for {
		dir := path.Dir(base)
		if dir == "." || dir == "/" {
			return sets, members
		}
		m := path.Base(base)
		if isDir {
			m += "/"
		}
		sets, members = append(sets, dir), append(members, m)
		base, isDir = dir, true
	}
}

// storeScript sets KEYS[1] to ARGV[1] and adds it to its directory sets
// (KEYS[2..], members ARGV[3..], score ARGV[2]), stopping at the first set
// that already had it: its parents have it too.
var storeScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, #KEYS do
	if redis.call('ZADD', KEYS[i], ARGV[2], ARGV[i+1]) == 0 then break end
end
return 1
`)

// storeIfScript sets KEYS[1] to ARGV[2] only if the version in the
// envelope it holds (0: none, or no key) is ARGV[1], and indexes a new key
// as storeScript does (members from ARGV[4], score ARGV[3]). It returns
// -1 when it stored, else the version found.
//
// SET ... GET reads and writes in one command and the rare conflict puts
// the old value back: a steady write is 2 commands (EVALSHA, SET) instead
// of 3, which is what keeps a refresh within 10 Redis commands. A script
// runs atomically, so no client ever sees the value it put back.
//
// Finding ARGV[2] itself (its modification time is to the nanosecond) is
// success: go-redis resends a command whose reply was lost, and the
// first send was applied; calling that a conflict would tell the engine
// a write it made was someone else's.
var storeIfScript = redis.NewScript(`
local old = redis.call('SET', KEYS[1], ARGV[2], 'GET')
if old == ARGV[2] then return -1 end
local v = 0
if old then
	local ok, e = pcall(cjson.decode, old)
	if ok and type(e) == 'table' and tonumber(e.version) then v = tonumber(e.version) end
end
if v ~= tonumber(ARGV[1]) then
	if old then redis.call('SET', KEYS[1], old) else redis.call('DEL', KEYS[1]) end
	return v
end
if not old then
	for i = 2, #KEYS do
		if redis.call('ZADD', KEYS[i], ARGV[3], ARGV[i+2]) == 0 then break end
	end
end
return -1
`)

// deleteScript deletes KEYS[1] and takes it out of its directory sets
// (KEYS[2..], members ARGV[1..]), going up while a set became empty
// (Redis removes an empty set).
var deleteScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
	redis.call('ZREM', KEYS[i], ARGV[i-1])
	if redis.call('EXISTS', KEYS[i]) == 1 then break end
end
return 1
`)

func (s *Storage) envelope(key string, value []byte, version int64) (b []byte, score int64, err error) {
	now := time.Now()
	b, err = json.Marshal(envelope{Value: value, Modified: now, Size: int64(len(value)), Version: version})
	return b, now.Unix(), err
}

// Store writes value under key.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	b, score, err := s.envelope(key, value, 0)
	if err != nil {
		return err
	}
	full := s.key(key)
	sets, members := index(full)
	args := append([]any{b, score}, strs(members)...)
	if err := storeScript.Run(ctx, s.conn.client, append([]string{full}, sets...), args...).Err(); err != nil {
		return fmt.Errorf("redis storage: storing %s: %w", key, err)
	}
	return nil
}

// StoreIfVersion stores value with version next only if the version stored
// beside key is still prev; otherwise it stores nothing and returns an
// error wrapping fs.ErrExist. Any other error leaves the outcome unknown.
func (s *Storage) StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error {
	b, score, err := s.envelope(key, value, next)
	if err != nil {
		return err
	}
	full := s.key(key)
	sets, members := index(full)
	args := append([]any{prev, b, score}, strs(members)...)
	cur, err := storeIfScript.Run(ctx, s.conn.client, append([]string{full}, sets...), args...).Int64()
	switch {
	case err != nil:
		return fmt.Errorf("redis storage: storing %s: %w", key, err)
	case cur != -1:
		return fmt.Errorf("redis storage: %s is at version %d, not %d: %w", key, cur, prev, fs.ErrExist)
	}
	return nil
}

func strs(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// load reads and decodes key's envelope, its value decompressed.
func (s *Storage) load(ctx context.Context, key string) (envelope, error) {
	var e envelope
	b, err := s.conn.client.Get(ctx, s.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return e, fmt.Errorf("redis storage: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return e, fmt.Errorf("redis storage: loading %s: %w", key, err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("redis storage: decoding %s: %w", key, err)
	}
	if e.Encryption != 0 {
		return e, fmt.Errorf("redis storage: %s was encrypted by another module's encryption_key, which this module does not read", key)
	}
	var r io.ReadCloser
	switch e.Compression {
	case 0:
		return e, nil
	case compressionFlate:
		r = flate.NewReader(bytes.NewReader(e.Value))
	case compressionZlib:
		if r, err = zlib.NewReader(bytes.NewReader(e.Value)); err != nil {
			return e, fmt.Errorf("redis storage: decompressing %s: %w", key, err)
		}
	default:
		return e, fmt.Errorf("redis storage: %s: unknown compression %d", key, e.Compression)
	}
	defer r.Close()
	v, err := io.ReadAll(io.LimitReader(r, maxValue+1))
	if err == nil && len(v) > maxValue {
		err = fmt.Errorf("over %d bytes", maxValue)
	}
	if err != nil {
		return e, fmt.Errorf("redis storage: decompressing %s: %w", key, err)
	}
	e.Value = v
	return e, nil
}

// Load returns the value under key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	e, err := s.load(ctx, key)
	return e.Value, err
}

// LoadVersioned returns the value under key and the version stored beside
// it (0 for a value stored without one).
func (s *Storage) LoadVersioned(ctx context.Context, key string) ([]byte, int64, error) {
	e, err := s.load(ctx, key)
	return e.Value, e.Version, err
}

// Delete removes key, or if key is a directory everything under it, and
// takes them out of the directory sets. A missing key is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	under, err := s.List(ctx, key, true)
	if err != nil && !wrongType(err) { // wrong type: a value, not a directory
		return err
	}
	for _, k := range append(under, key) {
		full := s.key(k)
		sets, members := index(full)
		if err := deleteScript.Run(ctx, s.conn.client, append([]string{full}, sets...), strs(members)...).Err(); err != nil {
			return fmt.Errorf("redis storage: deleting %s: %w", k, err)
		}
	}
	return nil
}

// Exists reports whether key is a value or a directory. An unreachable
// Redis reads as false: certmagic's interface leaves no room for an error.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	n, err := s.conn.client.Exists(ctx, s.key(key)).Result()
	return err == nil && n > 0
}

// List returns the keys in dir from its directory set: its children, or
// with recursive every value below it. A missing dir lists nothing.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	children, err := s.conn.client.ZRange(ctx, s.key(dir), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis storage: listing %s: %w", dir, err)
	}
	var out []string
	for _, c := range children {
		name := path.Join(dir, strings.TrimSuffix(c, "/"))
		if !recursive || !strings.HasSuffix(c, "/") {
			out = append(out, name)
			continue
		}
		below, err := s.List(ctx, name, true)
		if err != nil {
			return nil, err
		}
		out = append(out, below...)
	}
	return out, nil
}

// Stat returns what is known about key: a value's size and modification
// time, or that it is a directory.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	e, err := s.load(ctx, key)
	if err != nil {
		if wrongType(err) { // a directory set
			return certmagic.KeyInfo{Key: key}, nil
		}
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, Modified: e.Modified, Size: e.Size, IsTerminal: true}, nil
}

// wrongType reports Redis's answer to a value read as a directory set or
// the other way round.
func wrongType(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// String identifies the storage in Caddy's logs (no password).
func (s *Storage) String() string {
	return fmt.Sprintf("redis://%s/%d/%s", s.conn.id.Address, s.conn.id.DB, s.prefix)
}

// Interface guards.
var (
	_ certmagic.Storage           = (*Storage)(nil)
	_ tokencache.VersionedStorage = (*Storage)(nil)
)
