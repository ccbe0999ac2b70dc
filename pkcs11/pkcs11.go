// Package pkcs11 is the inject_token.dpop_keys.pkcs11 module: a session's
// DPoP key held in a PKCS#11 token (an HSM, SoftHSM2, a smart card), found
// by label or id. Proofs are signed in the token; the private key never
// reaches memory or storage, and every instance reaching the same token
// signs with the same key, so the session keeps its jkt across logins,
// restarts and instances.
//
// It needs cgo and a PKCS#11 library, so it lives in its own Go module;
// add it to a build with
//
//	xcaddy build --with github.com/tokenwarden/caddy-inject-token/pkcs11
//
// Caddyfile, inside inject_token:
//
//	dpop_key pkcs11 {
//		module      /usr/lib/softhsm/libsofthsm2.so
//		token_label gateway           # or: slot <number>
//		pin         {env.HSM_PIN}     # or {file./run/secrets/hsm_pin}
//		key_label   billing-dpop      # and/or: key_id <hex>
//	}
//
// The key is an ECDSA P-256 key pair (ES256), created in the token by its
// own tools (pkcs11-tool --keypairgen --key-type EC:prime256v1 …).
//
// The same block after `client_key_source` in an oauth2 block signs the
// private_key_jwt client assertions in the token.
package pkcs11

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/ThalesGroup/crypto11"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(KeySource{})
}

// Token names a PKCS#11 token, how to log in to it and one key in it.
type Token struct {
	// Module is the path of the PKCS#11 library (the .so), e.g.
	// /usr/lib/softhsm/libsofthsm2.so. Required.
	Module string `json:"module"`
	// TokenLabel names the token; Slot names its slot instead. Exactly
	// one is required.
	TokenLabel string `json:"token_label,omitempty"`
	Slot       *int   `json:"slot,omitempty"`
	// PIN is the token's user PIN. Use a placeholder ({env.…} or
	// {file.…}) so it stays out of /config/ and autosave.json.
	PIN string `json:"pin"`
	// KeyLabel (CKA_LABEL) and KeyID (CKA_ID, hex) find the key; at least
	// one is required.
	KeyLabel string `json:"key_label,omitempty"`
	KeyID    string `json:"key_id,omitempty"`
}

// open checks the settings and logs in to the token: a missing token or
// a wrong PIN is an error naming the token, never the PIN. It returns the
// key's id and label for a Find call.
func (t *Token) open() (c *crypto11.Context, id, label []byte, err error) {
	if t.Module == "" {
		return nil, nil, nil, errors.New("pkcs11: module (the PKCS#11 library path) is required")
	}
	if (t.TokenLabel == "") == (t.Slot == nil) {
		return nil, nil, nil, errors.New("pkcs11: exactly one of token_label or slot is required")
	}
	if t.KeyLabel == "" && t.KeyID == "" {
		return nil, nil, nil, errors.New("pkcs11: key_label or key_id is required")
	}
	if t.KeyID != "" {
		if id, err = hex.DecodeString(t.KeyID); err != nil {
			return nil, nil, nil, fmt.Errorf("pkcs11: key_id %q is not hex", t.KeyID)
		}
	}
	if t.KeyLabel != "" {
		label = []byte(t.KeyLabel)
	}
	pin, err := caddy.NewReplacer().ReplaceOrErr(t.PIN, true, true)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pkcs11: pin: %v", err)
	}
	c, err = crypto11.Configure(&crypto11.Config{Path: t.Module, TokenLabel: t.TokenLabel, SlotNumber: t.Slot, Pin: pin})
	if err != nil {
		// crypto11's errors name the failing PKCS#11 call and code
		// (CKR_PIN_INCORRECT, "could not find PKCS#11 token"), never the PIN.
		return nil, nil, nil, fmt.Errorf("pkcs11: opening %s with %s: %w", t.where(), t.Module, err)
	}
	return c, id, label, nil
}

// KeySource finds one key pair in a PKCS#11 token and signs DPoP proofs
// with it there.
type KeySource struct {
	Token

	ctx    *crypto11.Context
	signer crypto11.Signer
	key    *dpop.Key
}

// CaddyModule returns the Caddy module information.
func (KeySource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "inject_token.dpop_keys.pkcs11",
		New: func() caddy.Module { return new(KeySource) },
	}
}

// Provision opens the token and finds the key pair: a missing token, a
// wrong PIN or a missing key fails the config load.
func (k *KeySource) Provision(caddy.Context) error {
	c, id, label, err := k.open()
	if err != nil {
		return err
	}
	signer, err := c.FindKeyPair(id, label)
	switch {
	case err != nil:
		err = fmt.Errorf("no key pair with %s: %w", k.keyName(), err)
	case signer == nil:
		err = fmt.Errorf("no key pair with %s", k.keyName())
	}
	if err == nil {
		k.signer = signer
		k.key, err = dpop.NewKey(signer)
	}
	if err != nil {
		_ = c.Close()
		return fmt.Errorf("pkcs11: %s: %w", k.where(), err)
	}
	k.ctx = c
	return nil
}

func (t *Token) where() string {
	if t.Slot != nil {
		return "slot " + strconv.Itoa(*t.Slot)
	}
	return fmt.Sprintf("token %q", t.TokenLabel)
}

func (t *Token) keyName() string {
	switch {
	case t.KeyLabel != "" && t.KeyID != "":
		return fmt.Sprintf("label %q and id %s", t.KeyLabel, t.KeyID)
	case t.KeyLabel != "":
		return fmt.Sprintf("label %q", t.KeyLabel)
	}
	return "id " + t.KeyID
}

// Key returns the token's key; it is found once, at Provision.
func (k *KeySource) Key(context.Context) (*dpop.Key, error) {
	if k.key == nil {
		return nil, errors.New("pkcs11: key source not provisioned")
	}
	return k.key, nil
}

// Signer is the key pair as a crypto.Signer, for an oauth2 session's
// client_key_source: private_key_jwt assertions signed in the token.
func (k *KeySource) Signer() crypto.Signer { return k.signer }

// Cleanup closes the token session (crypto11 counts references, so a
// reload's new config keeps the library open).
func (k *KeySource) Cleanup() error { return closeCtx(&k.ctx) }

func closeCtx(c **crypto11.Context) error {
	if *c == nil {
		return nil
	}
	err := (*c).Close()
	*c = nil
	return err
}

// UnmarshalCaddyfile reads the block after `dpop_key pkcs11`.
func (k *KeySource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return k.Token.UnmarshalCaddyfile(d)
}

// UnmarshalCaddyfile reads the block after the module's name.
func (k *Token) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		sub := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.Errf("pkcs11 %s: expected one value", sub)
		}
		switch sub {
		case "module":
			k.Module = v
		case "token_label":
			k.TokenLabel = v
		case "slot":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("pkcs11 slot: expected a slot number, got %q", v)
			}
			k.Slot = &n
		case "pin":
			k.PIN = v
		case "key_label":
			k.KeyLabel = v
		case "key_id":
			if _, err := hex.DecodeString(v); err != nil {
				return d.Errf("pkcs11 key_id: expected hex, got %q", v)
			}
			k.KeyID = v
		default:
			return d.Errf("pkcs11: unrecognized option '%s' (expected module, token_label, slot, pin, key_label or key_id)", sub)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*KeySource)(nil)
	_ caddy.CleanerUpper    = (*KeySource)(nil)
	_ caddyfile.Unmarshaler = (*KeySource)(nil)
	_ caddyfile.Unmarshaler = (*Token)(nil)
	_ tokencache.KeySource  = (*KeySource)(nil)
)
