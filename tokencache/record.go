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
	// Generation grows by one with every write; Writer is a random id of
	// the operation that wrote the record. Together they fence writes: an
	// operation writes only over the exact record it read (see
	// op.write), so an instance that lost the storage lock while stalled
	// cannot present a spent token or overwrite newer state.
	Generation int64     `json:"generation"`
	Writer     string    `json:"writer,omitempty"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}

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
}

func (st store) report(op string, err error) error {
	if err != nil && st.failed != nil {
		st.failed(op)
	}
	return err
}

func (st store) dir() string       { return StoragePrefix + "/" + certmagic.StorageKeys.Safe(st.name) }
func (st store) recordKey() string { return st.dir() + "/state.json" }
func (st store) keyKey(thumbprint string) string {
	return st.dir() + "/keys/" + certmagic.StorageKeys.Safe(thumbprint) + ".pem"
}
func (st store) claimDir() string { return st.dir() + "/" + claimsDir }

const claimsDir = "claims"

func (st store) lockName() string { return StoragePrefix + "_" + certmagic.StorageKeys.Safe(st.name) }

// IsClaim reports whether key is one of the engine's write claims
// (inject_token/<session>/claims/<generation>.<instance>), which hold only
// the id of the instance that claimed (no secret).
func IsClaim(key string) bool {
	parts := strings.Split(key, "/")
	return len(parts) == 4 && parts[0] == StoragePrefix && parts[2] == claimsDir
}

// load returns the stored record; a missing record is a fresh logged-out
// one. A record that cannot be decoded is an error and is left untouched.
func (st store) load(ctx context.Context) (*record, error) {
	data, err := st.s.Load(ctx, st.recordKey())
	if errors.Is(err, fs.ErrNotExist) {
		return &record{State: StateLoggedOut, Reason: "not logged in"}, nil
	}
	if err != nil {
		return nil, st.report("load", fmt.Errorf("loading session state: %w", err))
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("session state in storage is unreadable (%s): %v", st.recordKey(), redactJSONError(err))
	}
	if r.State != StateActive && r.State != StateLoggedOut {
		return nil, fmt.Errorf("session state in storage has unknown state %q", r.State)
	}
	return &r, nil
}

func (st store) save(ctx context.Context, r *record) error {
	r.UpdatedAt = st.now().UTC()
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := st.s.Store(ctx, st.recordKey(), data); err != nil {
		return st.report("store", fmt.Errorf("storing session state: %w", err))
	}
	return nil
}

// claimsKept is how many generations of claims stay in storage behind the
// newest write. Only claims at or above an operation's own generation
// decide anything, so older ones are clutter.
const claimsKept = 8

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

// unclaim withdraws a claim whose write did not happen (best effort).
func (st store) unclaim(ctx context.Context, gen int64, writer string) {
	st.delete(ctx, st.claimKey(gen, writer))
}

// clearClaims deletes every claim (best effort).
func (st store) clearClaims(ctx context.Context) {
	st.delete(ctx, st.claimDir())
}

// delete removes key and everything under it (best effort: a failure is
// reported, a missing key is not a failure).
func (st store) delete(ctx context.Context, key string) {
	if err := st.s.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		st.report("delete", err)
	}
}

// contested reports a *contestedError if any writer other than writer has claimed
// generation gen or a later one, and deletes claims too old to matter.
//
// Storage has no compare-and-swap: the read that fences a write and the
// write are two steps, and an instance stalled between them past its lease
// overwrites newer state. Its own read-back then finds its own write. The
// claims do not: every writer claims before it writes and lists after, so
// of two writers that read the same record the later to list sees the
// other, and one that read an old record sees the claims of everyone who
// wrote since. A claim whose write never happened (a crash) can make a
// writer stand down needlessly. Standing down after the write leaves its
// intent in storage, so the session is given up (and logged in again when
// configured) rather than risk presenting a spent token.
func (st store) contested(ctx context.Context, gen int64, writer string) error {
	keys, err := st.s.List(ctx, st.claimDir(), false)
	if err != nil {
		return st.report("list", fmt.Errorf("listing write claims: %w", err))
	}
	var (
		stale   []string
		claimed int64 = -1
	)
	for _, k := range keys {
		g, w, ok := strings.Cut(path.Base(k), ".")
		n, perr := strconv.ParseInt(g, 10, 64)
		switch {
		case !ok || perr != nil:
		case n >= gen && w != writer:
			claimed = max(claimed, n)
		case n < gen-claimsKept:
			stale = append(stale, k)
		}
	}
	if claimed >= 0 {
		return &contestedError{gen: gen, claimed: claimed}
	}
	for _, k := range stale {
		st.delete(ctx, k)
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
