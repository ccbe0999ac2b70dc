package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Session states.
const (
	// StateActive means the session holds a refresh token (or can fetch
	// tokens without one) and is kept fresh.
	StateActive = "active"
	// StateLoggedOut means there is no usable session: never logged in,
	// logged out, revoked, or lost. A still-valid access token may keep
	// serving until it expires.
	StateLoggedOut = "logged_out"
	// StateLoginFailed means the session is logged out and the token server
	// refused the configured login credentials (wrong password,
	// invalid_client): automatic login is paused, since retrying cannot
	// succeed and may lock the account, until an operator logs in or
	// refreshes or a config reload changes the credentials. It is reported
	// by Status and EventState; storage keeps logged_out.
	StateLoginFailed = "login_failed"
)

// StoragePrefix is where every key this package writes lives.
const StoragePrefix = "inject_token"

// record is the durable state of a session, stored as one JSON document so
// that each write is atomic: a crash leaves either the old or the new state,
// never a mix (certmagic storages write whole values).
type record struct {
	State         string    `json:"state"`
	Reason        string    `json:"reason,omitempty"`
	NoAutoLogin   bool      `json:"no_auto_login,omitempty"`
	KeyThumbprint string    `json:"key_thumbprint,omitempty"`
	RefreshToken  string    `json:"refresh_token,omitempty"`
	RefreshExpiry time.Time `json:"refresh_expiry,omitzero"`
	AccessToken   string    `json:"access_token,omitempty"`
	TokenType     string    `json:"token_type,omitempty"`
	Expiry        time.Time `json:"expiry,omitzero"`
	IssuedAt      time.Time `json:"issued_at,omitzero"`
	// Intent is the hash of a refresh token that was about to be presented.
	// It is written before the request and cleared once the outcome is
	// known, so a crash or a lost response is detected on the next attempt
	// and the possibly spent token is never presented twice.
	Intent string `json:"intent,omitempty"`
	// DeviceID is the session's X-Device-Id (see device.go): made once and
	// carried from record to record by op.write.
	DeviceID string `json:"device_id,omitempty"`
	// Key is a run-time session's key (see Template): carried from record
	// to record by op.write, sealed with the record where the storage
	// seals, so that a listing can show whose session it is.
	Key string `json:"key,omitempty"`
	// Generation grows by one with every write; Writer is a random id of
	// the operation that wrote the record. Together they fence writes: an
	// operation writes only over the exact record it read (see
	// op.write), so an instance that lost the storage lock while stalled
	// cannot present a spent token or overwrite newer state.
	Generation int64     `json:"generation"`
	Writer     string    `json:"writer,omitempty"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
	// Format is the record layout's version (recordFormat when written by
	// this binary; absent in records older than formats). A binary refuses
	// a record of a newer format rather than misread or overwrite it.
	Format int `json:"format,omitempty"`

	// ver is the version a VersionedStorage holds beside the record (0:
	// none, or a storage without versions): the one a conditional write
	// over this record compares with.
	ver int64
	// unreadable: this stands for a stored record that could not be
	// decoded, which a login or forget replaces without comparing it.
	unreadable bool
}

// recordFormat is the record layout this binary writes. 2: written with
// conditional writes where the storage has them (see VersionedStorage);
// records without a format are 1, from binaries that relied on claims alone.
const recordFormat = 2

// ErrNewerFormat is reported for a session whose stored state was written
// by a newer release: this binary does not read or overwrite it.
var ErrNewerFormat = errors.New("session state was written by a newer release of inject_token; " +
	"nothing read or overwritten: upgrade this instance (see docs/storage-guarantees.md)")

// VersionedStorage is implemented by a storage that can write a value only
// if the version stored beside it is still the one the writer read: a
// compare-and-swap on a plain number the storage sees (values may be
// sealed with randomized AEAD, so comparing values is no use). With it the
// engine needs no write claims: a stalled instance's late write, or one
// that read through a stale cache, fails instead of overwriting newer
// state. Wrappers (seal.Storage) forward it.
type VersionedStorage interface {
	certmagic.Storage
	// LoadVersioned returns the value at key and the version stored beside
	// it (0 when the value was stored without one). A missing key is
	// fs.ErrNotExist.
	LoadVersioned(ctx context.Context, key string) (value []byte, version int64, err error)
	// StoreIfVersion stores value with version next only if the version
	// stored beside key is still prev (0: missing, or stored without one).
	// Otherwise it stores nothing and returns an error wrapping
	// fs.ErrExist. Any other error leaves the outcome unknown: the write
	// may or may not have happened.
	StoreIfVersion(ctx context.Context, key string, value []byte, prev, next int64) error
}

// errUnreadable marks a stored record that is there but cannot be decoded;
// ver is the version stored beside it, so a login can replace it with a
// conditional write.
type unreadableError struct {
	err error
	ver int64
}

func (e *unreadableError) Error() string { return e.err.Error() }
func (e *unreadableError) Unwrap() error { return e.err }

// sameWrite reports whether r and o are the same write: same generation,
// writer and intent.
func (r *record) sameWrite(o *record) bool {
	return r.Generation == o.Generation && r.Writer == o.Writer && r.Intent == o.Intent
}

// spent reports whether r records an unresolved refresh intent for its own
// refresh token: that token may have been rotated by the server and must
// never be presented again (not for a refresh, a logout or a login).
func (r *record) spent() bool {
	return r.Intent != "" && r.Intent == tokenHash(r.RefreshToken)
}

func tokenHash(tok string) string {
	if tok == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// errKeyBroken marks a stored key that exists but can never be used.
var errKeyBroken = errors.New("stored DPoP key unusable")

// store wraps a certmagic.Storage with this session's key layout. failed,
// when set, hears of every failed storage operation (for EventStorageError).
type store struct {
	s      certmagic.Storage
	name   string
	now    func() time.Time
	failed func(op string)
	keys   KeySource // nil: keys are generated and kept in storage
	// sub is the directory below inject_token/ (SessionDir's, or a
	// run-time session's <template>/<keyed hash>).
	sub string
}

func (st store) report(op string, err error) error {
	if err != nil && st.failed != nil {
		st.failed(op)
	}
	return err
}

// SessionDir is the storage directory of the session called name: every
// key the engine writes for it lives below (inject_token/<session>/).
func SessionDir(name string) string { return StoragePrefix + "/" + certmagic.StorageKeys.Safe(name) }

// IsKeyFile reports whether key is one of the sessions' DPoP key files
// (inject_token/<session>/keys/<thumbprint>.pem, or a run-time session's
// inject_token/<template>/<hash>/keys/<thumbprint>.pem): written once, at
// login, and never rewritten, unlike the state record.
func IsKeyFile(key string) bool { return inSessionDir(key, keysDir) }

// inSessionDir reports whether key is a file in the directory dir of a
// named session or of a run-time session.
func inSessionDir(key, dir string) bool {
	parts := strings.Split(key, "/")
	if len(parts) == 0 || parts[0] != StoragePrefix {
		return false
	}
	switch len(parts) {
	case 4:
		return parts[2] == dir
	case 5:
		return isHash(parts[2]) && parts[3] == dir
	}
	return false
}

const keysDir = "keys"

func (st store) dir() string       { return StoragePrefix + "/" + st.sub }
func (st store) recordKey() string { return st.dir() + "/state.json" }
func (st store) keyKey(thumbprint string) string {
	return st.dir() + "/" + keysDir + "/" + certmagic.StorageKeys.Safe(thumbprint) + ".pem"
}
func (st store) claimDir() string { return st.dir() + "/" + claimsDir }

const claimsDir = "claims"

func (st store) lockName() string {
	return StoragePrefix + "_" + strings.ReplaceAll(st.sub, "/", "_")
}

// IsClaim reports whether key is one of the engine's write claims
// (inject_token/<session>/claims/<generation>.<instance>, or below a
// run-time session's inject_token/<template>/<hash>/), which hold only
// the id of the instance that claimed (no secret).
func IsClaim(key string) bool { return inSessionDir(key, claimsDir) }

// versioned is the storage's conditional writes, or nil.
func (st store) versioned() VersionedStorage {
	v, _ := st.s.(VersionedStorage)
	return v
}

// load returns the stored record; a missing record is a fresh logged-out
// one. A record that cannot be decoded is an *unreadableError and is left
// untouched; one of a newer format is ErrNewerFormat.
func (st store) load(ctx context.Context) (*record, error) {
	var (
		data []byte
		ver  int64
		err  error
	)
	if vs := st.versioned(); vs != nil {
		data, ver, err = vs.LoadVersioned(ctx, st.recordKey())
	} else {
		data, err = st.s.Load(ctx, st.recordKey())
	}
	if errors.Is(err, fs.ErrNotExist) {
		return &record{State: StateLoggedOut, Reason: "not logged in"}, nil
	}
	if err != nil {
		return nil, st.report("load", fmt.Errorf("loading session state: %w", err))
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, &unreadableError{ver: ver, err: fmt.Errorf("session state in storage is unreadable (%s): %v", st.recordKey(), redactJSONError(err))}
	}
	if r.Format > recordFormat {
		return nil, fmt.Errorf("%w (%s has format %d; this binary reads up to %d)", ErrNewerFormat, st.recordKey(), r.Format, recordFormat)
	}
	if r.State != StateActive && r.State != StateLoggedOut {
		return nil, &unreadableError{ver: ver, err: fmt.Errorf("session state in storage has unknown state %q", r.State)}
	}
	r.ver = ver
	return &r, nil
}

// save stores r unconditionally (storages without versions).
func (st store) save(ctx context.Context, r *record) error {
	data, err := st.encode(r)
	if err != nil {
		return err
	}
	if err := st.s.Store(ctx, st.recordKey(), data); err != nil {
		return st.report("store", fmt.Errorf("storing session state: %w", err))
	}
	return nil
}

// saveIf stores r with version r.Generation only if storage still holds
// version prev; errFenced if it does not.
func (st store) saveIf(ctx context.Context, vs VersionedStorage, r *record, prev int64) error {
	data, err := st.encode(r)
	if err != nil {
		return err
	}
	err = vs.StoreIfVersion(ctx, st.recordKey(), data, prev, r.Generation)
	switch {
	case errors.Is(err, fs.ErrExist):
		return errFenced
	case err != nil:
		return st.report("store", fmt.Errorf("storing session state: %w", err))
	}
	r.ver = r.Generation
	return nil
}

func (st store) encode(r *record) ([]byte, error) {
	r.UpdatedAt, r.Format = st.now().UTC(), recordFormat
	return json.Marshal(r)
}

// claimsKept is how many generations of claims stay in storage below the
// highest one. Only claims at or above an operation's own generation
// decide anything, and the highest alone is above every stalled writer's,
// so older ones are clutter; pruning on every write keeps a session's keys
// bounded whatever its grant.
const claimsKept = 4

// listTries is how many times a claims listing is tried: one failed
// listing must not cost a session.
const listTries = 3

// claim records that writer (an instance) is about to write generation gen. Claims are
// separate keys, never overwritten, so they survive the overwrite they
// announce; see contested.
func (st store) claim(ctx context.Context, gen int64, writer string) error {
	if err := st.s.Store(ctx, st.claimKey(gen, writer), []byte(writer)); err != nil {
		return st.report("store", fmt.Errorf("storing write claim: %w", err))
	}
	return nil
}

func (st store) claimKey(gen int64, writer string) string {
	return fmt.Sprintf("%s/%020d.%s", st.claimDir(), gen, writer)
}

// delete removes key and everything under it (best effort: a failure is
// reported, a missing key is not a failure).
func (st store) delete(ctx context.Context, key string) {
	if err := st.s.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		st.report("delete", err)
	}
}

type claimEntry struct {
	key    string
	gen    int64
	writer string
}

// claims lists the write claims (tried listTries times; a missing
// directory is none) and deletes those below the highest by more than
// claimsKept. It returns what it kept and the highest generation claimed
// (-1: none).
func (st store) claims(ctx context.Context) ([]claimEntry, int64, error) {
	var (
		keys []string
		err  error
	)
	for range listTries {
		if keys, err = st.s.List(ctx, st.claimDir(), false); err == nil || errors.Is(err, fs.ErrNotExist) {
			break
		}
		st.report("list", err)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, -1, fmt.Errorf("listing write claims: %w", err)
	}
	var (
		all     []claimEntry
		highest int64 = -1
	)
	for _, k := range keys {
		g, w, ok := strings.Cut(path.Base(k), ".")
		if n, perr := strconv.ParseInt(g, 10, 64); ok && perr == nil {
			all = append(all, claimEntry{key: k, gen: n, writer: w})
			highest = max(highest, n)
		}
	}
	kept := all[:0]
	for _, e := range all {
		if e.gen < highest-claimsKept {
			st.delete(ctx, e.key)
			continue
		}
		kept = append(kept, e)
	}
	return kept, highest, nil
}

// contested reports a *contestedError if any writer other than writer has claimed
// generation gen or a later one.
//
// Without conditional writes the read that fences a write and the write
// are two steps, and an instance stalled between them past its lease
// overwrites newer state. Its own read-back then finds its own write. The
// claims do not: every writer claims, then reads the fence, then writes,
// then lists, so of two writers that both read the same record the later
// to list sees the other's claim (its claim came before the other's fence
// read, which came before its own write), and one that read an old record
// sees the claims of everyone who wrote since. This holds only while List
// tells the truth: a listing served from a stale cache can hide a claim,
// which is why conditional writes come first (see VersionedStorage).
func (st store) contested(ctx context.Context, gen int64, writer string) error {
	kept, _, err := st.claims(ctx)
	if err != nil {
		return err
	}
	claimed := int64(-1)
	for _, e := range kept {
		if e.gen >= gen && e.writer != writer {
			claimed = max(claimed, e.gen)
		}
	}
	if claimed >= 0 {
		return &contestedError{gen: gen, claimed: claimed}
	}
	return nil
}

func (st store) loadKey(ctx context.Context, thumbprint string) (*dpop.Key, error) {
	if st.keys != nil {
		return st.sourcedKey(ctx, thumbprint)
	}
	data, err := st.s.Load(ctx, st.keyKey(thumbprint))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			st.report("load", err)
		}
		return nil, fmt.Errorf("loading DPoP key %s: %w", thumbprint, err)
	}
	k, err := dpop.ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeyBroken, err)
	}
	if k.Thumbprint() != thumbprint {
		return nil, fmt.Errorf("%w: stored DPoP key does not match thumbprint %s", errKeyBroken, thumbprint)
	}
	return k, nil
}

func (st store) saveKey(ctx context.Context, k *dpop.Key) error {
	pem, err := k.MarshalPEM()
	if err != nil {
		return err
	}
	if err := st.s.Store(ctx, st.keyKey(k.Thumbprint()), pem); err != nil {
		return st.report("store", fmt.Errorf("storing DPoP key: %w", err))
	}
	return nil
}

func (st store) deleteKey(ctx context.Context, thumbprint string) {
	if thumbprint != "" {
		st.delete(ctx, st.keyKey(thumbprint))
	}
}

// redactJSONError keeps a JSON decoding error from quoting stored secrets:
// syntax errors carry only offsets, but type errors may echo values.
func redactJSONError(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at offset %d", se.Offset)
	}
	msg := err.Error()
	if i := strings.Index(msg, ":"); i > 0 {
		return msg[:i]
	}
	return "invalid JSON"
}
