package prelude

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Paths of the frontend API (see the package comment).
const (
	pathLoginOTP      = "/v1/session/login/otp"
	pathLoginOTPCheck = "/v1/session/login/otp/check"
	pathLoginOTPRetry = "/v1/session/login/otp/retry"
	pathOTP           = "/v1/session/otp"
	pathOTPCheck      = "/v1/session/otp/check"
	pathOTPRetry      = "/v1/session/otp/retry"
	pathLoginPassword = "/v1/session/login/email/password"
	pathFinalize      = "/v1/session/login/finalize"
	pathRefresh       = "/v1/session/refresh"
	pathRevoke        = "/v1/session/revoke"
	pathListSessions  = "/v1/session/me/list"
	pathRevokeTarget  = "/v1/session/me/revoke"
)

// Ops whose answers are classified specially (see call.classify).
const (
	opLoginPassword = "login_password"
	opRefresh       = "refresh"
)

// Header names of the non-browser transport.
const (
	headerRefreshToken          = "X-Refresh-Token"
	headerRefreshTokenExpiresAt = "X-Refresh-Token-Expires-At"
	headerVerificationToken     = "X-Verification-Token"
)

// Identifier is who a one-time code is sent to.
type Identifier struct {
	// Type is "email_address" or "phone_number".
	Type string `json:"type"`
	// Value is the address, or the number in E.164 form.
	Value string `json:"value"`
}

// EmailIdentifier returns the Identifier for an email address.
func EmailIdentifier(v string) Identifier { return Identifier{Type: "email_address", Value: v} }

// PhoneIdentifier returns the Identifier for an E.164 phone number.
func PhoneIdentifier(v string) Identifier { return Identifier{Type: "phone_number", Value: v} }

// StartOTP asks the server to send a one-time code to id and returns the
// verification token that CheckOTP must present. The server answers 204
// even for identifiers with no account, so success does not prove one
// exists.
func (cl *Client) StartOTP(ctx context.Context, id Identifier) (verificationToken string, err error) {
	c := &call{op: "start_otp", method: http.MethodPost, path: pathOTP,
		body: map[string]Identifier{"identifier": id}}
	if (id.Type != "email_address" && id.Type != "phone_number") || id.Value == "" {
		return "", c.refuse("identifier needs type email_address or phone_number and a value")
	}
	rep, err := cl.do(ctx, c)
	if err != nil {
		return "", err
	}
	tok := rep.Header.Get(headerVerificationToken)
	if tok == "" {
		return "", c.malformed(rep, "no "+headerVerificationToken+" header")
	}
	return tok, nil
}

// CheckOTP submits the code the user received and returns the challenge
// token to pass to Finalize.
func (cl *Client) CheckOTP(ctx context.Context, verificationToken, code string) (challengeToken string, err error) {
	c := &call{op: "check_otp", method: http.MethodPost, path: pathOTPCheck,
		body:    map[string]string{"code": code},
		header:  http.Header{headerVerificationToken: {verificationToken}},
		secrets: []string{verificationToken, code}}
	if verificationToken == "" || code == "" {
		return "", c.refuse("verification token and code are required")
	}
	return cl.challenge(ctx, c)
}

// LoginPassword checks an email and password and returns the challenge
// token to pass to Finalize. Wrong credentials (401) are a KindCredentials
// error.
func (cl *Client) LoginPassword(ctx context.Context, email, password string) (challengeToken string, err error) {
	c := &call{op: opLoginPassword, method: http.MethodPost, path: pathLoginPassword,
		body:    map[string]string{"identifier": email, "password": password},
		secrets: []string{password}}
	if email == "" || password == "" {
		return "", c.refuse("email and password are required")
	}
	return cl.challenge(ctx, c)
}

// challenge runs a login step whose answer is {"challenge_token": …}.
func (cl *Client) challenge(ctx context.Context, c *call) (string, error) {
	rep, err := cl.do(ctx, c)
	if err != nil {
		return "", err
	}
	var body struct {
		ChallengeToken string `json:"challenge_token"`
	}
	if err := c.decode(rep, &body); err != nil {
		return "", err
	}
	if body.ChallengeToken == "" {
		return "", c.malformed(rep, "no challenge_token")
	}
	return body.ChallengeToken, nil
}

// Finalize exchanges a challenge token for a new session bound to key (the
// key's thumbprint is pinned server-side; every later Refresh and Revoke
// must be signed with it). previousRefreshToken, when not empty, is the
// refresh token of the session being replaced: the server revokes that
// session once the new one exists, so re-logins do not pile up sessions.
func (cl *Client) Finalize(ctx context.Context, key *dpop.Key, challengeToken, previousRefreshToken string) (*Tokens, error) {
	c := &call{op: "finalize", method: http.MethodPost, path: pathFinalize, key: key,
		body:    map[string]string{"challenge_token": challengeToken},
		header:  http.Header{},
		secrets: []string{challengeToken, previousRefreshToken}}
	if previousRefreshToken != "" {
		c.header.Set(headerRefreshToken, previousRefreshToken)
	}
	if key == nil || challengeToken == "" {
		return nil, c.refuse("key and challenge token are required")
	}
	return cl.tokens(ctx, c)
}

// Refresh spends refreshToken and returns a new access token and, when the
// server rotated it, the new refresh token (Tokens.RefreshToken is "" when
// the answer carried no X-Refresh-Token: the server did not rotate and
// refreshToken stays the one to use, as the official SDKs assume). A
// rotated refresh token makes the old one dead; the old one must be
// treated as dead when the error is KindUnknownOutcome, and may be
// presented again after a KindTransient error (see Kind).
func (cl *Client) Refresh(ctx context.Context, key *dpop.Key, refreshToken string) (*Tokens, error) {
	c := &call{op: opRefresh, method: http.MethodPost, path: pathRefresh, key: key, spends: true,
		header:  http.Header{headerRefreshToken: {refreshToken}},
		secrets: []string{refreshToken}}
	if key == nil || refreshToken == "" {
		return nil, c.refuse("key and refresh token are required")
	}
	return cl.tokens(ctx, c)
}

// Revoke ends the session of refreshToken (logout). A session that is
// already gone answers 401, which is returned as a KindDead error: callers
// logging out may treat that as success.
func (cl *Client) Revoke(ctx context.Context, key *dpop.Key, refreshToken string) error {
	c := &call{op: "revoke", method: http.MethodPost, path: pathRevoke, key: key,
		header:  http.Header{headerRefreshToken: {refreshToken}},
		secrets: []string{refreshToken}}
	if key == nil || refreshToken == "" {
		return c.refuse("key and refresh token are required")
	}
	_, err := cl.do(ctx, c)
	return err
}

// Unset, as ListSessions' limit or offset, leaves the parameter out.
const Unset = -1

// ListSessions lists the active sessions of the access token's user.
// limit and offset are sent as given, zero included, as the SDK does (the
// server judges them: it defaults to 10 and 0, and refuses limits outside
// 1–100); a negative value such as Unset leaves the parameter out.
func (cl *Client) ListSessions(ctx context.Context, accessToken string, limit, offset int) (*SessionList, error) {
	var q []string
	if limit >= 0 {
		q = append(q, "limit="+strconv.Itoa(limit))
	}
	if offset >= 0 {
		q = append(q, "offset="+strconv.Itoa(offset))
	}
	c := bearerCall("list_sessions", http.MethodGet, pathListSessions, strings.Join(q, "&"), accessToken)
	if accessToken == "" {
		return nil, c.refuse("access token required")
	}
	rep, err := cl.do(ctx, c)
	if err != nil {
		return nil, err
	}
	list := new(SessionList)
	if err := c.decode(rep, list); err != nil {
		return nil, err
	}
	if list.Sessions == nil {
		list.Sessions = []SessionInfo{}
	}
	return list, nil
}

// Targets of RevokeSessions.
const (
	TargetAll     = "all"     // every session of the user, the caller's included
	TargetOthers  = "others"  // every session except the caller's
	TargetMine    = "mine"    // only the caller's session
	TargetSession = "session" // the session named by sessionID
)

// RevokeSessions revokes sessions of the access token's user. target is
// one of the Target constants; sessionID is required for TargetSession
// and must be empty otherwise. Arguments are checked before sending so a
// typo cannot turn into a wider revocation than intended.
func (cl *Client) RevokeSessions(ctx context.Context, accessToken, target, sessionID string) error {
	// target first, as the SDK orders it (url.Values.Encode would sort).
	q := "target=" + url.QueryEscape(target)
	if sessionID != "" {
		q += "&session_id=" + url.QueryEscape(sessionID)
	}
	c := bearerCall("revoke_sessions", http.MethodPost, pathRevokeTarget, q, accessToken)
	switch {
	case accessToken == "":
		return c.refuse("access token required")
	case target != TargetAll && target != TargetOthers && target != TargetMine && target != TargetSession:
		return c.refuse("target must be all, others, mine or session")
	case (target == TargetSession) != (sessionID != ""):
		return c.refuse("session_id is required with target=session and only then")
	}
	_, err := cl.do(ctx, c)
	return err
}

// bearerCall is a call authenticated by an access token only. Like the iOS
// SDK, no DPoP proof is sent: Prelude access tokens are plain bearer tokens.
func bearerCall(op, method, path, q, accessToken string) *call {
	return &call{op: op, method: method, path: path, query: q,
		header:  http.Header{"Authorization": {"Bearer " + accessToken}},
		secrets: []string{accessToken}}
}
