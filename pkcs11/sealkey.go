package pkcs11

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/ThalesGroup/crypto11"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/seal"
)

func init() {
	caddy.RegisterModule(SealKey{})
}

// wrapAAD binds a wrapped data key to its use, so a ciphertext the same
// token key made for something else is not taken for a data key.
var wrapAAD = []byte("inject_token seal data key v1")

// SealKey is the inject_token.seal_keys.pkcs11 module: an AES key in a
// PKCS#11 token that wraps the data key of every sealed value (AES-GCM in
// the token), so the storage holds session records and DPoP keys sealed
// with data keys that only the token can unwrap:
//
//	inject_token {
//		seal_key pkcs11 {
//			module      /usr/lib/softhsm/libsofthsm2.so
//			token_label gateway
//			pin         {env.HSM_PIN}
//			key_label   inject-token-seal
//		}
//	}
//
// The key is an AES-256 secret key made by the token's tools
// (pkcs11-tool --keygen --key-type AES:32 --label inject-token-seal …),
// with CKA_ENCRYPT and CKA_DECRYPT.
type SealKey struct {
	Token

	ctx  *crypto11.Context
	aead cipher.AEAD
	id   string
}

// CaddyModule returns the Caddy module information.
func (SealKey) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "inject_token.seal_keys.pkcs11",
		New: func() caddy.Module { return new(SealKey) },
	}
}

// Provision opens the token and finds the AES key: a missing token, a
// wrong PIN or a missing key fails the config load.
func (k *SealKey) Provision(caddy.Context) error {
	c, id, label, err := k.open()
	if err != nil {
		return err
	}
	key, err := c.FindKey(id, label)
	switch {
	case err != nil:
		err = fmt.Errorf("no secret key with %s: %w", k.keyName(), err)
	case key == nil:
		err = fmt.Errorf("no secret key with %s", k.keyName())
	}
	if err == nil {
		k.aead, err = key.NewGCM()
	}
	if err != nil {
		_ = c.Close()
		return fmt.Errorf("pkcs11 seal_key: %s: %w", k.where(), err)
	}
	k.ctx = c
	// Names the key, not its bytes (they never leave the token): another
	// key under the same name is caught when a data key does not unwrap.
	k.id = "pkcs11-" + seal.KeyID([]byte(k.where()+"\x00"+k.keyName()))
	return nil
}

// WrapperID names the token key in sealed values.
func (k *SealKey) WrapperID() string { return k.id }

// Wrap encrypts a data key in the token: nonce, then AES-GCM ciphertext.
func (k *SealKey) Wrap(dataKey []byte) ([]byte, error) {
	if k.aead == nil {
		return nil, errors.New("pkcs11 seal_key: not provisioned")
	}
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.aead.Seal(nonce, nonce, dataKey, wrapAAD), nil
}

// Unwrap decrypts a data key Wrap made, in the token.
func (k *SealKey) Unwrap(wrapped []byte) ([]byte, error) {
	if k.aead == nil {
		return nil, errors.New("pkcs11 seal_key: not provisioned")
	}
	n := k.aead.NonceSize()
	if len(wrapped) < n {
		return nil, errors.New("wrapped data key too short")
	}
	dk, err := k.aead.Open(nil, wrapped[:n], wrapped[n:], wrapAAD)
	if err != nil {
		return nil, fmt.Errorf("the token key %s does not authenticate it", k.keyName())
	}
	return dk, nil
}

// Cleanup closes the token session.
func (k *SealKey) Cleanup() error { return closeCtx(&k.ctx) }

// UnmarshalCaddyfile reads the block after `seal_key pkcs11`.
func (k *SealKey) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return k.Token.UnmarshalCaddyfile(d)
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SealKey)(nil)
	_ caddy.CleanerUpper    = (*SealKey)(nil)
	_ caddyfile.Unmarshaler = (*SealKey)(nil)
	_ seal.Wrapper          = (*SealKey)(nil)
)
