package peruser_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// front is the real sandbox behind a gate: a password login waits until
// `hold` of them are in flight (or a deadline passes), and the whole
// server can be made unreachable (503 on every call).
type front struct {
	sb     *sandbox.Sandbox
	hold   int
	down   atomic.Bool
	mu     sync.Mutex
	logins int
	full   chan struct{}
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.down.Load() {
		http.Error(w, `{"code":"internal"}`, http.StatusServiceUnavailable)
		return
	}
	if r.URL.Path == "/v1/session/login/email/password" && f.hold > 0 {
		f.mu.Lock()
		f.logins++
		if f.logins == f.hold {
			close(f.full)
		}
		f.mu.Unlock()
		select {
		case <-f.full:
		case <-time.After(5 * time.Second): // the gateway let only one through: fine
		}
	}
	f.sb.ServeHTTP(w, r)
}

func newFront(t *testing.T, hold int) (*sandboxtest.Server, *front) {
	sb, err := sandbox.New(sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sb.AddUser(alice, alicePW)
	sb.AddUser(bob, bobPW)
	f := &front{sb: sb, hold: hold, full: make(chan struct{})}
	hs := httptest.NewServer(f)
	t.Cleanup(hs.Close)
	return &sandboxtest.Server{Sandbox: sb, URL: hs.URL}, f
}

// TestAttackAccountThrottleRace: the account limit counts a failed login
// only after the token server answered, and checks it before; so a
// guesser who sends his guesses at once (from enough addresses to stay
// under the address limit, or just under it) gets them all to the token
// server. With throttle_account 1, eight concurrent wrong passwords for
// alice must not all reach the server.
// Fix: count the attempt against the account before the login (hit in
// throttled, as for the address), or hold an in-flight count per account.
func TestAttackAccountThrottleRace(t *testing.T) {
	const n = 8
	srv, f := newFront(t, 2)
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) { c.AccountLimit, c.AddressLimit = 1, 100 })
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		b := newBrowser(t, s.URL)
		tok := b.loginForm()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// b.do calls t.Fatal only on transport errors.
			statuses[i] = b.do("POST", pfx+"/login/password", url.Values{"csrf": {tok}, "email": {alice}, "password": {"guess"}}).status
		}()
	}
	wg.Wait()
	f.mu.Lock()
	reached := f.logins
	f.mu.Unlock()
	if reached > 1 {
		t.Fatalf("throttle_account 1: %d concurrent guesses reached the token server (statuses %v)", reached, statuses)
	}
}

// TestAttackLogoutWhileServerDown: the user presses "Log out" (on a
// shared computer, say) while the token server cannot be reached; the
// gateway answers "could not be logged out" and keeps the cookie and its
// record, so the next person at that browser is still the user (and a
// copied cookie still works). The browser's side of a logout must end
// whatever the server says; the upstream revocation can be retried by the
// gateway (the session kept for that, or Forget with a queued revoke).
func TestAttackLogoutWhileServerDown(t *testing.T) {
	srv, f := newFront(t, 0)
	s := newSite(t, srv, t.TempDir(), nil)
	a := newBrowser(t, s.URL)
	if r := a.login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	page := a.do("GET", pfx+"/", nil)
	if page.status != 200 {
		t.Fatalf("page: %d", page.status)
	}
	stolen := a.cookies()
	f.down.Store(true)
	r := a.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}})
	t.Logf("logout while the server is down: %d", r.status)
	f.down.Store(false) // the server is back; the next person sits down
	if st, w := a.whoami(); st == 200 {
		t.Fatalf("after pressing log out, the browser is still alice (sub %v)", w.Claims["sub"])
	}
	// The cookie copied before the logout must not work either.
	c := newBrowser(t, s.URL)
	u, _ := url.Parse(s.URL)
	c.c.Jar.SetCookies(u, stolen)
	if st, _ := c.whoami(); st == 200 {
		t.Fatal("a copy of the cookie taken before the logout still identifies alice")
	}
}

// TestAttackLoginWhileServerDown (holds): a login while the token server
// cannot be reached gets a clear 502 page, sets no login cookie, stores
// nothing, does not count against the account, and no log line carries
// the password.
func TestAttackLoginWhileServerDown(t *testing.T) {
	srv, f := newFront(t, 0)
	core, logs := observer.New(zap.DebugLevel)
	dir := t.TempDir()
	s := newSite(t, srv, dir, func(c *peruser.Config) { c.Logger, c.AccountLimit = zap.New(core), 1 })
	a := newBrowser(t, s.URL)
	f.down.Store(true)
	r := a.login(alice, alicePW, "/")
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, "cannot be reached") {
		t.Fatalf("login while down: %d %s", r.status, r.body)
	}
	for _, c := range a.cookies() {
		if c.Name == "inject_token-users" {
			t.Fatalf("a login cookie was set: %v", c)
		}
	}
	var stored []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "peruser") {
			stored = append(stored, p)
		}
		return nil
	})
	if len(stored) > 0 {
		t.Fatalf("stored for a failed login: %v", stored)
	}
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		if strings.Contains(e.Message+string(b), alicePW) {
			t.Fatalf("the password in a log line: %s %s", e.Message, b)
		}
	}
	f.down.Store(false)
	if r := a.login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
		t.Fatalf("after the outage (account limit 1): %d %s", r.status, r.body)
	}
}

// TestAttackReturnURLs (holds): after a login the browser goes nowhere
// but this site, whatever the return parameter says, and the Location
// header carries no raw control characters.
func TestAttackReturnURLs(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) { c.AddressLimit = 1000 })
	base, _ := url.Parse(s.URL)
	for _, back := range []string{"//evil.example", "/\\evil.example", "\\\\evil.example", "/%2F%2Fevil.example",
		"%2F%2Fevil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "https://evil.example/", "http:evil.example",
		"/\tevil.example", "/%0d%0aSet-Cookie:%20x=1", "/\r\nSet-Cookie: x=1", "/.//evil.example", "/..//evil.example",
		" //evil.example", "///evil.example", "/%5Cevil.example", "/%09/evil.example", "//%2565vil.example",
		"/\u3000/evil.example", "/\uff0f\uff0fevil.example", "/x?y=//evil.example#//evil.example", "//user@evil.example"} {
		b := newBrowser(t, s.URL)
		r := b.login(alice, alicePW, back)
		if r.status != http.StatusSeeOther {
			t.Fatalf("return %q: %d", back, r.status)
		}
		if strings.ContainsAny(r.loc, "\r\n\t\\") {
			t.Errorf("return %q: raw control or backslash in Location %q", back, r.loc)
		}
		u, err := base.Parse(r.loc)
		if err != nil || u.Host != base.Host || u.Scheme != base.Scheme {
			t.Errorf("return %q: Location %q leaves the site (%v)", back, r.loc, err)
		}
	}
}

// TestAttackCookieReplay (holds with Prelude, whose tokens carry sid): a
// cookie copied before its logout, or from a browser whose session a
// later login replaced, never identifies the user again, even after the
// user logs in anew elsewhere.
func TestAttackCookieReplay(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	u, _ := url.Parse(s.URL)
	replay := func(ck []*http.Cookie) int {
		c := newBrowser(t, s.URL)
		c.c.Jar.SetCookies(u, ck)
		st, _ := c.whoami()
		return st
	}
	a := newBrowser(t, s.URL)
	a.login(alice, alicePW, "/")
	copyA := a.cookies()
	b := newBrowser(t, s.URL)
	b.login(alice, alicePW, "/")
	copyB := b.cookies()
	page := b.do("GET", pfx+"/", nil)
	if r := b.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}}); r.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", r.status)
	}
	if st := replay(copyB); st == 200 {
		t.Fatal("B's cookie, copied before its logout, still works")
	}
	c := newBrowser(t, s.URL)
	c.login(alice, alicePW, "/")
	if st, _ := c.whoami(); st != 200 {
		t.Fatalf("alice's new login: %d", st)
	}
	if st := replay(copyA); st == 200 {
		t.Fatal("A's cookie from before the logout elsewhere identifies alice again after her new login")
	}
	if st := replay(copyB); st == 200 {
		t.Fatal("B's logged-out cookie identifies alice again after her new login")
	}
}

// noSID is the users' sessions of a backend whose access tokens name no
// session (opaque tokens, or JWTs without sid: most OAuth servers, and
// the authorization code login of peruser/oauth.go).
type noSID struct{ recSessions }

func (n noSID) Token(ctx context.Context, key string) (*tokencache.Token, error) {
	tok, err := n.recSessions.Token(ctx, key)
	if tok != nil {
		cp := *tok
		cp.SessionID = ""
		tok = &cp
	}
	return tok, err
}

// TestAttackCookieReplayWithoutSID: without a sid the only thing tying a
// cookie record to the login that made it is the user's key, so a record
// outlives its session: alice logs in on a shared computer A, later logs
// in on B and logs out there ("log out" ends the session, but only B's
// record is deleted); when she next logs in anywhere, A's old cookie (or a
// copy of it) is alice again. Bind the record to its session's
// generation, e.g. store the DPoP key's thumbprint (a new key per login,
// never changed while the session lives: tok.Key.Thumbprint()) and
// compare it as the sid is compared; or delete a user's records on logout.
func TestAttackCookieReplayWithoutSID(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), func(c *peruser.Config) { c.Sessions = noSID{c.Sessions.(recSessions)} })
	u, _ := url.Parse(s.URL)
	a := newBrowser(t, s.URL)
	a.login(alice, alicePW, "/")
	copyA := a.cookies()
	b := newBrowser(t, s.URL)
	b.login(alice, alicePW, "/")
	page := b.do("GET", pfx+"/", nil)
	if r := b.do("POST", pfx+"/logout", url.Values{"csrf": {csrf(t, page.body)}}); r.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", r.status)
	}
	newBrowser(t, s.URL).login(alice, alicePW, "/")
	r := newBrowser(t, s.URL)
	r.c.Jar.SetCookies(u, copyA)
	if st, w := r.whoami(); st == 200 {
		t.Fatalf("A's cookie from before alice's logout identifies her again after her new login (sub %v)", w.Claims["sub"])
	}
}

// TestAttackAccountLockoutBySendingCodes: asking for a one-time code
// counts against the account, and the account limit refuses every login
// of that account (password too); so anyone who knows alice's address
// locks her out of the gateway indefinitely with five "send me a code"
// requests every five minutes (from one address, far under its limit),
// and mails her a code each time. Codes sent and failed logins by others
// should not refuse the owner's correct password: e.g. count code sends
// separately (per account and per address), or keep the account limit
// per (account, address) with a much higher account-wide ceiling.
func TestAttackAccountLockoutBySendingCodes(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil) // defaults: 5 per 5m per account, 30/min per address
	e := newBrowser(t, s.URL)
	for range 5 {
		tok := e.loginForm()
		if r := e.do("POST", pfx+"/login/otp", url.Values{"csrf": {tok}, "identifier": {alice}}); r.status != 200 {
			t.Fatalf("code request: %d", r.status)
		}
	}
	a := newBrowser(t, s.URL)
	if r := a.login(alice, alicePW, "/"); r.status != http.StatusSeeOther {
		t.Fatalf("alice with her right password after someone asked for five codes: %d (Retry-After %s)", r.status, r.hdr.Get("Retry-After"))
	}
}
