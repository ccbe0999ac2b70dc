// Package seal keeps values AES-256-GCM sealed at rest (standard library
// only), bound to where they are stored: the storage key is the additional
// authenticated data, so a sealed value moved to another key (another
// session's record) does not open. A Sealer has one current key, used for
// every new seal, and any number of previous keys that still open older
// values (rotation: values are re-sealed with the current key on their next
// write).
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// KeySize is the length of a seal key: AES-256.
const KeySize = 32

// prefix starts every sealed value; the key ID and the base64url of nonce
// and ciphertext follow, separated by ':'. Text, so that storages holding
// strings (Redis, SQL) keep it intact.
const prefix = "inject_token-sealed-v1:"

// Errors of Open. Their text names key IDs, never key bytes.
var (
	// ErrUnknownKey: the value was sealed with a key that is neither the
	// current nor a previous one.
	ErrUnknownKey = errors.New("sealed with a key that is not configured")
	// ErrNotSealed: the value is plain but sealing is required.
	ErrNotSealed = errors.New("stored unsealed, but a seal key is configured")
	// ErrNoKey: the value is sealed but no key is configured.
	ErrNoKey = errors.New("stored sealed, but no seal key is configured")
	// ErrUnwrap: the value's data key does not unwrap with the wrapping
	// key of its ID (another key under the same name in the HSM).
	ErrUnwrap = errors.New("the data key does not unwrap: the wrapping key is not the one it was sealed with")
	// ErrForged: the value does not authenticate: it was altered, or it
	// was sealed for another storage key (records swapped between
	// sessions).
	ErrForged = errors.New("sealed value does not authenticate (altered, or moved from another storage key)")
)

// ParseKey decodes a seal key given as standard or URL base64 (padded or
// not) of exactly KeySize bytes. Errors never quote the text.
func ParseKey(text string) ([]byte, error) {
	text = strings.TrimSpace(text)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(text); err == nil {
			if len(k) != KeySize {
				return nil, fmt.Errorf("seal key must be %d bytes, base64 encoded; it decodes to %d bytes", KeySize, len(k))
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("seal key is not base64 (generate one with: head -c %d /dev/urandom | base64)", KeySize)
}

// Sealer seals with its current key and opens with the current or a
// previous one. A nil *Sealer seals nothing and refuses sealed values.
type Sealer struct {
	current key
	byID    map[string]key
	// AcceptPlain lets Open pass values that are not sealed yet, so
	// sealing can be turned on for existing data: they are sealed on their
	// next write. Otherwise a plain value is ErrNotSealed.
	AcceptPlain bool
}

// key is a raw key (aead) or a wrapping key (wrap): then each value has
// its own data key, wrapped by it and stored beside the value.
type key struct {
	id   string
	aead cipher.AEAD
	wrap Wrapper
}

// Wrapper wraps data keys with a key that stays elsewhere (in an HSM), for
// envelope sealing: every sealed value gets a fresh data key, stored only
// wrapped, so one wrapping key seals any number of values (per-user
// sessions) without an HSM object each.
type Wrapper interface {
	// WrapperID names the wrapping key in sealed values and errors; it
	// must be stable across restarts, contain no ':' and reveal nothing
	// secret.
	WrapperID() string
	// Wrap returns dataKey encrypted and authenticated by the wrapping key.
	Wrap(dataKey []byte) ([]byte, error)
	// Unwrap returns the data key Wrap wrapped, or an error if wrapped was
	// not wrapped by this key or was altered.
	Unwrap(wrapped []byte) ([]byte, error)
}

// NewEnvelope returns a Sealer sealing with data keys wrapped by w, and
// opening values sealed that way or with any of previous (raw keys, e.g.
// while moving from a file key to an HSM).
func NewEnvelope(w Wrapper, previous ...[]byte) (*Sealer, error) {
	id := w.WrapperID()
	if id == "" || strings.Contains(id, ":") {
		return nil, fmt.Errorf("seal: wrapper ID %q must be non-empty and without ':'", id)
	}
	s := &Sealer{current: key{id: id, wrap: w}, byID: map[string]key{}}
	for _, raw := range previous {
		k, err := newKey(raw)
		if err != nil {
			return nil, err
		}
		s.byID[k.id] = k
	}
	s.byID[id] = s.current
	return s, nil
}

// New returns a Sealer sealing with current and opening with current or
// any of previous. Keys must be KeySize bytes.
func New(current []byte, previous ...[]byte) (*Sealer, error) {
	s := &Sealer{byID: map[string]key{}}
	for i, raw := range append([][]byte{current}, previous...) {
		k, err := newKey(raw)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			s.current = k
		}
		s.byID[k.id] = k
	}
	return s, nil
}

func newKey(raw []byte) (key, error) {
	if len(raw) != KeySize {
		return key{}, fmt.Errorf("seal key must be %d bytes, got %d", KeySize, len(raw))
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return key{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return key{}, err
	}
	return key{id: KeyID(raw), aead: aead}, nil
}

// KeyID names a key in sealed values and errors: 8 hex digits of a hash
// that reveals nothing about the key.
func KeyID(raw []byte) string {
	sum := sha256.Sum256(append([]byte("inject_token seal key id\x00"), raw...))
	return hex.EncodeToString(sum[:4])
}

// ID describes the keys (by key ID) and AcceptPlain, "" for a nil Sealer,
// so two configurations can be compared without comparing keys.
func (s *Sealer) ID() string {
	if s == nil {
		return ""
	}
	ids := make([]string, 0, len(s.byID))
	for id := range s.byID {
		if id != s.current.id {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return fmt.Sprintf("%s prev=%s plain=%t", s.current.id, strings.Join(ids, ","), s.AcceptPlain)
}

// stale reports whether v (which opened) is not sealed with the current
// key.
func (s *Sealer) stale(v []byte) bool {
	return s != nil && !bytes.HasPrefix(v, []byte(prefix+s.current.id+":"))
}

// Sealed reports whether v is a sealed value.
func Sealed(v []byte) bool { return bytes.HasPrefix(v, []byte(prefix)) }

// Seal seals plain for the storage key aad with the current key. A nil
// Sealer returns plain unchanged.
func (s *Sealer) Seal(plain []byte, aad string) ([]byte, error) {
	if s == nil {
		return plain, nil
	}
	aead, box := s.current.aead, []byte(nil)
	if s.current.wrap != nil {
		var err error
		if aead, box, err = s.newDataKey(); err != nil {
			return nil, err
		}
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	box = append(box, nonce...)
	box = aead.Seal(box, nonce, plain, []byte(aad))
	out := make([]byte, 0, len(prefix)+len(s.current.id)+1+base64.RawURLEncoding.EncodedLen(len(box)))
	out = append(out, prefix...)
	out = append(out, s.current.id...)
	out = append(out, ':')
	return base64.RawURLEncoding.AppendEncode(out, box), nil
}

// Open returns the plain value of v stored under aad. A nil Sealer passes
// plain values and refuses sealed ones (ErrNoKey).
func (s *Sealer) Open(v []byte, aad string) ([]byte, error) {
	if !Sealed(v) {
		if s != nil && !s.AcceptPlain {
			return nil, ErrNotSealed
		}
		return v, nil
	}
	id, box, ok := bytes.Cut(v[len(prefix):], []byte(":"))
	if !ok {
		return nil, ErrForged
	}
	if s == nil {
		return nil, fmt.Errorf("%w (sealed with key %.32s)", ErrNoKey, id)
	}
	k, ok := s.byID[string(id)]
	if !ok {
		return nil, fmt.Errorf("%w: key %.32s (current key is %s)", ErrUnknownKey, id, s.current.id)
	}
	raw, err := base64.RawURLEncoding.DecodeString(string(box))
	if err != nil {
		return nil, ErrForged
	}
	aead := k.aead
	if k.wrap != nil {
		if aead, raw, err = openDataKey(k, raw); err != nil {
			return nil, err
		}
	}
	if len(raw) < aead.NonceSize() {
		return nil, ErrForged
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(aad))
	if err != nil {
		return nil, ErrForged
	}
	return plain, nil
}

// newDataKey makes a fresh data key and returns its AEAD and the start of
// an envelope box: the wrapped key's length (2 bytes) and the wrapped key.
// The data key itself is dropped once the AEAD holds it.
func (s *Sealer) newDataKey() (cipher.AEAD, []byte, error) {
	dk := make([]byte, KeySize)
	if _, err := rand.Read(dk); err != nil {
		return nil, nil, err
	}
	wrapped, err := s.current.wrap.Wrap(dk)
	if err != nil {
		return nil, nil, fmt.Errorf("seal: wrapping a data key with %s: %w", s.current.id, err)
	}
	if len(wrapped) > 0xffff {
		return nil, nil, fmt.Errorf("seal: wrapped data key of %d bytes", len(wrapped))
	}
	k, err := newKey(dk)
	if err != nil {
		return nil, nil, err
	}
	box := binary.BigEndian.AppendUint16(nil, uint16(len(wrapped)))
	return k.aead, append(box, wrapped...), nil
}

// openDataKey unwraps the data key at the start of an envelope box and
// returns its AEAD and the rest of the box (nonce and ciphertext).
func openDataKey(k key, raw []byte) (cipher.AEAD, []byte, error) {
	if len(raw) < 2 || len(raw)-2 < int(binary.BigEndian.Uint16(raw)) {
		return nil, nil, ErrForged
	}
	n := 2 + int(binary.BigEndian.Uint16(raw))
	dk, err := k.wrap.Unwrap(raw[2:n])
	if err != nil {
		return nil, nil, fmt.Errorf("%w (key %s: %v)", ErrUnwrap, k.id, err)
	}
	dkey, err := newKey(dk)
	if err != nil {
		return nil, nil, ErrForged
	}
	return dkey.aead, raw[n:], nil
}
