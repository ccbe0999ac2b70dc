package sandbox

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

func TestStrictRequests(t *testing.T) {
	srv := NewServer(t, Options{})
	otp := srv.URL + "/v1/session/otp"
	valid := `{"identifier":{"type":"email_address","value":"strict@example.com"}}`
	cases := []struct {
		name, method, url, contentType, body string
		status                               int
		code                                 string
	}{
		{"unknown field", "POST", otp, "", `{"identifier":{"type":"email_address","value":"a@b.c"},"extra":1}`, 400, "bad_request"},
		{"trailing data", "POST", otp, "", valid + `{}`, 400, "bad_request"},
		{"not JSON", "POST", otp, "", `identifier=a`, 400, "bad_request"},
		{"wrong content type", "POST", otp, "text/plain", valid, 400, "bad_request"},
		{"empty body", "POST", otp, "", "", 400, "bad_request"},
		{"oversized body", "POST", otp, "", `{"identifier":{"type":"email_address","value":"` + strings.Repeat("a", 70<<10) + `@b.c"}}`, 413, "bad_request"},
		{"bad identifier type", "POST", otp, "", `{"identifier":{"type":"username","value":"bob"}}`, 400, "invalid_identifier"},
		{"bad phone", "POST", otp, "", `{"identifier":{"type":"phone_number","value":"0612"}}`, 400, "invalid_identifier"},
		{"no identifier", "POST", otp, "", `{}`, 400, "invalid_identifier"},
		{"wrong method", "GET", otp, "", "", 405, "method_not_allowed"},
		{"unknown API path", "POST", srv.URL + "/v1/session/nope", "", "", 404, "not_found"},
		{"unknown path", "GET", srv.URL + "/elsewhere", "", "", 404, "not_found"},
		{"refresh with junk step-up token", "POST", srv.URL + "/v1/session/refresh", "", `{"step_up_token":"x"}`, 401, "invalid_challenge_token"},
		{"otp with identifier and challenge", "POST", otp, "", `{"identifier":{"type":"email_address","value":"a@b.c"},"challenge_token":"x"}`, 400, "bad_request"},
		{"step-up unknown field", "POST", srv.URL + "/v1/session/stepup/request", "", `{"scope":"transfer:write","x":1}`, 400, "bad_request"},
		{"step-up bad scope", "POST", srv.URL + "/v1/session/stepup/request", "", `{"scope":"a b"}`, 400, "bad_request"},
		{"refresh with junk body", "POST", srv.URL + "/v1/session/refresh", "", `{"x":1}`, 400, "bad_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			if tc.contentType != "" {
				hdr.Set("Content-Type", tc.contentType)
			}
			r := call(t, tc.method, tc.url, hdr, tc.body)
			expect(t, r, tc.status, tc.code)
			if r.Header.Get("Content-Type") != "application/json" {
				t.Errorf("error without JSON content type: %v", r.Header)
			}
			if tc.status == 405 && r.Header.Get("Allow") != "POST" {
				t.Errorf("Allow = %q", r.Header.Get("Allow"))
			}
		})
	}
}

func TestOTPLogin(t *testing.T) {
	srv := NewServer(t, Options{})
	r := call(t, "POST", srv.URL+"/v1/session/otp", nil, `{"identifier":{"type":"phone_number","value":"+33612345678"},"login_config_id":"lcfg_1"}`)
	expect(t, r, http.StatusNoContent, "")
	if r.Header.Get("X-Verification-Token") == "" || len(r.Header.Values("Set-Cookie")) != 0 {
		t.Fatalf("documented flow: want X-Verification-Token and no cookie, got %v", r.Header)
	}
	if got := srv.LastOTP("+33612345678"); got != DefaultOTPCode {
		t.Fatalf("LastOTP = %q", got)
	}
	if got := srv.LastOTP("nobody@example.com"); got != "" {
		t.Fatalf("LastOTP for an identifier never sent a code = %q", got)
	}
	r = call(t, "POST", srv.URL+"/v1/session/otp", nil, `{"identifier":{"type":"email_address","value":"Otp@Example.com"}}`)
	vt := http.Header{"X-Verification-Token": {r.Header.Get("X-Verification-Token")}}
	check := srv.URL + "/v1/session/otp/check"
	expect(t, call(t, "POST", srv.URL+"/v1/session/otp/retry", vt, ""), http.StatusNoContent, "")
	expect(t, call(t, "POST", check, vt, `{"code":"000000"}`), 400, "bad_check_code")
	// A wrong code does not spend the verification; the right one does.
	challengeFrom(t, call(t, "POST", check, vt, fmt.Sprintf(`{"code":%q}`, srv.LastOTP("otp@example.com"))))
	expect(t, call(t, "POST", check, vt, `{"code":"123456"}`), 400, "invalid_verification_token")
	expect(t, call(t, "POST", check, nil, `{"code":"123456"}`), 400, "invalid_verification_token")
	expect(t, call(t, "POST", srv.URL+"/v1/session/otp/retry", vt, ""), 400, "invalid_verification_token")
	if got := srv.Stats().Rejections["bad_check_code"]; got != 1 {
		t.Errorf("bad_check_code count = %d", got)
	}
}

// The current (web SDK 0.6.0) flow: the verification lives in a cookie,
// and the DPoP-signed check answers with the tokens.
func TestCurrentOTPLogin(t *testing.T) {
	srv := NewServer(t, Options{})
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	post := func(c *http.Client, path string, hdr http.Header, body string) reply {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return reply{resp.StatusCode, resp.Header, b}
	}
	r := post(hc, "/v1/session/login/otp", nil, `{"identifier":{"type":"email_address","value":"web@example.com"}}`)
	expect(t, r, http.StatusNoContent, "")
	if r.Header.Get("X-Verification-Token") != "" || r.Header.Get("Set-Cookie") == "" {
		t.Fatalf("current flow: want a cookie and no X-Verification-Token, got %v", r.Header)
	}
	expect(t, post(hc, "/v1/session/login/otp/retry", nil, ""), http.StatusNoContent, "")
	expect(t, post(http.DefaultClient, "/v1/session/login/otp/retry", nil, ""), 400, "invalid_verification_token")

	cl := newClient(t, srv.URL)
	proof := func() http.Header {
		return http.Header{"DPoP": {proofFor(t, cl.key, "POST", srv.URL+"/v1/session/login/otp/check", dpop.ProofOptions{})}}
	}
	expect(t, post(hc, "/v1/session/login/otp/check", nil, `{"code":"123456"}`), 401, "missing_dpop_proof")
	expect(t, post(http.DefaultClient, "/v1/session/login/otp/check", proof(), `{"code":"123456"}`), 400, "invalid_verification_token")
	expect(t, post(hc, "/v1/session/login/otp/check", proof(), `{"code":"000000"}`), 400, "bad_check_code")
	r = post(hc, "/v1/session/login/otp/check", proof(), `{"code":"123456"}`)
	expect(t, r, http.StatusOK, "")
	refresh, _ := cl.grant(r)
	if st := srv.Stats(); st.Logins != 1 {
		t.Errorf("logins = %d", st.Logins)
	}
	// The session is pinned to the check's key, and the cookie is spent.
	cl.mustRefresh(refresh)
	expect(t, post(hc, "/v1/session/login/otp/check", proof(), `{"code":"123456"}`), 400, "invalid_verification_token")

	srv.DisableCurrentOTPLogin(true)
	expect(t, post(hc, "/v1/session/login/otp", nil, `{"identifier":{"type":"email_address","value":"web@example.com"}}`), 404, "not_found")
}

func TestPasswordLogin(t *testing.T) {
	srv := NewServer(t, Options{})
	pw := srv.URL + "/v1/session/login/email/password"
	demoChallenge(t, srv.URL)
	expect(t, call(t, "POST", pw, nil, `{"identifier":"demo@example.com","password":"nope"}`), 401, "unauthorized")
	expect(t, call(t, "POST", pw, nil, `{"identifier":"ghost@example.com","password":""}`), 401, "unauthorized")
	// An OTP-only user has no password to match, not even the empty one.
	call(t, "POST", srv.URL+"/v1/session/otp", nil, `{"identifier":{"type":"email_address","value":"otp-only@example.com"}}`)
	expect(t, call(t, "POST", pw, nil, `{"identifier":"otp-only@example.com","password":""}`), 401, "unauthorized")
	id := srv.AddUser("otp-only@example.com", "s3cret")
	if !strings.HasPrefix(id, "usr_") {
		t.Fatalf("AddUser = %q", id)
	}
	_, access := newClient(t, srv.URL).finalize(challengeFrom(t, call(t, "POST", pw, nil, `{"identifier":"otp-only@example.com","password":"s3cret"}`)), "")
	if c, err := srv.VerifyAccessToken(access); err != nil || c.Subject != id {
		t.Fatalf("claims %+v, err %v; want sub %s", c, err, id)
	}
	if got := srv.Stats().Rejections["invalid_credentials"]; got != 3 {
		t.Errorf("invalid_credentials = %d", got)
	}
}

// Re-login that forwards the old refresh token ends the old session.
func TestFinalizeRevokesPreviousSession(t *testing.T) {
	srv := NewServer(t, Options{})
	before, cl := newClient(t, srv.URL), newClient(t, srv.URL) // re-login rotates the key
	old, _ := before.login("relogin@example.com", "")
	fresh, _ := cl.login("relogin@example.com", old)
	expect(t, before.refresh(old), 401, "unauthorized")
	if srv.Stats().Rejections["session_revoked"] != 1 {
		t.Error("old session was not revoked")
	}
	// An unresolvable previous token is ignored.
	cl.login("relogin@example.com", "garbage")
	cl.mustRefresh(fresh)
}

func TestMeListPaging(t *testing.T) {
	srv := NewServer(t, Options{})
	var access string
	for range 3 {
		_, access = newClient(t, srv.URL).login("pages@example.com", "")
	}
	newClient(t, srv.URL).login("someone-else@example.com", "")
	l := listSessions(t, srv.URL, access, "?limit=2&offset=1")
	if l.Total != 3 || l.Limit != 2 || l.Offset != 1 || len(l.Sessions) != 2 {
		t.Fatalf("page = %+v", l)
	}
	all := listSessions(t, srv.URL, access, "?limit=100")
	if all.Sessions[1].ID != l.Sessions[0].ID || all.Sessions[2].ID != l.Sessions[1].ID {
		t.Errorf("pages are not stable: %+v vs %+v", all, l)
	}
	if l := listSessions(t, srv.URL, access, "?offset=7"); l.Total != 3 || len(l.Sessions) != 0 {
		t.Errorf("past the end = %+v", l)
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?limit=ten", "?limit=-1"} {
		expect(t, call(t, "GET", srv.URL+"/v1/session/me/list"+q, bearer(access), ""), 400, "invalid_pagination_limit")
	}
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list?offset=-1", bearer(access), ""), 400, "invalid_pagination_offset")
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", nil, ""), 401, "unauthorized")
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", bearer("x.y.z"), ""), 401, "unauthorized")
}

func TestMeRevokeTargets(t *testing.T) {
	srv := NewServer(t, Options{})
	a, b, c := newClient(t, srv.URL), newClient(t, srv.URL), newClient(t, srv.URL)
	aTok, aAccess := a.login("targets@example.com", "")
	bTok, bAccess := b.login("targets@example.com", "")
	cTok, _ := c.login("targets@example.com", "")
	_, strangerAccess := newClient(t, srv.URL).login("stranger@example.com", "")
	stranger, _ := srv.VerifyAccessToken(strangerAccess)
	bClaims, _ := srv.VerifyAccessToken(bAccess)
	revoke := func(access, query string) reply {
		return call(t, "POST", srv.URL+"/v1/session/me/revoke"+query, bearer(access), "")
	}
	expect(t, revoke(aAccess, "?target=session"), 400, "bad_request")
	expect(t, revoke(aAccess, "?target=everyone"), 400, "bad_request")
	expect(t, revoke(aAccess, "?target=session&session_id=ses_unknown"), 404, "not_found")
	// Another user's session is as good as unknown.
	expect(t, revoke(aAccess, "?target=session&session_id="+stranger.SessionID), 404, "not_found")
	expect(t, revoke(aAccess, "?target=session&session_id="+bClaims.SessionID), 204, "")
	expect(t, b.refresh(bTok), 401, "unauthorized")
	a.mustRefresh(aTok)

	// A proof sent along must be valid: Android sends one, iOS does not.
	expect(t, a.dpopCall("POST", "/v1/session/me/revoke?target=mine", bearer(aAccess), ""), 204, "")
	expect(t, revoke(aAccess, "?target=all"), 401, "unauthorized") // a's session is gone
	c.mustRefresh(cTok)
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", bearer(strangerAccess), ""), 200, "")
	if l := listSessions(t, srv.URL, strangerAccess, ""); l.Total != 1 {
		t.Errorf("stranger sessions = %d, revocation leaked across users", l.Total)
	}
}

func TestMeRoutesCheckOptionalProof(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	_, access := cl.login("optional-proof@example.com", "")
	other := newKey(t)
	hdr := bearer(access)
	hdr.Set("DPoP", proofFor(t, other, "GET", srv.URL+"/v1/session/me/list", dpop.ProofOptions{}))
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", hdr, ""), 401, "dpop_key_mismatch")
	hdr.Set("DPoP", proofFor(t, cl.key, "POST", srv.URL+"/v1/session/me/list", dpop.ProofOptions{}))
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", hdr, ""), 401, "invalid_dpop_proof")
	expect(t, cl.dpopCall("GET", "/v1/session/me/list", bearer(access), ""), 200, "")
}

func TestRevokeSessionKnob(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, access := cl.login("admin-revoked@example.com", "")
	c, _ := srv.VerifyAccessToken(access)
	if !srv.RevokeSession(c.SessionID) || srv.RevokeSession(c.SessionID) || srv.RevokeSession("ses_unknown") {
		t.Fatal("RevokeSession should succeed exactly once for a live session")
	}
	expect(t, cl.refresh(token), 401, "unauthorized")
	// Access tokens stay valid until exp, as with the real service.
	expect(t, call(t, "GET", srv.URL+"/whoami", bearer(access), ""), 200, "")
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", bearer(access), ""), 401, "unauthorized")
}

func TestAdvanceClockAndTTL(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, access := cl.login("clock@example.com", "")
	srv.SetAccessTokenTTL(5 * time.Second)
	_, short := cl.mustRefresh(token)
	if c, _ := srv.VerifyAccessToken(short); c.Expiry.Time().Sub(c.IssuedAt.Time()) != 5*time.Second {
		t.Errorf("TTL not applied: %+v", c)
	}
	srv.AdvanceClock(10 * time.Second)
	if _, err := srv.VerifyAccessToken(short); err == nil {
		t.Error("5s token valid 10s later")
	}
	if _, err := srv.VerifyAccessToken(access); err != nil {
		t.Errorf("60s token expired after 10s: %v", err)
	}
	r := call(t, "GET", srv.URL+"/.well-known/jwks.json", nil, "")
	if d, err := http.ParseTime(r.Header.Get("Date")); err != nil || time.Until(d) < 8*time.Second {
		t.Errorf("Date %q does not follow the sandbox clock", r.Header.Get("Date"))
	}
}
