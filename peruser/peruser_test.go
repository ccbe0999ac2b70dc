package peruser_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

)

// TestTwoUsersLogInAndOut: an unidentified browser is sent to the login
// page and an API client told where it is; alice and bob log in with their
// passwords and the upstream sees each one's own sub and identity headers
// (never a client's forged copy); alice's logout revokes her session at
// the server and leaves bob served.
func TestTwoUsersLogInAndOut(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	a, b := newBrowser(t, s.URL), newBrowser(t, s.URL)

	r := a.do("GET", "/app?x=1", nil)
	if r.status != http.StatusSeeOther || r.loc != pfx+"/login?return="+url.QueryEscape("/app?x=1") {
		t.Fatalf("unidentified browser: %d %q", r.status, r.loc)
	}
	r = a.do("GET", "/api/items", nil, "Accept", "application/json")
	var body map[string]string
	if r.status != http.StatusUnauthorized || json.Unmarshal([]byte(r.body), &body) != nil || body["login"] != pfx+"/login" {
		t.Fatalf("unidentified API client: %d %s", r.status, r.body)
	}

	ids := map[string]string{}
	for _, u := range []struct {
		b         *browser
		email, pw string
	}{{a, alice, alicePW}, {b, bob, bobPW}} {
		r := u.b.login(u.email, u.pw, "/app?x=1")
		if r.status != http.StatusSeeOther || r.loc != "/app?x=1" {
			t.Fatalf("%s login: %d %q %s", u.email, r.status, r.loc, r.body)
		}
		// A forged identity header never reaches the upstream.
		status, w := u.b.whoami("X-Forwarded-User", "usr_forged", "X-Forwarded-Email", "boss@example.com")
		if status != 200 {
			t.Fatalf("%s: %d", u.email, status)
		}
		sub, _ := w.Claims["sub"].(string)
		if sub == "" || w.Headers["X-Forwarded-User"] != sub || w.Headers["X-Forwarded-Email"] != u.email {
			t.Fatalf("%s: upstream saw sub %q, headers %v", u.email, sub, w.Headers)
		}
		ids[u.email] = sub
	}
	if ids[alice] == ids[bob] {
		t.Fatal("alice and bob share a sub")
	}
	for range 3 { // every request, each one's own
		if _, w := a.whoami(); w.Claims["sub"] != ids[alice] {
			t.Fatalf("alice's request carried %v", w.Claims["sub"])
		}
		if _, w := b.whoami(); w.Claims["sub"] != ids[bob] {
			t.Fatalf("bob's request carried %v", w.Claims["sub"])
		}
	}
	aliceTok, err := s.rt.Token(context.Background(), ids[alice])
	if err != nil {
		t.Fatal(err)
	}

	// Logout, from the user's page.
	page := a.do("GET", pfx+"/", nil)
	if page.status != 200 || !strings.Contains(page.body, ids[alice]) || !strings.Contains(page.body, alice) {
		t.Fatalf("alice's page: %d %s", page.status, page.body)
	}
	r = a.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}})
	if r.status != http.StatusSeeOther || r.loc != pfx+"/login" {
		t.Fatalf("logout: %d %q %s", r.status, r.loc, r.body)
	}
	if status, _ := a.whoami(); status != http.StatusSeeOther {
		t.Fatalf("alice after logout: %d", status)
	}
	if _, w := b.whoami(); w.Claims["sub"] != ids[bob] {
		t.Fatalf("bob after alice's logout: %v", w.Claims)
	}
	if _, err := srv.Sandbox.VerifyAccessToken(aliceTok.Value); err != nil {
		t.Fatal(err) // still signed; the session behind it must be gone:
	}
	if srv.Stats().Revokes < 1 {
		t.Fatalf("alice's session was not revoked at the server: %+v", srv.Stats())
	}
	s.assertNoTokens(aliceTok.Value)
}

// assertNoTokens: no token the sessions ever held appears in a page or
// header the gateway sent, nor in a cookie.
func (s *site) assertNoTokens(extra ...string) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	secrets := append(append([]string{}, extra...), s.secrets...)
	if len(secrets) == 0 {
		s.t.Fatal("no tokens to look for")
	}
	for _, v := range s.seen {
		for _, sec := range secrets {
			if sec != "" && strings.Contains(v, sec) {
				s.t.Fatalf("a token was sent to a browser: %.80s…", v)
			}
		}
	}
}
