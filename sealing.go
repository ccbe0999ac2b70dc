package injecttoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/filecas"
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("inject_token", parseGlobalOption)
}

// Sealing keeps a session's state (refresh and access tokens) and its DPoP
// private key AES-256-GCM sealed in storage, so that whoever can read a
// shared storage (Redis, S3, a database) cannot become the user. Each
// stored value is bound to its storage key, which names the session:
// records cannot be swapped between sessions.
type Sealing struct {
	// SealKey is the key new values are sealed with: 32 random bytes,
	// base64 (`head -c 32 /dev/urandom | base64`). It must be a
	// placeholder, {env.*} or {file.*}, so the key never appears in the
	// JSON config. A value sealed with a key that is neither this one nor
	// a previous one makes the config fail to load, with the key IDs
	// named; it is never taken for a logged-out session.
	SealKey string `json:"seal_key,omitempty"`

	// SealKeyPrevious are keys that still open older values during a
	// rotation (placeholders, like SealKey). Values are re-sealed with
	// SealKey when they are next written (a session's state at its next
	// refresh; its DPoP key when next loaded). The word "unsealed" instead
	// accepts values stored before sealing was turned on.
	SealKeyPrevious []string `json:"seal_key_previous,omitempty"`

	// SealKeySource seals with a wrapping key that never leaves an HSM,
	// instead of SealKey: a module of the inject_token.seal_keys
	// namespace (such as pkcs11, `seal_key pkcs11 { … }`). Every value
	// gets a fresh data key, stored only wrapped by the HSM key, so any
	// number of sessions are sealed with one token object.
	// SealKeyPrevious still opens values sealed with file keys.
	SealKeySource json.RawMessage `json:"seal_key_source,omitempty" caddy:"namespace=inject_token.seal_keys inline_key=source"`
}

// sealUnsealed is the SealKeyPrevious entry that accepts plain values.
const sealUnsealed = "unsealed"

// sealer resolves the keys; without a SealKey it returns inherited (the
// app-level sealer, or nil).
func (s *Sealing) sealer(ctx caddy.Context, repl *caddy.Replacer, inherited *seal.Sealer) (*seal.Sealer, error) {
	if s.SealKey != "" && s.SealKeySource != nil {
		return nil, errors.New("seal_key: either a key or a key source module, not both")
	}
	if s.SealKey == "" && s.SealKeySource == nil {
		if len(s.SealKeyPrevious) > 0 {
			return nil, errors.New("seal_key_previous without seal_key")
		}
		return inherited, nil
	}
	key := func(name, text string) ([]byte, error) {
		if !strings.Contains(text, "{") {
			return nil, fmt.Errorf("%s must be given as a placeholder ({env.NAME} or {file./path}) so it stays out of the JSON config", name)
		}
		v, err := repl.ReplaceOrErr(text, true, true)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		k, err := seal.ParseKey(v)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v", name, text, err)
		}
		return k, nil
	}
	var prev [][]byte
	plain := false
	for _, text := range s.SealKeyPrevious {
		if text == sealUnsealed {
			plain = true
			continue
		}
		k, err := key("seal_key_previous", text)
		if err != nil {
			return nil, err
		}
		prev = append(prev, k)
	}
	var sl *seal.Sealer
	if s.SealKeySource != nil {
		mod, err := ctx.LoadModule(s, "SealKeySource")
		if err != nil {
			return nil, fmt.Errorf("seal_key: %w", err)
		}
		w, ok := mod.(seal.Wrapper)
		if !ok {
			return nil, fmt.Errorf("seal_key: module %T does not wrap keys", mod)
		}
		if sl, err = seal.NewEnvelope(w, prev...); err != nil {
			return nil, err
		}
	} else {
		cur, err := key("seal_key", s.SealKey)
		if err != nil {
			return nil, err
		}
		if sl, err = seal.New(cur, prev...); err != nil {
			return nil, err
		}
	}
	sl.AcceptPlain = plain
	return sl, nil
}

// unmarshalSealing reads a seal_key or seal_key_previous line; the
// dispenser is on the subdirective. It reports false for other names.
func (s *Sealing) unmarshalSealing(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "seal_key":
		if s.SealKey != "" || s.SealKeySource != nil {
			return true, d.Err("seal_key already specified")
		}
		if sealKeyModule(d) {
			src, err := unmarshalModuleOption(d, "inject_token.seal_keys")
			s.SealKeySource = src
			return true, err
		}
		if !d.AllArgs(&s.SealKey) {
			return true, d.Err("seal_key: expected one key, e.g. 'seal_key {env.INJECT_TOKEN_SEAL_KEY}'")
		}
	case "seal_key_previous":
		keys := d.RemainingArgs()
		if len(keys) == 0 {
			return true, d.Err("seal_key_previous: expected at least one key (or 'unsealed')")
		}
		s.SealKeyPrevious = append(s.SealKeyPrevious, keys...)
	default:
		return false, nil
	}
	return true, nil
}

// sealKeyModule reports whether the seal_key line names a module: one
// argument and a block (`seal_key pkcs11 { … }`), not a key.
func sealKeyModule(d *caddyfile.Dispenser) bool {
	if !d.NextArg() {
		return false
	}
	defer d.Prev()
	line := d.Line()
	if !d.Next() {
		return false
	}
	defer d.Prev()
	return d.Val() == "{" && d.Line() == line
}

// parseGlobalOption reads the inject_token global option:
//
//	{
//		inject_token {
//			seal_key          <key> | <module> { … }
//			seal_key_previous <key...>|unsealed
//		}
//	}
//
// It configures the inject_token app; a handler's own seal_key overrides
// it for that session.
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		ok, err := app.unmarshalSealing(d)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, d.Errf("inject_token: unrecognized global option '%s' (expected seal_key or seal_key_previous)", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "inject_token", Value: caddyconfig.JSON(app, nil)}, nil
}

// sealedStorage wraps a config's storage for the session called name,
// sealing its values with sl (nil: plain), and checks that what the
// session already has in storage opens, so a wrong or missing key fails
// the config load instead of looking like a logged-out session. Caddy's
// file_system storage gets conditional writes (filecas), which the sealed
// storage forwards to the engine.
func sealedStorage(ctx caddy.Context, name string, sl *seal.Sealer) (certmagic.Storage, error) {
	st := sealStorage(ctx, sl)
	if err := st.Check(ctx, tokencache.SessionDir(name)); err != nil {
		return nil, fmt.Errorf("session %q: its stored state cannot be opened: %w "+
			"(check seal_key, and seal_key_previous during a rotation)", name, err)
	}
	return st.WithVersions(), nil
}

// templateStorage is the storage of a template's sessions: sealed like a
// named session's, but not checked as a whole (a template may hold
// 100,000 sessions); its secret (loadTemplateSecret) is opened instead.
func templateStorage(ctx caddy.Context, sl *seal.Sealer) (certmagic.Storage, error) {
	return sealStorage(ctx, sl).WithVersions(), nil
}

// sealStorage wraps the config's storage, sealing with sl (nil: plain).
func sealStorage(ctx caddy.Context, sl *seal.Sealer) seal.Storage {
	inner := ctx.Storage()
	if fst, ok := inner.(*certmagic.FileStorage); ok {
		inner = filecas.New(fst)
	}
	return seal.Storage{
		Storage: inner, Sealer: sl, Prefix: tokencache.StoragePrefix + "/",
		// DPoP key files are written once, at login; state is rewritten
		// at every refresh.
		Immutable: tokencache.IsKeyFile,
		Plain:     tokencache.IsClaim,
	}
}
