package peruser_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TestOwnCookiesStayAtGateway: the legacy app gets its own cookies as the
// browser sent them, and none of the gateway's.
func TestOwnCookiesStayAtGateway(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	b := newBrowser(t, s.URL)
	b.login(alice, alicePW, "/")
	u, _ := url.Parse(s.URL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "app", Value: "1"}, {Name: "theme", Value: "dark"}})
	st, w := b.whoami()
	if st != 200 {
		t.Fatalf("whoami: %d", st)
	}
	ck := w.Headers["Cookie"]
	if strings.Contains(ck, "inject_token") || !strings.Contains(ck, "app=1") || !strings.Contains(ck, "theme=dark") {
		t.Fatalf("cookies the app received: %q", ck)
	}
}

// TestLogoutRetriedBySweep: a logout the token server could not be told
// of is revoked there by the next sweep once it is back, and a later login
// of the same user is never ended by that retry.
func TestLogoutRetriedBySweep(t *testing.T) {
	srv, f := newFront(t, 0)
	s := newSite(t, srv, t.TempDir(), nil)
	var sub string
	logoutDown := func() {
		a := newBrowser(t, s.URL)
		if r := a.login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
			t.Fatalf("login: %d", r.status)
		}
		_, w := a.whoami()
		sub, _ = w.Claims["sub"].(string)
		page := a.do("GET", pfx+"/", nil)
		f.down.Store(true)
		if r := a.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}}); r.status != http.StatusSeeOther {
			t.Fatalf("logout while down: %d", r.status)
		}
		f.down.Store(false)
	}
	state := func() string {
		c, err := s.rt.Session(sub)
		if err != nil {
			t.Fatal(err)
		}
		return c.Status().State
	}
	logoutDown()
	if st := state(); st != tokencache.StateActive {
		t.Fatalf("before the sweep: %s", st)
	}
	if _, err := s.gw.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := state(); st != tokencache.StateLoggedOut {
		t.Fatalf("after the sweep the session is %s, want revoked", st)
	}
	// A pending logout whose session a new login replaced leaves the new one.
	logoutDown()
	b := newBrowser(t, s.URL)
	b.login(alice, alicePW, "/")
	if _, err := s.gw.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.whoami(); st != 200 {
		t.Fatalf("alice's new login after the sweep: %d", st)
	}
}

// TestBigFormRefused: a POST body past 64 KiB is not read on: 413, and
// nothing reaches the token server.
func TestBigFormRefused(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	b := newBrowser(t, s.URL)
	tok := b.loginForm()
	before := len(srv.Requests())
	r := b.do("POST", pfx+"/login/password", url.Values{"csrf": {tok}, "email": {alice}, "password": {alicePW},
		"pad": {strings.Repeat("x", 70<<10)}})
	if r.status != http.StatusRequestEntityTooLarge || len(srv.Requests()) != before {
		t.Fatalf("a 70 KiB login form: %d, %d calls to the token server", r.status, len(srv.Requests())-before)
	}
}

// TestLogoutWhileDownWithKeyFrom: when another handler identifies the
// user (no cookie to delete), a logout the token server cannot take
// forgets the session at once: the user's next request finds none.
func TestLogoutWhileDownWithKeyFrom(t *testing.T) {
	srv, f := newFront(t, 0)
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) {
		c.KeyFrom = func(r *http.Request) string { return r.Header.Get("X-Test-User") }
	})
	b := newBrowser(t, s.URL)
	tok := csrf(t, b.do("GET", pfx+"/login", nil, "X-Test-User", "u1").body)
	if r := b.do("POST", pfx+"/login/password", url.Values{"csrf": {tok}, "email": {alice}, "password": {alicePW}}, "X-Test-User", "u1"); r.status != http.StatusSeeOther {
		t.Fatalf("linking: %d %s", r.status, r.body)
	}
	if st, _ := b.whoami("X-Test-User", "u1"); st != 200 {
		t.Fatalf("u1 after linking: %d", st)
	}
	page := b.do("GET", pfx+"/", nil, "X-Test-User", "u1")
	f.down.Store(true)
	if r := b.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}}, "X-Test-User", "u1"); r.status != http.StatusSeeOther {
		t.Fatalf("logout while down: %d", r.status)
	}
	f.down.Store(false)
	if st, _ := b.whoami("X-Test-User", "u1"); st == 200 {
		t.Fatal("u1 is still served after logging out while the server was down")
	}
}
