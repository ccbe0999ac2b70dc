package prelude

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
)

// Tokens is the result of Finalize and Refresh. Its String, GoString and
// Format methods redact the tokens, so printing a Tokens (or a struct
// holding one by value or pointer) with any fmt verb is safe.
type Tokens struct {
	// AccessToken is a JWT to send as "Authorization: Bearer".
	AccessToken string
	// ExpiresAt is when AccessToken expires, on the LOCAL clock: the
	// server's expires_at shifted by the skew measured from the response's
	// Date header (see the package comment).
	ExpiresAt time.Time
	// RefreshToken is the new single-use refresh token. After Refresh it
	// is "" when the server did not rotate (no X-Refresh-Token): the token
	// that was presented stays the one to use.
	RefreshToken string
	// RefreshExpiresAt is the refresh token's absolute expiry on the local
	// clock; zero when the server did not say (or said something
	// unparseable).
	RefreshExpiresAt time.Time
}

// Usable reports whether the token cache will hand out t's access token
// when t arrives at now (tokencache.Grant.Usable). An answer whose access
// token is already expired on arrival — an expires_at in the past, or
// none readable in the body or the JWT — is still a success: its refresh
// token is the live one and is stored, but requests get no token from it
// and the cache refreshes again after a backoff.
func (t *Tokens) Usable(now time.Time) bool { return t.Grant().Usable(now) }

// String describes t without its secrets.
func (t Tokens) String() string {
	return fmt.Sprintf("prelude.Tokens{AccessToken: %s, ExpiresAt: %s, RefreshToken: %s, RefreshExpiresAt: %s}",
		redacted(t.AccessToken), t.ExpiresAt.Format(time.RFC3339), redacted(t.RefreshToken), t.RefreshExpiresAt.Format(time.RFC3339))
}

// GoString is String, so %#v cannot print the tokens either.
func (t Tokens) GoString() string { return t.String() }

// Format makes every verb (%d, %x, %+v, …) print String: without it, verbs
// other than %v/%s/%q/%x fall back to printing the fields.
func (t Tokens) Format(f fmt.State, verb rune) {
	_, _ = f.Write([]byte(t.String()))
}

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "[redacted]"
}

// tokens runs a finalize or refresh call and decodes its answer:
// {"access_token", "expires_at"} in the body, the rotated refresh token in
// X-Refresh-Token and its expiry in X-Refresh-Token-Expires-At.
//
// Member names match exactly (call.decode). A 2xx without an access token
// is KindUnknownOutcome (call.malformed):
// the server has probably rotated, so the refresh token that was sent may
// already be spent and must not be presented again. A refresh answered
// with an access token but no X-Refresh-Token was not rotated: the SDKs
// keep their token then, and so does the caller (RefreshToken ""). A login
// without a refresh token is malformed: there is no session to keep.
func (cl *Client) tokens(ctx context.Context, c *call) (*Tokens, error) {
	rep, err := cl.do(ctx, c)
	if err != nil {
		return nil, err
	}
	var body struct {
		AccessToken string          `json:"access_token"`
		ExpiresAt   json.RawMessage `json:"expires_at"`
	}
	if err := c.decode(rep, &body); err != nil {
		return nil, err
	}
	t := &Tokens{AccessToken: body.AccessToken, RefreshToken: rep.Header.Get(headerRefreshToken)}
	if t.AccessToken == "" {
		return nil, c.malformed(rep, "no access_token")
	}
	if t.RefreshToken == "" && !c.spends {
		return nil, c.malformed(rep, "no "+headerRefreshToken+" header")
	}
	exp, ok := parseTimestamp(body.ExpiresAt)
	if !ok {
		exp, ok = jwtExpiry(t.AccessToken)
	}
	if ok {
		t.ExpiresAt = exp.Add(rep.skew)
	} else {
		// The tokens are good; only the expiry is unreadable. Losing a
		// rotated refresh token over that would kill the session, so the
		// answer is kept as expired on arrival: the refresh token is
		// stored, the access token never handed out (Usable is false).
		t.ExpiresAt = rep.ReceivedAt
	}
	if t.RefreshToken == "" {
		return t, nil // not rotated: any expiry header is not about a new token
	}
	if rexp, ok := parseTimeString(rep.Header.Get(headerRefreshTokenExpiresAt)); ok {
		t.RefreshExpiresAt = rexp.Add(rep.skew)
	}
	return t, nil
}

// parseTimestamp accepts the forms Prelude has used for expiry times: a
// JSON number of Unix seconds (current API), or a JSON string that
// parseTimeString accepts (older API). Absent, null and anything else are
// not ok.
func parseTimestamp(raw json.RawMessage) (time.Time, bool) {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		s = string(raw) // a number, or garbage that parseTimeString rejects
	}
	return parseTimeString(s)
}

// parseTimeString accepts RFC 3339 (headers, older API) or decimal Unix
// seconds. Empty strings, non-positive and absurdly large numbers are not
// ok.
func parseTimeString(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0 && f < 1e11) { // the negation also rejects NaN
		return time.Time{}, false
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), true
}

// jwtExpiry reads the exp claim of a JWT without verifying it: it is used
// only to schedule the next refresh, never to trust the token. exp may be
// in any form parseTimestamp accepts (oauth's jwtExp takes only a number).
func jwtExpiry(token string) (time.Time, bool) {
	var claims struct {
		Exp json.RawMessage `json:"exp"`
	}
	if !wire.JWTClaims(token, &claims) {
		return time.Time{}, false
	}
	return parseTimestamp(claims.Exp)
}

// SessionList is one page of GET /v1/session/me/list.
type SessionList struct {
	Sessions []SessionInfo `json:"sessions"`
	Total    int           `json:"total"`
	Limit    int           `json:"limit"`
	Offset   int           `json:"offset"`
}

// SessionInfo describes one session. Its JSON form uses the server's
// snake_case names, so a list can be re-emitted as received; times that
// are absent or unparseable decode as zero and are omitted on output.
// There is no "current" flag: compare ID with the access token's sid claim.
type SessionInfo struct {
	ID          string    `json:"id"`
	DeviceType  string    `json:"device_type,omitempty"` // desktop, mobile, tablet, unknown
	DeviceModel string    `json:"device_model,omitempty"`
	OSVersion   string    `json:"os_version,omitempty"`
	CountryCode string    `json:"country_code,omitempty"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	LastSeenAt  time.Time `json:"last_seen_at,omitzero"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"` // absolute refresh-token expiry
}

// UnmarshalJSON decodes a session leniently: one odd timestamp must not
// make the whole list unreadable.
func (s *SessionInfo) UnmarshalJSON(b []byte) error {
	type plain SessionInfo // same fields, no methods
	var aux struct {
		plain
		CreatedAt  json.RawMessage `json:"created_at"`
		LastSeenAt json.RawMessage `json:"last_seen_at"`
		ExpiresAt  json.RawMessage `json:"expires_at"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*s = SessionInfo(aux.plain)
	s.CreatedAt, _ = parseTimestamp(aux.CreatedAt)
	s.LastSeenAt, _ = parseTimestamp(aux.LastSeenAt)
	s.ExpiresAt, _ = parseTimestamp(aux.ExpiresAt)
	return nil
}
