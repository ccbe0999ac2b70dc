package injecttoken

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// Prelude as its newest official SDK speaks it, through a real Caddy in
// front of the strict sandbox (issue 14).

// TestOTPLoginBothFlows: the admin OTP login uses the current flow, and
// falls back to the documented one on a server without it; both end in a
// working session, and status says which flow was used.
func TestOTPLoginBothFlows(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	uid := srv.AddUser(sandbox.DemoEmail, sandbox.DemoPassword)
	dir := t.TempDir()
	g := gateway{storage: dir, upstream: srv.URL, rewrite: "/whoami", block: "session otp-flows\nprelude " + srv.URL}
	tester := g.start(t)
	a := &adminClient{T: t}
	const base = "/inject_token/sessions/otp-flows"

	for _, flow := range []string{"login_otp", "otp"} {
		srv.DisableCurrentOTPLogin(flow == "otp")
		m := a.Call("POST", base+"/login/otp", `{"email_address":"demo@example.com"}`, 200)
		if m["status"] != "code_sent" || m["otp_flow"] != flow {
			t.Fatalf("otp start: %v, want flow %s", m, flow)
		}
		if st := a.Call("GET", base, "", 200); st["otp_pending"] != true || st["otp_flow"] != flow {
			t.Fatalf("status while pending: %v", st)
		}
		// A wrong code is refused and the login stays pending.
		a.Call("POST", base+"/login/otp/check", `{"code":"000000"}`, 422) // the server refused the code (status table in docs/admin-api.md)
		st := a.Call("POST", base+"/login/otp/check", `{"code":"`+sandbox.DefaultOTPCode+`"}`, 200)
		if st["state"] != "active" || st["sub"] != uid || st["otp_flow"] != flow || st["otp_pending"] != false {
			t.Fatalf("after %s login: %v", flow, st)
		}
		if w := getWhoami(t, tester); w.Claims["sid"] != st["sid"] {
			t.Fatalf("proxy uses sid %v, want %v", w.Claims["sid"], st["sid"])
		}
		// The session works past its first refresh.
		a.Call("POST", base+"/refresh", "", 200)
		getWhoami(t, tester)
	}
	checks := map[string]int{}
	for _, r := range srv.Requests() {
		if strings.HasSuffix(r.Path, "/check") {
			checks[r.Path]++
			if r.Header.Get("Cookie") != "" && r.Path != "/v1/session/login/otp/check" {
				t.Errorf("a cookie went to %s", r.Path)
			}
		}
	}
	if checks["/v1/session/login/otp/check"] != 2 || checks["/v1/session/otp/check"] != 2 {
		t.Errorf("checks by path: %v", checks)
	}
	if st := srv.Stats(); st.ReuseEvents != 0 || st.Logins != 2 {
		t.Errorf("sandbox: %+v", st)
	}
	a.AssertNoSecrets(storedString(t, dir, "otp-flows", "refresh_token"), storedString(t, dir, "otp-flows", "access_token"))
}

// passwordGateway is a Caddy with one password-login session in front of
// srv, logged in.
func passwordGateway(t *testing.T, srv *sandboxtest.Server, name string) (*adminClient, string) {
	t.Helper()
	srv.AddUser(sandbox.DemoEmail, sandbox.DemoPassword)
	t.Setenv("IT_TEST_PASSWORD", sandbox.DemoPassword)
	g := gateway{storage: t.TempDir(), upstream: srv.URL, rewrite: "/whoami",
		block: fmt.Sprintf("session %s\nprelude %s\nlogin password %s {env.IT_TEST_PASSWORD}", name, srv.URL, sandbox.DemoEmail)}
	tester := g.start(t)
	sid := getWhoami(t, tester).Claims["sid"].(string)
	return &adminClient{T: t}, sid
}

// refreshUntilOK forces refreshes until one succeeds; every failure must
// leave the session active (never a re-login, never logged out).
func refreshUntilOK(t *testing.T, a *adminClient, name string, check func(st map[string]any)) map[string]any {
	t.Helper()
	for range 5 {
		status, _, body := do(t, http.DefaultClient, "POST", adminURL+"/inject_token/sessions/"+name+"/refresh", nil)
		if status == 200 {
			return a.Call("GET", "/inject_token/sessions/"+name, "", 200)
		}
		st := a.Call("GET", "/inject_token/sessions/"+name, "", 200)
		if st["state"] != "active" {
			t.Fatalf("refresh answered %d %s and the session is %v", status, body, st)
		}
		if check != nil {
			check(st)
		}
	}
	t.Fatal("no refresh succeeded")
	return nil
}

// TestRefreshWithoutRotationKeepsSession: a refresh answered without
// X-Refresh-Token keeps the current token; it is presented again without
// reuse, and the session is the same.
func TestRefreshWithoutRotationKeepsSession(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	a, sid := passwordGateway(t, srv, "no-rotate")
	srv.SkipRotation(1)
	st := a.Call("POST", "/inject_token/sessions/no-rotate/refresh", "", 200)
	if st["state"] != "active" || st["sid"] != sid {
		t.Fatalf("after an unrotated refresh: %v", st)
	}
	st = a.Call("POST", "/inject_token/sessions/no-rotate/refresh", "", 200)
	if st["state"] != "active" || st["sid"] != sid {
		t.Fatalf("after refreshing with the kept token: %v", st)
	}
	if s := srv.Stats(); s.ReuseEvents != 0 || s.Logins != 1 || s.RefreshSuccesses < 2 {
		t.Fatalf("sandbox: %+v", s)
	}
}

// TestInvalidProofOnRefreshIsRetried: the sandbox's clock jumps an hour
// (the first proof is refused for its iat, the client re-dates it), and
// the re-dated proof is refused once more: the session must survive that
// and the next attempt succeed with the same session.
func TestInvalidProofOnRefreshIsRetried(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	a, sid := passwordGateway(t, srv, "skewed")
	srv.AdvanceClock(time.Hour)
	srv.FaultRefreshes(1, sandbox.Fault{Status: 401, Code: "invalid_dpop_proof"})
	st := refreshUntilOK(t, a, "skewed", nil)
	if st["state"] != "active" || st["sid"] != sid {
		t.Fatalf("after the rejected proofs: %v (want sid %s)", st, sid)
	}
	s := srv.Stats()
	if s.ReuseEvents != 0 || s.Logins != 1 || s.Rejections["iat_window"] == 0 || s.Rejections["injected_failure"] != 1 {
		t.Fatalf("sandbox: %+v", s)
	}
}

// TestKeyMismatchReportedNotLooped: dpop_key_mismatch on the session's own
// key is reported (status says so) and is no reason to log in again.
func TestKeyMismatchReportedNotLooped(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	a, sid := passwordGateway(t, srv, "mismatch")
	srv.FaultRefreshes(2, sandbox.Fault{Status: 401, Code: "dpop_key_mismatch"})
	reported := false
	st := refreshUntilOK(t, a, "mismatch", func(st map[string]any) {
		e, _ := st["last_error"].(string)
		reported = reported || (strings.Contains(e, "dpop_key_mismatch") && strings.Contains(e, "bug"))
	})
	if !reported || st["sid"] != sid {
		t.Fatalf("reported %v; status %v (want sid %s)", reported, st, sid)
	}
	if s := srv.Stats(); s.Logins != 1 || s.ReuseEvents != 0 || s.Rejections["injected_failure"] != 2 {
		t.Fatalf("sandbox: %+v", s)
	}
}
