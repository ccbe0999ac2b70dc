package tokencache

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// KeySource supplies a session's DPoP key when the key lives outside
// storage, in an HSM or a KMS. With a source the cache never generates,
// stores or deletes a key: every login, and every instance sharing the
// session, binds the session to the source's one key, so a re-login keeps
// the thumbprint (jkt).
type KeySource interface {
	// Key returns the session's key. It is asked at start, at every login
	// and whenever the key is not in memory; it must return the same key
	// each time (dpop.NewKey wraps a crypto.Signer).
	Key(ctx context.Context) (*dpop.Key, error)
}

// sourcedKey is the source's key, checked against the thumbprint the
// stored record is bound to: a session logged in with another key (a key
// from storage, before the source was configured) cannot be refreshed
// with this one, and is treated like one whose key is missing.
func (st store) sourcedKey(ctx context.Context, thumbprint string) (*dpop.Key, error) {
	k, err := st.keys.Key(ctx)
	if err != nil {
		return nil, fmt.Errorf("DPoP key source: %w", err)
	}
	if k.Thumbprint() != thumbprint {
		return nil, fmt.Errorf("%w: the key source holds %s, the session is bound to %s", errKeyBroken, k.Thumbprint(), thumbprint)
	}
	return k, nil
}

// newKey is the key a login binds the session to: the source's, or a
// fresh one stored before the login so the stored record never points at
// a missing key. The reason classifies a failure.
func (o *op) newKey() (*dpop.Key, string, error) {
	c := o.c
	if o.given != nil {
		if c.cfg.KeySource != nil {
			// The source's key is never stored, and only it may sign for
			// the session: a login made with another key is refused.
			k, err := c.cfg.KeySource.Key(o.ctx)
			if err != nil {
				return nil, ReasonOther, fmt.Errorf("DPoP key source: %w", err)
			}
			if k.Thumbprint() != o.given.Thumbprint() {
				return nil, ReasonOther, errors.New("adopted login: made with a key other than the key source's")
			}
			return k, "", nil
		}
		if err := o.st.saveKey(o.ctx, o.given); err != nil {
			return nil, ReasonStorage, err
		}
		return o.given, "", nil
	}
	if c.cfg.KeySource != nil {
		k, err := c.cfg.KeySource.Key(o.ctx)
		if err != nil {
			return nil, ReasonOther, fmt.Errorf("DPoP key source: %w", err)
		}
		return k, "", nil
	}
	k, err := dpop.GenerateKey(c.cfg.KeyAlgorithm)
	if err != nil {
		return nil, ReasonOther, err
	}
	if err := o.st.saveKey(o.ctx, k); err != nil {
		return nil, ReasonStorage, err
	}
	return k, "", nil
}
