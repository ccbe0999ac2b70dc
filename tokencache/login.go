package tokencache

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Login starts a new session with login (for example an OTP flow finished
// through the admin API), replacing the current one. It clears an
// operator's logout and a pause after rejected credentials.
func (c *Cache) Login(ctx context.Context, login LoginFunc) error {
	c.ResumeLogin()
	return c.lockedOp(ctx, func(o *op, rec *record, err error) (*snapshot, error) {
		if rec, err = replaceable(rec, err); err != nil {
			return nil, err
		}
		return o.login(rec, c.live(rec), login, false)
	})
}

// Logout revokes the session at the server and clears local state. Automatic
// login stays off until the next explicit Login. If the server cannot be
// reached the local state is kept so the logout can be retried. A refresh
// token an interrupted refresh may have spent is not presented for
// revocation: the server would take it for a reuse.
func (c *Cache) Logout(ctx context.Context) error { return c.LogoutKey(ctx, "") }

// ErrReplaced is returned by LogoutKey when the session's DPoP key is no
// longer the one named: a later login replaced the session (revoking it),
// or it has ended.
var ErrReplaced = errors.New("tokencache: the session is no longer the one with that DPoP key")

// LogoutKey is Logout of the session only while its DPoP key is the one
// with thumbprint jkt (any key when jkt is empty), checked under the
// lock: a logout retried later must never end the session a new login
// has made since.
func (c *Cache) LogoutKey(ctx context.Context, jkt string) error {
	return c.lockedOp(ctx, func(o *op, rec *record, err error) (*snapshot, error) {
		if err != nil {
			return nil, err
		}
		live := c.live(rec)
		if jkt != "" && (live.State != StateActive || live.KeyThumbprint != jkt) {
			return nil, ErrReplaced
		}
		switch {
		case live.spent():
			c.log().Warn("logging out without revoking at the server: an interrupted refresh may have spent the refresh token",
				zap.String("session", c.cfg.Name))
		case live.RefreshToken != "":
			key, err := c.keyFor(o, live)
			if err == nil {
				cctx, cancel := context.WithTimeout(ContextWithDeviceID(o.ctx, c.deviceOf(live)), c.cfg.CallTimeout)
				err = c.cfg.Backend.Revoke(cctx, key, live.RefreshToken)
				cancel()
			}
			if err != nil && !errors.Is(err, ErrSessionDead) {
				return nil, fmt.Errorf("revoking at the server (local state kept; retry): %w", err)
			}
		}
		return o.forget(rec, "logged out by operator")
	})
}

// Forget clears local state without calling the server (the session was
// revoked by other means, e.g. /me/revoke target=mine). Automatic login
// stays off until the next explicit Login.
func (c *Cache) Forget(ctx context.Context, reason string) error {
	return c.lockedOp(ctx, func(o *op, rec *record, err error) (*snapshot, error) {
		if rec, err = replaceable(rec, err); err != nil {
			return nil, err
		}
		return o.forget(rec, reason)
	})
}

// lockedOp runs an operator's operation: in-process op lock, storage lock,
// then op with the stored record (or the error reading it).
func (c *Cache) lockedOp(ctx context.Context, fn func(o *op, rec *record, loadErr error) (*snapshot, error)) error {
	_, err := c.runOp(ctx, func(o *op) (*snapshot, error) {
		o.operator = true
		unlock, err := o.lock()
		if err != nil {
			return nil, err
		}
		defer unlock()
		var rec *record
		for range 3 { // one storage hiccup must not make an operator's call fail
			if rec, err = o.st.load(o.ctx); !transient(err) {
				break
			}
		}
		return fn(o, rec, err)
	})
	return err
}

// transient reports whether err is a failure to read storage that another
// try may not meet.
func transient(err error) bool {
	_, unreadable := errors.AsType[*unreadableError](err)
	return err != nil && !unreadable && !errors.Is(err, ErrNewerFormat)
}

// replaceable is the record a login or forget writes over: the stored one,
// or one standing for a stored record that cannot be decoded (it keeps the
// storage version, and without versions the claims set the generation, so
// replacing it never goes back to generation 0). A record that could not
// be read at all, or of a newer format, is not replaced.
func replaceable(rec *record, err error) (*record, error) {
	if ue, ok := errors.AsType[*unreadableError](err); ok {
		return &record{State: StateLoggedOut, ver: ue.ver, unreadable: true}, nil
	}
	return rec, err
}

// live returns the result this process holds in memory in place of the
// stored record when that result resolves the stored record: its refresh
// token is the live one (the stored one is spent). opMu must be held.
func (c *Cache) live(rec *record) *record {
	if p := c.pending.Load(); p != nil && rec.sameWrite(&p.over) {
		return &p.next
	}
	return rec
}

// forget writes a logged-out record with automatic login off over over
// and deletes the key.
func (o *op) forget(over *record, reason string) (*snapshot, error) {
	c := o.c
	next := o.build(over, record{State: StateLoggedOut, Reason: reason, NoAutoLogin: true})
	if err := o.write(over, next); err != nil {
		return nil, err
	}
	o.st.deleteKey(o.ctx, over.KeyThumbprint)
	if p := c.pending.Swap(nil); p != nil && p.next.KeyThumbprint != over.KeyThumbprint {
		o.st.deleteKey(o.ctx, p.next.KeyThumbprint)
	}
	return o.install(next, nil, OutcomeLoggedOut, ""), nil
}

// loginOrReport logs in automatically when configured and allowed;
// otherwise it reports the logged-out state.
func (o *op) loginOrReport(rec *record) (*snapshot, error) {
	c := o.c
	paused := c.loginFailed.Load()
	if c.cfg.Login != nil && !rec.NoAutoLogin && !paused {
		return o.login(rec, rec, c.cfg.Login, true)
	}
	s := o.install(rec, c.recordKey(o, rec), "", "")
	reason := rec.Reason
	switch {
	case paused:
		reason = "automatic login paused: the server rejected the configured credentials"
	case reason == "":
		reason = "logged out"
	}
	c.mu.Lock()
	// Nothing will change until someone logs in; re-read storage at a
	// gentle pace in case another instance does.
	c.nextAttempt = c.clock.Now().Add(c.cfg.MinBackoff)
	c.mu.Unlock()
	return s, fmt.Errorf("%w: %s", ErrLoggedOut, reason)
}

// login starts a new session with a new key (the KeySource's, if any)
// over the stored record over. live is the session being replaced: its refresh token
// goes to the server as the previous one, unless an interrupted refresh
// may have spent it. The key is stored before the login so the stored
// record never points at a missing key; the old key is deleted after the
// new record is durable. Caller holds the storage lock.
func (o *op) login(over, live *record, login LoginFunc, auto bool) (*snapshot, error) {
	c := o.c
	if err := o.stopped(); err != nil {
		return nil, err
	}
	key, reason, err := o.newKey()
	if err != nil {
		return nil, o.fail(OutcomeLoginFail, reason, err)
	}
	prev := live.RefreshToken
	if live.spent() {
		prev = ""
	}
	// The device outlives its sessions: a re-login keeps the stored id.
	device := c.deviceOf(over)
	cctx, cancel := context.WithTimeout(ContextWithDeviceID(o.ctx, device), c.cfg.CallTimeout)
	t0 := c.clock.Now()
	grant, err := login(cctx, key, prev)
	o.rtt += c.clock.Now().Sub(t0)
	cancel()
	grant, err = received(grant, err, false)
	if err != nil {
		o.st.deleteKey(o.ctx, key.Thumbprint())
		err = fmt.Errorf("login: %w", err)
		switch {
		case !auto:
			return nil, o.refused(reasonOf(err, ReasonOther), err)
		case errors.Is(err, ErrCredentialsRejected):
			return nil, o.credentialsRejected(err)
		}
		return nil, o.fail(OutcomeLoginFail, reasonOf(err, ReasonOther), err)
	}
	next := o.build(over, record{KeyThumbprint: key.Thumbprint(), DeviceID: device})
	o.withGrant(next, grant)
	switch err := o.writeRetry(over, next); {
	case errors.Is(err, errFenced):
		o.st.deleteKey(o.ctx, key.Thumbprint())
		c.log().Error("logged in, but storage moved on meanwhile; the new session is dropped",
			zap.String("session", c.cfg.Name), zap.Error(err))
		return o.adoptLatest(err)
	case err != nil:
		c.pending.Store(&pendingWrite{over: *over, next: *next, outcome: OutcomeLoggedIn})
		return nil, o.fail(OutcomeLoginFail, ReasonStorage, fmt.Errorf("logged in but could not store the session: %w", err))
	}
	c.pending.Store(nil) // whatever it resolved is superseded
	for _, old := range []string{live.KeyThumbprint, over.KeyThumbprint} {
		if old != key.Thumbprint() {
			o.st.deleteKey(o.ctx, old)
		}
	}
	c.mu.Lock()
	c.resumeLoginLocked()
	c.mu.Unlock()
	return o.install(next, key, OutcomeLoggedIn, ""), nil
}
