package tokencache

import (
	"strings"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

// Status is a secret-free view of the session. It is the admin API's
// adminapi.Engine, so a new field is declared (and documented) once.
type Status = adminapi.Engine

// Status reports the session's state. It holds no secrets: no token, no
// refresh token, no private key.
func (c *Cache) Status() Status {
	s := c.current()
	now := c.clock.Now()
	st := Status{
		Session:   c.cfg.Name,
		State:     c.stateOf(s),
		Reason:    s.rec.Reason,
		AutoLogin: c.autoLogin(s),
		WaitCount: c.waits.Load(),
	}
	if s.rec.AccessToken != "" && !s.rec.Expiry.IsZero() {
		st.TokenHeader, st.TokenClaims = decodeJWT(s.rec.AccessToken)
	}
	if s.key != nil {
		st.KeyThumbprint, st.KeyAlgorithm = s.key.Thumbprint(), string(s.key.Algorithm())
	}
	if s.tok != nil {
		st.Subject, st.SessionID, st.TokenType = s.tok.Subject, s.tok.SessionID, s.tok.Type
		exp := s.tok.Expiry
		st.ExpiresAt = &exp
		st.SecondsLeft = max(int64(exp.Sub(now).Seconds()), 0)
		st.Scopes = scopes(st.TokenClaims)
	}
	if at, ok := c.nextWake(); ok {
		st.NextRefresh = &at
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.lastRefresh.IsZero() {
		t := c.lastRefresh
		st.LastRefresh = &t
	}
	st.LastOutcome, st.RefreshCount, st.AdoptCount = c.lastOutcome, c.refreshes, c.adoptions
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	return st
}

// stateOf is the state reported for s: the stored one, or login_failed
// while automatic login is paused.
func (c *Cache) stateOf(s *snapshot) string {
	if c.loginFailed.Load() {
		return StateLoginFailed
	}
	return s.rec.State
}

// autoLogin reports whether the session logs in by itself when needed.
func (c *Cache) autoLogin(s *snapshot) bool {
	return c.cfg.Login != nil && !s.rec.NoAutoLogin && !c.loginFailed.Load()
}

// stateReport is what the last EventState said.
type stateReport struct {
	state     string
	autoLogin bool
}

// publish makes s the current snapshot.
func (c *Cache) publish(s *snapshot) {
	c.snap.Store(s)
	c.reportState()
}

// reportState sends EventState when the reported state changed.
func (c *Cache) reportState() {
	s := c.current()
	r := stateReport{state: c.stateOf(s), autoLogin: c.autoLogin(s)}
	c.mu.Lock()
	changed := r != c.reported
	c.reported = r
	c.mu.Unlock()
	if changed {
		c.event(Event{Kind: EventState, State: r.state, AutoLogin: r.autoLogin})
	}
}

// scopes reads a "scope" claim given as a space-separated string or array.
func scopes(claims map[string]any) []string {
	switch v := claims["scope"].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		var out []string
		for _, s := range v {
			if str, ok := s.(string); ok {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}
