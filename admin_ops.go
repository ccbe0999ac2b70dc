package injecttoken

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The operations behind the admin API and the dashboard, one handler per
// route of sessionOps (admin.go); each answers an adminapi type or an
// opError (admin_errors.go).

func handleStatus(_ context.Context, c opCall) (any, error) {
	return statusOf(c.s), nil
}

func handleRefresh(ctx context.Context, c opCall) (any, error) {
	if err := c.s.cache().Refresh(ctx); err != nil {
		return nil, c.logFailed("operator refresh failed", opFailure(c.s, opRefresh, err))
	}
	c.logDone("session refreshed by operator")
	return statusOf(c.s), nil
}

func handleLogout(ctx context.Context, c opCall) (any, error) {
	before := c.s.cache().Status()
	if err := c.s.cache().Logout(ctx); err != nil {
		return nil, c.logFailed("operator logout failed", opFailure(c.s, opLogout, err))
	}
	c.s.logger().Info("session logged out by operator", zap.String("session", c.s.name), zap.String("via", c.via),
		zap.String("sub", before.Subject), zap.String("sid", before.SessionID))
	return statusOf(c.s), nil
}

// handleLogin logs the session in with its configured credentials (the
// automatic login's), and turns automatic login back on: the way back
// after an operator's logout of a client_credentials session.
func handleLogin(ctx context.Context, c opCall) (any, error) {
	if !c.s.settings().hasLogin() {
		return nil, badRequest("session %q has no login in its configuration; log in with: %s", c.s.name, loginHint(c.s))
	}
	if err := c.s.cache().Login(ctx, c.s.autoLogin); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, opConfiguredLogin, err))
	}
	c.logDone("session logged in by operator", zap.String("method", "configured"))
	return statusOf(c.s), nil
}

func handleOTPStart(ctx context.Context, c opCall) (any, error) {
	var body adminapi.OTPStart
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	var id prelude.Identifier
	switch {
	case body.PhoneNumber != "" && body.EmailAddress == "":
		id = prelude.PhoneIdentifier(body.PhoneNumber)
	case body.EmailAddress != "" && body.PhoneNumber == "":
		id = prelude.EmailIdentifier(body.EmailAddress)
	default:
		return nil, badRequest(`expected exactly one of "phone_number" or "email_address"`)
	}
	b, err := capability[otpStarter](c)
	if err != nil {
		return nil, err
	}
	login, err := b.StartOTPLogin(ctx, id)
	if err != nil {
		return nil, c.logFailed("sending a one-time code failed", opFailure(c.s, opOTPStart, err))
	}
	c.s.startOTP(login)
	c.s.logger().Info("one-time code sent", zap.String("session", c.s.name), zap.String("via", c.via), zap.String("otp_flow", login.Flow()))
	return adminapi.OTPStarted{Status: "code_sent", OTPFlow: login.Flow()}, nil
}

func handleOTPCheck(ctx context.Context, c opCall) (any, error) {
	var body adminapi.OTPCheck
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.Code == "" {
		return nil, badRequest(`expected {"code": "<the code that was sent>"}`)
	}
	p := c.s.pendingOTP()
	if p == nil {
		return nil, errorf(http.StatusConflict, adminapi.CodeNoOTPPending,
			"no one-time-code login in progress for session %q (none started, or it expired); start one: caddy inject-token login %s --email <address>",
			c.s.name, c.s.name)
	}
	// The code is checked inside the login: the current flow signs the
	// check with the new session's key. A wrong code leaves the login
	// pending for another try.
	if err := c.s.cache().Login(ctx, p.login.Login(body.Code)); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, opOTPCheck, err))
	}
	c.s.finishOTP(p)
	c.logDone("session logged in by operator", zap.String("method", "otp"), zap.String("otp_flow", p.login.Flow()))
	return statusOf(c.s), nil
}

// handleRefreshToken starts an oauth2 refresh_token session from a refresh
// token obtained elsewhere: the first refresh spends it, and the rotated
// ones are kept like any other session's.
func handleRefreshToken(ctx context.Context, c opCall) (any, error) {
	var body adminapi.RefreshTokenLogin
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.RefreshToken == "" {
		return nil, badRequest(`expected {"refresh_token": "..."}`)
	}
	b, err := capability[refreshTokenLoginer](c)
	if err != nil {
		return nil, err
	}
	if err := c.s.cache().Login(ctx, b.LoginWithRefreshToken(body.RefreshToken)); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, opRefreshTokenLogin, err))
	}
	c.logDone("session logged in by operator", zap.String("method", "refresh_token"))
	return statusOf(c.s), nil
}

func handlePassword(ctx context.Context, c opCall) (any, error) {
	var body adminapi.PasswordLogin
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	if body.Email == "" || body.Password == "" {
		return nil, badRequest(`expected {"email": "...", "password": "..."}`)
	}
	b, err := capability[passwordLoginer](c)
	if err != nil {
		return nil, err
	}
	if err := c.s.cache().Login(ctx, b.PasswordLogin(body.Email, body.Password)); err != nil {
		return nil, c.logFailed("operator login failed", opFailure(c.s, opPasswordLogin, err))
	}
	c.logDone("session logged in by operator", zap.String("method", "password"))
	return statusOf(c.s), nil
}

func handleList(ctx context.Context, c opCall) (any, error) {
	q := c.r.URL.Query()
	limit, err := queryInt(q.Get("limit"), "limit")
	if err != nil {
		return nil, err
	}
	offset, err := queryInt(q.Get("offset"), "offset")
	if err != nil {
		return nil, err
	}
	b, err := capability[deviceSessions](c)
	if err != nil {
		return nil, err
	}
	var list *prelude.SessionList
	var sid string
	err = withToken(ctx, c.s, func(tok *tokencache.Token) (err error) {
		sid = tok.SessionID
		list, err = b.ListSessions(ctx, tok.Value, limit, offset)
		return err
	})
	if err != nil {
		return nil, opFailure(c.s, opList, err)
	}
	out := adminapi.DeviceList{Sessions: make([]adminapi.Device, 0, len(list.Sessions)),
		Total: list.Total, Limit: list.Limit, Offset: list.Offset}
	for _, si := range list.Sessions {
		out.Sessions = append(out.Sessions, adminapi.Device{
			ID: si.ID, DeviceType: si.DeviceType, DeviceModel: si.DeviceModel, OSVersion: si.OSVersion,
			CountryCode: si.CountryCode, CreatedAt: stamp(si.CreatedAt), LastSeenAt: stamp(si.LastSeenAt),
			ExpiresAt: stamp(si.ExpiresAt), Current: si.ID != "" && si.ID == sid,
		})
	}
	return out, nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func queryInt(v, name string) (int, error) {
	if v == "" {
		return prelude.Unset, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badRequest("%s must be a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func handleRevoke(ctx context.Context, c opCall) (any, error) {
	var body adminapi.Revoke
	if err := decodeBody(c.r, &body); err != nil {
		return nil, err
	}
	switch body.Target {
	case adminapi.TargetAll, adminapi.TargetOthers, adminapi.TargetMine:
		if body.SessionID != "" {
			return nil, badRequest(`"session_id" is only allowed with "target": "session"`)
		}
	case adminapi.TargetSession:
		if body.SessionID == "" {
			return nil, badRequest(`"target": "session" needs "session_id"`)
		}
	default:
		return nil, badRequest(`expected "target" to be one of all, others, mine or session`)
	}
	b, err := capability[deviceSessions](c)
	if err != nil {
		return nil, err
	}
	var ours bool
	err = withToken(ctx, c.s, func(tok *tokencache.Token) error {
		ours = body.Target == adminapi.TargetAll || body.Target == adminapi.TargetMine ||
			(body.Target == adminapi.TargetSession && body.SessionID == tok.SessionID)
		return b.RevokeSessions(ctx, tok.Value, body.Target, body.SessionID)
	})
	if err != nil {
		return nil, c.logFailed("operator revoke failed", opFailure(c.s, opRevoke, err))
	}
	c.logDone("sessions revoked by operator", zap.String("target", body.Target),
		zap.String("revoked_sid", body.SessionID), zap.Bool("own_session", ours))
	if ours {
		reason := "own session revoked by an operator (target=" + body.Target + ")"
		if err := c.s.cache().Forget(ctx, reason); err != nil {
			return nil, opFailure(c.s, opClearAfterRevoke, err)
		}
	}
	return adminapi.RevokeResult{Target: body.Target, LocalCleared: ours}, nil
}

// withToken runs call with the session's access token; if the server
// rejects the token (a session-dead answer), it is invalidated and call
// runs once more with a fresh one.
func withToken(ctx context.Context, s *session, call func(tok *tokencache.Token) error) error {
	c := s.cache()
	tok, err := c.Token(ctx)
	if err != nil {
		return err
	}
	err = call(tok)
	if !errors.Is(err, tokencache.ErrSessionDead) {
		return err
	}
	c.Invalidate(tok.Value)
	fresh, terr := c.Token(ctx)
	if terr != nil || fresh.Value == tok.Value {
		return err
	}
	return call(fresh)
}

// The operator's logins and Prelude's device sessions are capabilities
// some backends have; the admin routes reach them by interface, never by a
// backend's type.
type (
	passwordLoginer interface {
		PasswordLogin(email, password string) tokencache.LoginFunc
	}
	refreshTokenLoginer interface {
		LoginWithRefreshToken(refreshToken string) tokencache.LoginFunc
	}
	otpStarter interface {
		StartOTPLogin(ctx context.Context, id prelude.Identifier) (*prelude.OTPLogin, error)
	}
	deviceSessions interface {
		ListSessions(ctx context.Context, accessToken string, limit, offset int) (*prelude.SessionList, error)
		RevokeSessions(ctx context.Context, accessToken, target, sessionID string) error
	}
)

// capability is the session's backend as T, or the API's wrong_backend
// answer.
func capability[T any](c opCall) (T, error) {
	set := c.s.settings()
	b, ok := set.backend.(T)
	if !ok {
		return b, errorf(http.StatusBadRequest, adminapi.CodeWrongBackend,
			"session %q uses the %s backend, which does not offer this operation", c.s.name, set.backendName)
	}
	return b, nil
}

// Interface guards
var (
	_ passwordLoginer     = prelude.Backend{}
	_ otpStarter          = prelude.Backend{}
	_ deviceSessions      = prelude.Backend{}
	_ refreshTokenLoginer = (*oauth.Client)(nil)
	_ serverClock         = (*oauth.Client)(nil)
)
