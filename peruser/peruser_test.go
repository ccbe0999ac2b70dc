package peruser_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
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

// assertNoTokens: no token the sessions ever held (nor a password typed)
// appears in a page or header the gateway sent a browser, nor in a log
// line (message or any field).
func (s *site) assertNoTokens(extra ...string) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	secrets := append(append([]string{alicePW, bobPW}, extra...), s.secrets...)
	if len(secrets) <= 2 {
		s.t.Fatal("no tokens to look for")
	}
	seen := append([]string{}, s.seen...)
	for _, e := range s.logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		seen = append(seen, e.Message+" "+string(b))
	}
	if s.logs.Len() == 0 {
		s.t.Fatal("no log lines to look at")
	}
	for _, v := range seen {
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
		// A forged copy of a header the login has no claim for is removed
		// too, not merely overwritten.
		status, w := b.whoami("X-Forwarded-Email", "boss@example.com")
		if status != 200 || w.Claims["sub"] == "" || w.Headers["X-Forwarded-User"] != w.Claims["sub"] {
			t.Fatalf("after the code: %d %v", status, w)
		}
		if want := map[bool]string{true: alice, false: ""}[id == alice]; w.Headers["X-Forwarded-Email"] != want {
			t.Fatalf("%s: email header %q, want %q", id, w.Headers["X-Forwarded-Email"], want)
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
	// alice logs in in another browser: that login replaces her session,
	// so this browser's cookie (from the login before) ends.
	if r := newBrowser(t, s.URL).login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
		t.Fatal(r.status)
	}
	if status, _ := b.whoami(); status != http.StatusSeeOther {
		t.Fatalf("a cookie of a replaced session: %d", status)
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
		m, _ := filepath.Glob(filepath.Join(dir, "inject_token", "users", "peruser", "cookies", "*"))
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

// TestThrottle: wrong passwords for one account are refused at the gateway
// after the account limit ("try again in N s", 429, metric hook), without
// locking out another account from the same address; one address is
// limited across accounts.
func TestThrottle(t *testing.T) {
	srv := newSandbox(t)
	clk := &clock{t: time.Now()}
	var mu sync.Mutex
	refused := map[string]int{}
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) {
		c.Now, c.AccountLimit, c.AccountWindow, c.AddressLimit, c.AddressWindow = clk.Now, 3, 5*time.Minute, 8, time.Minute
		c.OnThrottle = func(by string) { mu.Lock(); refused[by]++; mu.Unlock() }
	})
	b := newBrowser(t, s.URL)
	for range 3 {
		if r := b.login(alice, "guess", "/"); r.status != http.StatusUnauthorized {
			t.Fatalf("wrong password: %d", r.status)
		}
	}
	before := len(srv.Requests())
	r := b.login(alice, alicePW, "/") // even the right one, now
	if r.status != http.StatusTooManyRequests || r.hdr.Get("Retry-After") != "300" || !strings.Contains(r.body, "Try again in 300 s") {
		t.Fatalf("4th attempt: %d %q %s", r.status, r.hdr.Get("Retry-After"), r.body)
	}
	if len(srv.Requests()) != before {
		t.Fatal("a throttled login reached the token server")
	}
	if r := b.login(bob, bobPW, "/"); r.status != http.StatusSeeOther {
		t.Fatalf("bob from the same address: %d", r.status)
	}
	clk.Add(5 * time.Minute)
	if r := b.login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
		t.Fatalf("alice after the window: %d %s", r.status, r.body)
	}
	// Eight attempts a minute from one address, whatever the account.
	for i := range 7 { // the 1st of the window was alice's
		b.login("nobody"+string(rune('a'+i))+"@example.com", "x", "/")
	}
	if r := b.login("carol@example.com", "x", "/"); r.status != http.StatusTooManyRequests {
		t.Fatalf("9th attempt from one address: %d", r.status)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused["account"] != 1 || refused["address"] != 1 {
		t.Fatalf("refusals counted: %v", refused)
	}
}

// TestCrossSiteAndCSRF: logout and revoke are refused (403) when posted
// from another site (Origin, Sec-Fetch-Site) or without this login's CSRF
// token, and the user stays logged in; a login form is refused without its
// token too.
func TestCrossSiteAndCSRF(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	a, b := newBrowser(t, s.URL), newBrowser(t, s.URL)
	a.login(alice, alicePW, "/")
	b.login(bob, bobPW, "/")
	tokA := csrf(t, a.do("GET", pfx+"/", nil).body)
	tokB := csrf(t, b.do("GET", pfx+"/", nil).body)
	for _, path := range []string{"/logout", "/revoke"} {
		form := url.Values{"csrf": {tokA}, "target": {"all"}}
		for name, hdr := range map[string][]string{
			"cross-site origin": {"Origin", "https://evil.example", "Sec-Fetch-Site", ""},
			"opaque origin":     {"Origin", "null", "Sec-Fetch-Site", ""},
			"cross-site fetch":  {"Origin", "", "Sec-Fetch-Site", "cross-site"},
			"same-site fetch":   {"Origin", "", "Sec-Fetch-Site", "same-site"},
		} {
			if r := a.do("POST", pfx+path, form, hdr...); r.status != http.StatusForbidden {
				t.Fatalf("%s %s: %d", name, path, r.status)
			}
		}
		for name, tok := range map[string]string{"no token": "", "bob's token": tokB, "forged": tokA[:len(tokA)-2] + "xx"} {
			if r := a.do("POST", pfx+path, url.Values{"csrf": {tok}, "target": {"all"}}); r.status != http.StatusForbidden {
				t.Fatalf("%s %s: %d", name, path, r.status)
			}
		}
	}
	if status, _ := a.whoami(); status != 200 {
		t.Fatalf("alice after refused posts: %d", status)
	}
	if st := srv.Stats(); st.Revokes != 0 {
		t.Fatalf("a refused post revoked: %+v", st)
	}
	c := newBrowser(t, s.URL)
	// A cross-site post from a browser whose cookie was not sent
	// (SameSite) is refused too, not taken for a logged-out user.
	if r := c.do("POST", pfx+"/logout", url.Values{}, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"); r.status != http.StatusForbidden {
		t.Fatalf("cross-site post without a cookie: %d", r.status)
	}
	c.loginForm()
	if r := c.do("POST", pfx+"/login/password", url.Values{"email": {alice}, "password": {alicePW}}); r.status != http.StatusForbidden {
		t.Fatalf("login without its token: %d", r.status)
	}
}

// TestReturnURL: a login returns only to a path on this site.
func TestReturnURL(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	for back, want := range map[string]string{
		"/orders?id=7":              "/orders?id=7",
		"//evil.example/x":          "/",
		"/\\evil.example":           "/",
		"https://evil.example/":     "/",
		"javascript:alert(1)":       "/",
		"/%0d%0aSet-Cookie:x=1":     "/%0d%0aSet-Cookie:x=1",
		"http:evil.example":         "/",
		"\t//evil.example":          "/",
		"/ok\r\nLocation: //evil.x": "/",
	} {
		r := newBrowser(t, s.URL).login(bob, bobPW, back)
		if r.status != http.StatusSeeOther || r.loc != want {
			t.Errorf("return %q: %d %q, want %q", back, r.status, r.loc, want)
		}
	}
	// The redirect to the login page carries only the request's own path.
	b := newBrowser(t, s.URL)
	if r := b.do("GET", "//evil.example/x", nil); r.status != http.StatusSeeOther || r.loc != pfx+"/login" {
		t.Errorf("redirect to login from //evil.example/x: %d %q", r.status, r.loc)
	}
}

// TestDevices: the user's page lists the user's devices with the gateway's
// own marked; revoking another device leaves the gateway's session,
// revoking the gateway's own ends it.
func TestDevices(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	a, phone := newBrowser(t, s.URL), newBrowser(t, s.URL)
	a.login(alice, alicePW, "/")
	// alice's "phone": a second Prelude session of hers, outside the gateway.
	other := newSite(t, srv, t.TempDir(), nil)
	newBrowser(t, other.URL).login(alice, alicePW, "/")
	_ = phone
	page := a.do("GET", pfx+"/", nil)
	if page.status != 200 || strings.Count(page.body, "data-id=") != 2 || strings.Count(page.body, `data-current="1"`) != 1 {
		t.Fatalf("devices: %s", page.body)
	}
	r := a.do("POST", pfx+"/revoke", url.Values{"csrf": {csrf(t, page.body)}, "target": {"others"}})
	if r.status != http.StatusSeeOther || r.loc != pfx+"/" {
		t.Fatalf("revoke others: %d %q %s", r.status, r.loc, r.body)
	}
	page = a.do("GET", pfx+"/", nil)
	if strings.Count(page.body, "data-id=") != 1 {
		t.Fatalf("after revoking others: %s", page.body)
	}
	if status, _ := a.whoami(); status != 200 {
		t.Fatalf("alice after revoking her others: %d", status)
	}
	_, w := a.whoami()
	r = a.do("POST", pfx+"/revoke", url.Values{"csrf": {csrf(t, page.body)}, "target": {"session"}, "id": {w.Claims["sid"].(string)}})
	if r.status != http.StatusSeeOther || r.loc != pfx+"/login" {
		t.Fatalf("revoke this: %d %q", r.status, r.loc)
	}
	if status, _ := a.whoami(); status != http.StatusSeeOther {
		t.Fatalf("alice after revoking the gateway's device: %d", status)
	}
	s.assertNoTokens()
}

// TestTwoInstancesShareUsers: two gateways on one storage (as two Caddy
// instances would be): a user logged in through one is served by the
// other with the same session and no new login; a token both find rejected
// is refreshed once; a logout through one ends the user on both.
func TestTwoInstancesShareUsers(t *testing.T) {
	srv := newSandbox(t)
	dir := t.TempDir()
	s1, s2 := newSite(t, srv, dir, nil), newSite(t, srv, dir, nil)
	b1 := newBrowser(t, s1.URL)
	b1.login(alice, alicePW, "/")
	_, w1 := b1.whoami()
	// The same browser reaches the other instance (another host:port here,
	// so its cookie is copied over, as a load balancer would present it).
	b2 := newBrowser(t, s2.URL)
	u1, _ := url.Parse(s1.URL)
	u2, _ := url.Parse(s2.URL)
	b2.c.Jar.SetCookies(u2, b1.c.Jar.Cookies(u1))
	_, w2 := b2.whoami()
	if w2.Claims["sub"] != w1.Claims["sub"] || w2.Claims["sid"] != w1.Claims["sid"] {
		t.Fatalf("instance 2 serves %v, instance 1 %v", w2.Claims, w1.Claims)
	}
	if st := srv.Stats(); st.Logins != 1 {
		t.Fatalf("logins: %+v", st)
	}

	// Both instances find the token rejected at once: one refresh.
	sub := w1.Claims["sub"].(string)
	ctx := context.Background()
	var wg sync.WaitGroup
	for _, s := range []*site{s1, s2} {
		c, err := s.rt.Session(sub)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Invalidate(tok.Value)
	}
	start := make(chan struct{})
	for _, b := range []*browser{b1, b2, b1, b2} {
		wg.Go(func() {
			<-start
			if status, w := b.whoami(); status != 200 || w.Claims["sub"] != sub {
				t.Errorf("during the refresh: %d %v", status, w.Claims)
			}
		})
	}
	close(start)
	wg.Wait()
	if st := srv.Stats(); st.RefreshSuccesses != 1 || st.ReuseEvents != 0 || st.Logins != 1 {
		t.Fatalf("refreshes: %+v", st)
	}
	_, w1 = b1.whoami()
	_, w2 = b2.whoami()
	if w1.Claims["jti"] == nil || w1.Claims["jti"] != w2.Claims["jti"] {
		t.Fatal("the instances serve different tokens after the refresh")
	}

	page := b1.do("GET", pfx+"/", nil)
	b1.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}})
	if status, _ := b2.whoami(); status != http.StatusSeeOther {
		t.Fatalf("instance 2 after logout on instance 1: %d", status)
	}
	s1.assertNoTokens(s2.secrets...)
	s2.assertNoTokens(s1.secrets...)
}

// TestCookieNeedsTLS: over TLS (here: Secure says so, as a trusted proxy's
// X-Forwarded-Proto would) the cookie is __Host- prefixed and Secure; over
// plain http to a host that is not loopback no cookie is set and the login
// is refused, and a __Host- cookie is not read over plain http.
func TestCookieNeedsTLS(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) {
		c.Secure = func(r *http.Request) bool { return r.Header.Get("X-Test-TLS") == "1" }
	})
	login := func(host, tls string) *http.Response {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		req, _ := http.NewRequest("GET", s.URL+pfx+"/login", nil)
		req.Host = host
		req.Header.Set("X-Test-TLS", tls)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		page, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return resp
		}
		form := url.Values{"csrf": {csrf(t, string(page))}, "email": {alice}, "password": {alicePW}}
		req, _ = http.NewRequest("POST", s.URL+pfx+"/login/password", strings.NewReader(form.Encode()))
		req.Host = host
		req.Header.Set("X-Test-TLS", tls)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for _, c := range resp.Cookies() {
			req.AddCookie(c)
		}
		resp, err = c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := login("app.example.com", "1")
	var set *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "__Host-inject_token-users" {
			set = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || set == nil || !set.Secure || !set.HttpOnly || set.Path != "/" || set.Domain != "" {
		t.Fatalf("over TLS: %d, cookie %+v", resp.StatusCode, set)
	}
	if resp := login("app.example.com", ""); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("plain http to app.example.com: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	// The __Host- cookie presented over plain http is not read.
	req, _ := http.NewRequest("GET", s.URL+"/app", nil)
	req.Host = "localhost"
	req.Header.Set("Accept", "text/html")
	req.AddCookie(set)
	r, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("__Host- cookie over plain http: %d", r.StatusCode)
	}
}
