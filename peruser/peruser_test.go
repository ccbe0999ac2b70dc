package peruser_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
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

// TestOneTimeCodeLogin: a wrong code is refused and the login stays open;
// the right one logs in (email and phone), and the sub is the user's.
func TestOneTimeCodeLogin(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	for _, id := range []string{alice, "+33612345678"} {
		b := newBrowser(t, s.URL)
		tok := b.loginForm()
		r := b.do("POST", pfx+"/login/otp", url.Values{"csrf": {tok}, "identifier": {id}, "return": {"/here"}})
		if r.status != 200 || !strings.Contains(r.body, `id="code"`) {
			t.Fatalf("otp start for %s: %d %s", id, r.status, r.body)
		}
		form := url.Values{"csrf": {csrf(t, r.body)}, "code": {"000000"}, "return": {"/here"}}
		if r = b.do("POST", pfx+"/login/otp/check", form); r.status != http.StatusUnauthorized {
			t.Fatalf("wrong code: %d %s", r.status, r.body)
		}
		form.Set("code", sandbox.DefaultOTPCode)
		if r = b.do("POST", pfx+"/login/otp/check", form); r.status != http.StatusSeeOther || r.loc != "/here" {
			t.Fatalf("right code: %d %q %s", r.status, r.loc, r.body)
		}
		status, w := b.whoami()
		if status != 200 || w.Claims["sub"] == "" || w.Headers["X-Forwarded-User"] != w.Claims["sub"] {
			t.Fatalf("after the code: %d %v", status, w)
		}
		if id == alice && w.Headers["X-Forwarded-Email"] != alice {
			t.Fatalf("email header %q", w.Headers["X-Forwarded-Email"])
		}
	}
	s.assertNoTokens()
}

// TestCookie: the cookie is HttpOnly, SameSite=Lax, holds neither token
// nor user; a tampered one, one sealed for another template, or one from
// before a later login is a logged-out user, and every login gets a new id.
func TestCookie(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	b := newBrowser(t, s.URL)
	// A cookie planted before the login (fixation) is not the one after.
	b.loginForm()
	r := b.login(alice, alicePW, "/")
	var set *http.Cookie
	for _, c := range (&http.Response{Header: r.hdr}).Cookies() {
		if c.Name == "inject_token-users" {
			set = c
		}
	}
	if set == nil || !set.HttpOnly || set.SameSite != http.SameSiteLaxMode || set.Path != "/" || set.Domain != "" {
		t.Fatalf("login cookie: %+v", set)
	}
	_, w := b.whoami()
	sub := w.Claims["sub"].(string)
	if strings.Contains(set.Value, sub) || strings.Contains(set.Value, "alice") {
		t.Fatal("the cookie names its user")
	}
	s.assertNoTokens()
	for _, sec := range s.secrets {
		if strings.Contains(set.Value, sec) {
			t.Fatal("the cookie holds a token")
		}
	}

	// Tampered: one character changed.
	u, _ := url.Parse(s.URL)
	v := []byte(set.Value)
	v[len(v)-3] ^= 1
	t2 := newBrowser(t, s.URL)
	t2.c.Jar.SetCookies(u, []*http.Cookie{{Name: set.Name, Value: string(v)}})
	if status, _ := t2.whoami(); status != http.StatusSeeOther {
		t.Fatalf("tampered cookie: %d", status)
	}
	// The same cookie copied is alice (it is the bearer credential)...
	t3 := newBrowser(t, s.URL)
	t3.c.Jar.SetCookies(u, []*http.Cookie{{Name: set.Name, Value: set.Value}})
	if _, w := t3.whoami(); w.Claims["sub"] != sub {
		t.Fatalf("copied cookie: %v", w.Claims)
	}
	// ...until alice logs in again: a new id, and the old one is gone.
	r = b.login(alice, alicePW, "/")
	if r.status != http.StatusSeeOther {
		t.Fatal(r.status)
	}
	for _, c := range b.cookies() {
		if c.Name == set.Name && c.Value == set.Value {
			t.Fatal("the cookie id did not change at the new login")
		}
	}
	if status, _ := t3.whoami(); status != http.StatusSeeOther {
		t.Fatalf("cookie from before the new login: %d", status)
	}
	if _, w := b.whoami(); w.Claims["sub"] != sub {
		t.Fatalf("alice after logging in again: %v", w.Claims)
	}
	// A cookie sealed for another template's gateway does not open here.
	other := newSite(t, srv, t.TempDir(), func(c *peruser.Config) { c.Template = "others" })
	ob := newBrowser(t, other.URL)
	ob.login(bob, bobPW, "/")
	ou, _ := url.Parse(other.URL)
	t4 := newBrowser(t, s.URL)
	for _, c := range ob.c.Jar.Cookies(ou) {
		t4.c.Jar.SetCookies(u, []*http.Cookie{{Name: set.Name, Value: c.Value}})
	}
	if status, _ := t4.whoami(); status != http.StatusSeeOther {
		t.Fatalf("another template's cookie: %d", status)
	}
}

// TestLifetimes: a cookie unused for the idle timeout, or older than the
// absolute lifetime however used, is logged out, and Sweep deletes such
// records from storage.
func TestLifetimes(t *testing.T) {
	srv := newSandbox(t)
	clk := &clock{t: time.Now()}
	dir := t.TempDir()
	s := newSite(t, srv, dir, func(c *peruser.Config) {
		c.Now, c.IdleTimeout, c.MaxLifetime = clk.Now, time.Hour, 3*time.Hour
	})
	records := func() int {
		m, _ := filepath.Glob(filepath.Join(dir, "inject_token", "peruser", "users", "cookies", "*"))
		return len(m)
	}
	a, b := newBrowser(t, s.URL), newBrowser(t, s.URL)
	a.login(alice, alicePW, "/")
	b.login(bob, bobPW, "/")
	if n := records(); n != 2 {
		t.Fatalf("%d records after two logins", n)
	}
	// alice is active every 50 minutes, bob is not.
	for range 3 {
		clk.Add(50 * time.Minute)
		if status, _ := a.whoami(); status != 200 {
			t.Fatalf("alice, in use: %d", status)
		}
	}
	if n, err := s.gw.Sweep(context.Background()); err != nil || n != 1 || records() != 1 {
		t.Fatalf("sweep: %d %v, %d left", n, err, records())
	}
	if status, _ := b.whoami(); status != http.StatusSeeOther {
		t.Fatalf("bob, idle: %d", status)
	}
	clk.Add(40 * time.Minute) // alice: 3h10 since her login
	if status, _ := a.whoami(); status != http.StatusSeeOther {
		t.Fatalf("alice past the absolute lifetime: %d", status)
	}
	if n := records(); n != 0 {
		t.Fatalf("%d records left", n)
	}
}
