package sandbox

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// cookieOf returns the value of cookie name set by r ("" if none; "-" if
// it was cleared).
func cookieOf(r reply, name string) string {
	for _, c := range (&http.Response{Header: r.Header}).Cookies() {
		if c.Name == name {
			if c.MaxAge < 0 {
				return "-"
			}
			return c.Value
		}
	}
	return ""
}

// A page on an allowed origin gets CORS answers (preflight included) that
// let the web SDK send its headers and read the ones it needs; any other
// origin gets none.
func TestCORSForAllowedOrigins(t *testing.T) {
	srv := NewServer(t, Options{AllowedOrigins: []string{"http://app.test:8080"}})
	pre := func(origin string) reply {
		return call(t, "OPTIONS", srv.URL+"/v1/session/refresh", http.Header{"Origin": {origin},
			"Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type,dpop,x-refresh-token,x-sdk-user-agent"}}, "")
	}
	r := pre("http://app.test:8080")
	h := r.Header
	if r.Status != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "http://app.test:8080" ||
		h.Get("Access-Control-Allow-Credentials") != "true" || h.Get("Access-Control-Allow-Methods") != "POST" {
		t.Fatalf("preflight: %v %v", r, h)
	}
	for _, want := range []string{"content-type", "dpop", "x-refresh-token", "x-sdk-user-agent", "authorization"} {
		if !strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), want) {
			t.Errorf("Allow-Headers %q lacks %s", h.Get("Access-Control-Allow-Headers"), want)
		}
	}
	if r := pre("http://evil.test"); r.Status != http.StatusNoContent || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from another origin: %v %v", r, r.Header)
	}
	cl := newClient(t, srv.URL)
	r = cl.dpopCall("POST", "/v1/session/login/finalize", http.Header{"Origin": {"http://app.test:8080"}},
		fmt.Sprintf(`{"challenge_token":%q}`, demoChallenge(t, srv.URL)))
	expect(t, r, http.StatusOK, "")
	for _, want := range []string{"X-Refresh-Token", "X-Refresh-Token-Expires-At", "DPoP-Nonce", "Date"} {
		if !strings.Contains(r.Header.Get("Access-Control-Expose-Headers"), want) {
			t.Errorf("Expose-Headers %q lacks %s", r.Header.Get("Access-Control-Expose-Headers"), want)
		}
	}
	if r.Header.Get("Access-Control-Allow-Origin") != "http://app.test:8080" {
		t.Fatalf("no Allow-Origin on the answer: %v", r.Header)
	}
}

// A browser session: the refresh token also travels in the documented
// __refresh_{app_id} cookie. A refresh by cookie still needs a valid proof
// and rotates the cookie; a spent cookie is reuse; a logout by cookie
// alone (the SDK that lost its key) ends the session and clears it.
func TestRefreshCookie(t *testing.T) {
	srv := NewServer(t, Options{AllowedOrigins: []string{"*"}})
	cl := newClient(t, srv.URL)
	origin := http.Header{"Origin": {"http://app.test"}}
	r := cl.dpopCall("POST", "/v1/session/login/finalize", origin, fmt.Sprintf(`{"challenge_token":%q}`, demoChallenge(t, srv.URL)))
	expect(t, r, http.StatusOK, "")
	first := cookieOf(r, "__refresh_sandbox")
	if first == "" || first != r.Header.Get("X-Refresh-Token") {
		t.Fatalf("refresh cookie %q, header %q", first, r.Header.Get("X-Refresh-Token"))
	}
	byCookie := func(tok string) http.Header {
		return http.Header{"Origin": {"http://app.test"}, "Cookie": {"__refresh_sandbox=" + tok}}
	}
	expect(t, call(t, "POST", srv.URL+"/v1/session/refresh", byCookie(first), ""), http.StatusUnauthorized, "missing_dpop_proof")
	r = cl.dpopCall("POST", "/v1/session/refresh", byCookie(first), "")
	expect(t, r, http.StatusOK, "")
	second := cookieOf(r, "__refresh_sandbox")
	if second == "" || second == first {
		t.Fatalf("cookie not rotated: %q", second)
	}
	other := newClient(t, srv.URL) // a proof from another key never passes
	expect(t, other.dpopCall("POST", "/v1/session/refresh", byCookie(second), ""), http.StatusUnauthorized, "dpop_key_mismatch")
	r = call(t, "POST", srv.URL+"/v1/session/revoke", byCookie(second), "")
	expect(t, r, http.StatusNoContent, "")
	if cookieOf(r, "__refresh_sandbox") != "-" {
		t.Fatalf("logout did not clear the cookie: %v", r.Header)
	}
	expect(t, cl.dpopCall("POST", "/v1/session/refresh", byCookie(second), ""), http.StatusUnauthorized, "unauthorized")
	expect(t, cl.dpopCall("POST", "/v1/session/refresh", byCookie(first), ""), http.StatusUnauthorized, "unauthorized")
}

// The OTP verification cookie has the documented name,
// __verification-login_{app_id}; the old __Host- name is still accepted.
func TestVerificationCookieName(t *testing.T) {
	srv := NewServer(t, Options{})
	for _, name := range []string{"__verification-login_sandbox", "__Host-verification-login_sandbox"} {
		r := call(t, "POST", srv.URL+"/v1/session/login/otp", nil, `{"identifier":{"type":"email_address","value":"c@example.com"}}`)
		expect(t, r, http.StatusNoContent, "")
		handle := cookieOf(r, "__verification-login_sandbox")
		if handle == "" {
			t.Fatalf("no __verification-login_sandbox cookie: %v", r.Header)
		}
		cl := newClient(t, srv.URL)
		r = cl.dpopCall("POST", "/v1/session/login/otp/check", http.Header{"Cookie": {name + "=" + handle}}, `{"code":"123456"}`)
		expect(t, r, http.StatusOK, "")
	}
}
