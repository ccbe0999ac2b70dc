package tokencache

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Token is an access token valid when handed out.
type Token struct {
	// Value is the access token itself. Never log it.
	Value string
	// Type is "Bearer" or "DPoP".
	Type string
	// Expiry is when the token expires (local clock).
	Expiry time.Time
	// Subject and SessionID are the token's sub and sid claims, if it is a
	// JWT that has them.
	Subject, SessionID string
	// Key is the session's DPoP key, taken from the same snapshot as the
	// token so the two always belong together. A DPoP-bound token is never
	// handed out without it.
	Key *dpop.Key
}

// String redacts the token value.
func (t *Token) String() string {
	return fmt.Sprintf("%s token (sub=%s, expires %s)", t.Type, t.Subject, t.Expiry.Format(time.RFC3339))
}

// GoString is like String so %#v cannot leak the token.
func (t *Token) GoString() string { return t.String() }

// Source hands out access tokens that are valid now, in the spirit of
// oauth2.TokenSource but with a context.
type Source interface {
	Token(ctx context.Context) (*Token, error)
}

// ErrLoggedOut is returned by Token when the session has no valid token and
// cannot get one by itself.
var ErrLoggedOut = errors.New("session is logged out")

// errNoUsableToken is the cause Token reports for an active session that
// has no usable access token yet (the last one arrived already expired, or
// a refresh is backing off): the session is not logged out.
var errNoUsableToken = errors.New("no usable access token yet; refreshing")

// UnavailableError is returned by Token when no valid token exists now. It
// names the session, its state and when to try again.
type UnavailableError struct {
	Session    string
	State      string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("session %q (%s) has no valid access token: %v", e.Session, e.State, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// minUsable is the least time an access token must stay usable for the
// engine to hand it out. A grant whose token is shorter-lived on arrival
// (expires_in 0.001, an exp in the past, clock trouble) is stored, since
// its rotated refresh token is the only valid one, but not handed out, and
// the next refresh backs off instead of spinning.
const minUsable = time.Second

// usableUntil is when the engine stops handing out a token issued at
// issued that expires at expiry: shortly before it expires, so it does not
// die in flight — 5 s, or a tenth of the lifetime for short-lived tokens.
func usableUntil(issued, expiry time.Time) time.Time {
	life := expiry.Sub(issued)
	if issued.IsZero() || life <= 0 {
		life = 0
	}
	return expiry.Add(-min(5*time.Second, life/10))
}

// Usable reports whether the engine will hand out g's access token when g
// arrives at now. A grant that is not usable (already expired on arrival, or
// expiring within a second) is stored all the same, because its rotated
// refresh token is the only live one, but requests get no token from it:
// the next refresh follows after a backoff.
func (g *Grant) Usable(now time.Time) bool {
	return g != nil && g.AccessToken != "" && usableUntil(now, g.Expiry).After(now.Add(minUsable))
}

// snapshot is an immutable view of the session for lock-free readers.
type snapshot struct {
	rec       record
	key       *dpop.Key
	tok       *Token // nil when there is no access token
	usable    time.Time
	refreshAt time.Time
	// rejected: an upstream refused tok. It keeps serving (the upstream is
	// the judge) until a fresh token exists, but a refresh is due now.
	rejected bool
}

// valid reports whether s holds a token that may be handed out at now.
func (s *snapshot) valid(now time.Time) bool { return s.tok != nil && now.Before(s.usable) }

// fresh reports whether s holds a token that may be handed out at now
// without refreshing first.
func (s *snapshot) fresh(now time.Time) bool { return s.valid(now) && !s.rejected }

func (c *Cache) newSnapshot(rec *record, key *dpop.Key) *snapshot {
	s := &snapshot{rec: *rec, key: key}
	if rec.AccessToken == "" || rec.Expiry.IsZero() {
		return s
	}
	// The decoded claims are not kept: Status decodes them again when
	// asked, and a resident session is the cheaper for it (see
	// BenchmarkRuntimeSessionMemory).
	_, claims := decodeJWT(rec.AccessToken)
	sub, _ := claims["sub"].(string)
	sid, _ := claims["sid"].(string)
	typ := rec.TokenType
	if typ == "" {
		typ = "Bearer"
	}
	if strings.EqualFold(typ, "DPoP") && (key == nil || key.Thumbprint() != rec.KeyThumbprint) {
		// Unusable without its key: better no token than one that cannot
		// be presented.
		return s
	}
	s.tok = &Token{Value: rec.AccessToken, Type: typ, Expiry: rec.Expiry, Subject: sub, SessionID: sid, Key: key}
	s.rejected = c.isRejected(rec.AccessToken)
	if c.offset.probe.Load() {
		// The token server's clock is not known yet, so neither is when
		// rec's token expires on this one: due for a refresh operation,
		// which asks first (runOp) and then adopts it.
		return s
	}
	s.usable = usableUntil(rec.IssuedAt, rec.Expiry)
	if rec.State == StateActive && !s.rejected {
		at := refreshAt(rec.IssuedAt, rec.Expiry, c.cfg.RefreshBefore)
		// Instances sharing storage see the same record; a per-instance
		// delay of up to a fifth of the remaining window lets the first one
		// refresh and the others adopt its result without queueing on the
		// storage lock (file storage polls a held lock once a second).
		s.refreshAt = at.Add(time.Duration(c.jitter * float64(rec.Expiry.Sub(at)) / 5))
	}
	return s
}

// refreshAt is expiry − before, but never earlier than half the lifetime, so
// short-lived tokens do not refresh in a loop.
func refreshAt(issued, expiry time.Time, before time.Duration) time.Time {
	at := expiry.Add(-before)
	if issued.IsZero() {
		return at
	}
	if floor := issued.Add(expiry.Sub(issued) / 2); at.Before(floor) {
		return floor
	}
	return at
}

// decodeJWT returns a JWT's header and claims without verifying it, for
// display and for sub/sid placeholders. Non-JWT tokens give nil maps.
func decodeJWT(tok string) (header, claims map[string]any) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, nil
	}
	dec := func(s string) map[string]any {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return nil
		}
		var m map[string]any
		if json.Unmarshal(b, &m) != nil {
			return nil
		}
		return m
	}
	return dec(parts[0]), dec(parts[1])
}
