package tokencache

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Adopt makes grant, obtained with key by a login the caller ran itself,
// the session's. Interactive logins need it: the DPoP key is bound when
// the login starts (an authorization request's dpop_jkt, a one-time code
// checked with a proof), but which session the login is for is known only
// when it ends, from the verified user id. Adopt then stores key and grant
// as Login would — under the storage lock, over the re-read record — and
// automatic login resumes.
//
// A live session it replaces is revoked at the server afterwards (best
// effort, logged on failure), so its refresh token does not outlive it;
// one an interrupted refresh may have spent is not presented.
func (c *Cache) Adopt(ctx context.Context, key *dpop.Key, grant *Grant) error {
	if key == nil || grant == nil {
		return errors.New("tokencache: Adopt needs the login's key and grant")
	}
	c.ResumeLogin()
	var revoke func()
	err := c.lockedOp(ctx, func(o *op, rec *record, err error) (*snapshot, error) {
		if rec, err = replaceable(rec, err); err != nil {
			return nil, err
		}
		live := c.live(rec)
		if old, err := c.keyFor(o, live); err == nil && live.RefreshToken != "" && !live.spent() &&
			old.Thumbprint() != key.Thumbprint() {
			device, token := c.deviceOf(live), live.RefreshToken
			revoke = func() {
				cctx, cancel := context.WithTimeout(ContextWithDeviceID(context.WithoutCancel(ctx), device), c.cfg.CallTimeout)
				defer cancel()
				if err := c.cfg.Backend.Revoke(cctx, old, token); err != nil && !errors.Is(err, ErrSessionDead) {
					c.log().Warn("could not revoke the session a new login replaced",
						zap.String("session", c.cfg.Name), zap.Error(err))
				}
			}
		}
		o.given = key
		return o.login(rec, live, func(context.Context, *dpop.Key, string) (*Grant, error) { return grant, nil }, false)
	})
	if err == nil && revoke != nil {
		revoke()
	}
	return err
}

// Adopt makes grant, obtained with k by a login the caller ran itself,
// the session of key's, making the session if it does not exist yet (see
// Cache.Adopt).
func (r *Runtime) Adopt(ctx context.Context, key string, k *dpop.Key, grant *Grant) error {
	c, err := r.Session(key)
	if err != nil {
		return err
	}
	return c.Adopt(ctx, k, grant)
}
