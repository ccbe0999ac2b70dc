package prelude

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TestOTPLoginFlows: the current flow (cookie, DPoP-signed check answering
// tokens) and, when the server lacks it, the documented one; both end in
// a session pinned to the login's key that replaced the previous one.
func TestOTPLoginFlows(t *testing.T) {
	for _, flow := range []string{OTPFlowCurrent, OTPFlowDocumented} {
		t.Run(flow, func(t *testing.T) {
			srv, c := sandboxClient(t, sandbox.Options{})
			srv.DisableCurrentOTPLogin(flow == OTPFlowDocumented)
			ctx := context.Background()
			oldKey, old := login(t, c)

			l, err := c.StartOTPLogin(ctx, EmailIdentifier(sandbox.DemoEmail))
			if err != nil {
				t.Fatal(err)
			}
			if l.Flow() != flow {
				t.Fatalf("flow %q, want %q", l.Flow(), flow)
			}
			if err := l.Resend(ctx); err != nil {
				t.Fatalf("resend: %v", err)
			}
			key := newKey(t)
			_, err = l.Login("000000")(ctx, key, old.RefreshToken)
			if e := asError(t, err, KindCaller); e.Code != "bad_check_code" {
				t.Fatalf("wrong code: %v", err)
			}
			g, err := l.Login(srv.LastOTP(sandbox.DemoEmail))(ctx, key, old.RefreshToken)
			if err != nil {
				t.Fatalf("login after a wrong code: %v", err)
			}
			if g.RefreshToken == "" || g.AccessToken == "" || g.TokenType != "Bearer" {
				t.Fatalf("grant %+v", g)
			}
			if _, err := c.Refresh(ctx, key, g.RefreshToken); err != nil {
				t.Fatalf("new session not pinned to the login's key: %v", err)
			}
			if _, err := c.Refresh(ctx, oldKey, old.RefreshToken); !errors.Is(err, tokencache.ErrSessionDead) {
				t.Errorf("previous session still alive: %v", err)
			}
			// What went over the wire.
			var check sandbox.Request
			for _, r := range srv.Requests() {
				if strings.HasSuffix(r.Path, "/otp/check") {
					check = r
				}
			}
			wantPath := map[string]string{OTPFlowCurrent: pathLoginOTPCheck, OTPFlowDocumented: pathOTPCheck}[flow]
			if check.Path != wantPath {
				t.Fatalf("check went to %q, want %q", check.Path, wantPath)
			}
			if flow == OTPFlowCurrent && (check.Header.Get("DPoP") == "" || check.Header.Get("Cookie") == "" ||
				check.Header.Get(headerVerificationToken) != "" || check.Header.Get(headerRefreshToken) != old.RefreshToken) {
				t.Errorf("current check headers: %v", check.Header)
			}
			if flow == OTPFlowDocumented && (check.Header.Get(headerVerificationToken) == "" || check.Header.Get("Cookie") != "") {
				t.Errorf("documented check headers: %v", check.Header)
			}
			for _, s := range []string{fmt.Sprint(l), fmt.Sprintf("%+v", l), fmt.Sprintf("%#v", l), fmt.Sprintf("%d", l)} {
				if s != "prelude.OTPLogin{flow: "+flow+"}" {
					t.Errorf("OTPLogin prints as %q", s)
				}
			}
		})
	}
}

// Each OTP login keeps its own cookie: two started at once finish as the
// user each was started for.
func TestOTPLoginCookiesArePerLogin(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	a, err := c.StartOTPLogin(ctx, EmailIdentifier("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.StartOTPLogin(ctx, EmailIdentifier("b@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	ga, err := a.Login(sandbox.DefaultOTPCode)(ctx, newKey(t), "")
	if err != nil {
		t.Fatal(err)
	}
	gb, err := b.Login(sandbox.DefaultOTPCode)(ctx, newKey(t), "")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := srv.VerifyAccessToken(ga.AccessToken)
	cb, _ := srv.VerifyAccessToken(gb.AccessToken)
	if ca.Subject == cb.Subject {
		t.Fatalf("both logins ended as %s: the cookie was shared", ca.Subject)
	}
	// The client's own HTTP client never got a jar.
	if c.hc.Jar != nil {
		t.Error("the shared client keeps cookies")
	}
}

// TestWireDetails checks the recorded requests for what the SDK sends:
// X-SDK-User-Agent with this module's own name, JSON Content-Type on
// bodiless POSTs, me/revoke query target first, limit/offset 0 passed.
func TestWireDetails(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	key, tok := login(t, c)
	tok, err := c.Refresh(ctx, key, tok.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.ListSessions(ctx, tok.AccessToken, 0, 0) // the server refuses limit=0; it is still sent
	if _, err := c.ListSessions(ctx, tok.AccessToken, Unset, Unset); err != nil {
		t.Fatal(err)
	}
	_ = c.RevokeSessions(ctx, tok.AccessToken, TargetSession, "ses_x")
	if err := c.Revoke(ctx, key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	reqs := srv.Requests()
	for _, tc := range []struct {
		path, query, contentType string
	}{
		{pathLoginPassword, "", "application/json"},
		{pathFinalize, "", "application/json"},
		{pathRefresh, "", "application/json"},
		{pathListSessions, "limit=0&offset=0", ""},
		{pathListSessions, "", ""},
		{pathRevokeTarget, "target=session&session_id=ses_x", "application/json"},
		{pathRevoke, "", "application/json"},
	} {
		if len(reqs) == 0 {
			t.Fatalf("no request recorded for %s", tc.path)
		}
		r := reqs[0]
		reqs = reqs[1:]
		if r.Path != tc.path || r.RawQuery != tc.query || r.Header.Get("Content-Type") != tc.contentType {
			t.Errorf("%s?%s Content-Type %q, want %s?%s %q", r.Path, r.RawQuery, r.Header.Get("Content-Type"), tc.path, tc.query, tc.contentType)
		}
		if ua := r.Header.Get("X-SDK-User-Agent"); !strings.HasPrefix(ua, "caddy-inject-token/") {
			t.Errorf("%s: X-SDK-User-Agent %q", r.Path, ua)
		}
	}
}
