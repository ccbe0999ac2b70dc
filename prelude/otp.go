package prelude

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The one-time-code login flows StartOTPLogin can use.
const (
	// OTPFlowCurrent is the flow of the official web SDK (0.6.0):
	// POST /v1/session/login/otp keeps the verification state in a cookie,
	// and POST /v1/session/login/otp/check, signed with the session's DPoP
	// key, answers with the tokens directly.
	OTPFlowCurrent = "login_otp"
	// OTPFlowDocumented is the flow of the API reference and the mobile
	// SDKs: POST /v1/session/otp returns X-Verification-Token,
	// /otp/check returns a challenge token, /login/finalize the tokens.
	OTPFlowDocumented = "otp"
)

// OTPLogin is a one-time-code login waiting for its code. It holds the
// login's verification state (a cookie jar or a verification token) in
// memory only: nothing in it is persisted, and it formats without it.
// It is safe for concurrent use.
type OTPLogin struct {
	cl   *Client
	flow string
	// hc carries this login's own cookie jar (OTPFlowCurrent): the cookie
	// lives exactly as long as the OTPLogin.
	hc *http.Client
	// vt is the verification token (OTPFlowDocumented).
	vt string
}

// StartOTPLogin asks the server to send a one-time code to id, choosing the
// flow by itself: the current one (OTPFlowCurrent), or the documented one
// (OTPFlowDocumented) when the server answers 404 or 405 for the current
// one's path. Flow says which was used. As with StartOTP, success does not
// prove the identifier has an account.
func (cl *Client) StartOTPLogin(ctx context.Context, id Identifier) (*OTPLogin, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, err
	}
	hc := *cl.hc
	hc.Jar = jar
	l := &OTPLogin{cl: cl, flow: OTPFlowCurrent, hc: &hc}
	c := &call{op: "start_otp_login", method: http.MethodPost, path: pathLoginOTP, hc: l.hc,
		body: map[string]Identifier{"identifier": id}}
	if (id.Type != "email_address" && id.Type != "phone_number") || id.Value == "" {
		return nil, c.refuse("identifier needs type email_address or phone_number and a value")
	}
	_, err = cl.do(ctx, c)
	var e *Error
	if errors.As(err, &e) && (e.Status == http.StatusNotFound || e.Status == http.StatusMethodNotAllowed) {
		vt, err := cl.StartOTP(ctx, id)
		if err != nil {
			return nil, err
		}
		return &OTPLogin{cl: cl, flow: OTPFlowDocumented, vt: vt}, nil
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Flow is OTPFlowCurrent or OTPFlowDocumented.
func (l *OTPLogin) Flow() string { return l.flow }

// Resend asks the server to send the code again.
func (l *OTPLogin) Resend(ctx context.Context) error {
	c := &call{op: "retry_otp", method: http.MethodPost, path: pathLoginOTPRetry, hc: l.hc}
	if l.flow == OTPFlowDocumented {
		c = &call{op: "retry_otp", method: http.MethodPost, path: pathOTPRetry,
			header: http.Header{headerVerificationToken: {l.vt}}, secrets: []string{l.vt}}
	}
	_, err := l.cl.do(ctx, c)
	return err
}

// Login returns the tokencache.LoginFunc that completes the login with
// code, binding the new session to the key it is given and naming the
// previous session's refresh token, if any, so the server can revoke it.
// OTPFlowCurrent sends the code with a DPoP proof (and the cookie) and gets
// the tokens back; OTPFlowDocumented checks the code, then finalizes. A
// wrong code is a KindCaller error with code bad_check_code: the login
// stays usable for another try.
func (l *OTPLogin) Login(code string) tokencache.LoginFunc {
	return func(ctx context.Context, key *dpop.Key, previousRefreshToken string) (*tokencache.Grant, error) {
		t, err := l.check(ctx, key, code, previousRefreshToken)
		if err != nil {
			return nil, err
		}
		return t.Grant(), nil
	}
}

func (l *OTPLogin) check(ctx context.Context, key *dpop.Key, code, prev string) (*Tokens, error) {
	if l.flow == OTPFlowDocumented {
		challenge, err := l.cl.CheckOTP(ctx, l.vt, code)
		if err != nil {
			return nil, err
		}
		return l.cl.Finalize(ctx, key, challenge, prev)
	}
	c := &call{op: "check_otp_login", method: http.MethodPost, path: pathLoginOTPCheck, key: key, hc: l.hc,
		body:    map[string]string{"code": code},
		header:  http.Header{},
		secrets: []string{code, prev}}
	// Like finalize: the server may revoke the session being replaced.
	// (A browser sends it as its refresh cookie on the same request.)
	if prev != "" {
		c.header.Set(headerRefreshToken, prev)
	}
	for _, ck := range l.hc.Jar.Cookies(l.cl.endpoint(pathLoginOTPCheck, "")) {
		c.secrets = append(c.secrets, ck.Value)
	}
	if key == nil || code == "" {
		return nil, c.refuse("key and code are required")
	}
	return l.cl.tokens(ctx, c)
}

// String names the flow only; the verification state is never printed.
func (l *OTPLogin) String() string { return "prelude.OTPLogin{flow: " + l.flow + "}" }

// GoString is String.
func (l *OTPLogin) GoString() string { return l.String() }

// Format makes every verb print String.
func (l *OTPLogin) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(l.String())) }
