package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// user is one browser profile (its own cookies) on the demo's per-user
// site.
type user struct {
	t     *testing.T
	ctx   context.Context
	site  string
	email string
}

// newUser starts a headless Chromium of the user's own (its own profile,
// so its own cookies). A second tab or browser context of one Chromium
// would do as well, but evaluations in a tab opened after the first hang
// with this chromedp version.
func newUser(t *testing.T, site, email string) *user {
	return &user{t: t, ctx: browser(t), site: site, email: email}
}

// echo is the upstream's echo of one request.
type echo struct {
	Claims  map[string]any    `json:"claims"`
	Headers map[string]string `json:"headers"`
}

// app opens the app's page and returns the upstream's echo of it, or nil
// if the browser ended on the login page instead.
func (u *user) app() *echo {
	u.t.Helper()
	step(u.t, u.ctx, u.email+" opens the app", chromedp.Navigate(u.site+"/"),
		await(`document.body.innerText.includes('"claims"') || location.pathname === "/.inject_token/login"`))
	text, err := chromedp.Run(u.ctx, chromedp.Evaluate[string](`location.pathname === "/" ? document.body.innerText : ""`))
	if err != nil {
		u.t.Fatal(err)
	}
	if text == "" {
		return nil
	}
	e := new(echo)
	if err := json.Unmarshal([]byte(text), e); err != nil {
		u.t.Fatalf("%s: the app's page is not the echo: %v %q", u.email, err, text)
	}
	return e
}

// passwordLogin logs in through the login page the app redirected to.
func (u *user) passwordLogin(password string) {
	u.t.Helper()
	step(u.t, u.ctx, u.email+" is sent to the login page and logs in", chromedp.Navigate(u.site+"/"),
		await(`location.pathname === "/.inject_token/login"`),
		chromedp.SendKeys(chromedp.CSS("#email"), u.email),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		click("#btn-password"),
		await(`location.pathname === "/" && document.body.innerText.includes('"claims"')`))
}

// page evaluates a JavaScript expression on the current page.
func (u *user) eval(expr string) string {
	u.t.Helper()
	v, err := chromedp.Run(u.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		u.t.Fatal(err)
	}
	return v
}

func (u *user) cookies() []*network.Cookie {
	u.t.Helper()
	res, err := chromedp.Run(u.ctx, func(ctx context.Context, tg *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{u.site + "/"}})
	})
	if err != nil {
		u.t.Fatal(err)
	}
	return res.Cookies
}

func (u *user) setCookie(name, value string) {
	u.t.Helper()
	_, err := chromedp.Run(u.ctx, func(ctx context.Context, tg *chromedp.Target) (cdp.Empty, error) {
		return cdp.Call(ctx, tg, network.SetCookie, network.SetCookieParams{Name: name, Value: value, URL: u.site + "/",
			HTTPOnly: ptr(true), SameSite: network.CookieSameSiteLax})
	})
	if err != nil {
		u.t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

// await is until for steps that navigate: a condition evaluated while the
// page is being replaced fails ("cannot find context"), which here means
// "not yet", until the step's deadline.
func await(cond string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			ok, err := chromedp.Evaluate[bool](cond)(ctx, tg)
			if err == nil && ok {
				return chromedp.Void{}, nil
			}
			select {
			case <-ctx.Done():
				return chromedp.Void{}, fmt.Errorf("waiting for %s: %w (last error %v)", cond, ctx.Err(), err)
			case <-tick.C:
			}
		}
	}
}

// TestPerUserInBrowser drives the demo's per-user site in headless
// Chromium: alice and bob, each in a browser context of their own, log in
// through the login page and the upstream sees each one's own sub on every
// request; the cookie is HttpOnly, SameSite=Lax and holds no token;
// alice's logout leaves bob served; alice logs in again with a one-time
// code and revokes the gateway's device from her page, which ends her
// session; a tampered cookie is a logged-out user; a cross-site form
// posting to logout or revoke is refused; a return URL to another site is
// not followed.
func TestPerUserInBrowser(t *testing.T) {
	d := gatewaytest.ExampleDemo(t, "../../Caddyfile.example", t.TempDir())
	d.Start(t)
	alice := newUser(t, d.PerUser, "alice@example.com")
	bob := newUser(t, d.PerUser, "bob@example.com")

	alice.passwordLogin("alice-password")
	bob.passwordLogin("bob-password")
	subs := map[*user]string{}
	for range 3 {
		for _, u := range []*user{alice, bob} {
			e := u.app()
			if e == nil {
				t.Fatalf("%s was sent to log in again", u.email)
			}
			sub, _ := e.Claims["sub"].(string)
			if sub == "" || e.Headers["X-Forwarded-User"] != sub || e.Headers["X-Forwarded-Email"] != u.email {
				t.Fatalf("%s: upstream saw %v %v", u.email, e.Claims, e.Headers)
			}
			if subs[u] != "" && subs[u] != sub {
				t.Fatalf("%s: sub changed from %s to %s", u.email, subs[u], sub)
			}
			subs[u] = sub
			// The cookie: HttpOnly, Lax, and no token in it.
			token := strings.TrimPrefix(e.Headers["Authorization"], "Bearer ")
			found := false
			for _, c := range u.cookies() {
				if c.Name != "inject_token-users" {
					continue
				}
				found = true
				if !c.HTTPOnly || c.SameSite != network.CookieSameSiteLax || token == "" || strings.Contains(c.Value, token) {
					t.Fatalf("%s's cookie: httpOnly %v sameSite %v, holds the token: %v", u.email, c.HTTPOnly, c.SameSite, strings.Contains(c.Value, token))
				}
			}
			if !found {
				t.Fatalf("%s has no login cookie", u.email)
			}
			if u.eval(`document.cookie`) != "" {
				t.Fatalf("%s's page script sees cookies", u.email)
			}
		}
	}
	if subs[alice] == subs[bob] {
		t.Fatal("alice and bob are served as one user")
	}
	// The operator's dashboard lists both users of the template.
	users := `document.querySelectorAll('table.users[data-template="users"] tbody tr')`
	step(t, alice.ctx, "the dashboard lists alice and bob", chromedp.Navigate(d.Dashboard+"/"),
		await(users+`.length === 2`),
		await(fmt.Sprintf(`[...%s].map((r) => r.dataset.key).sort().join(" ") === %q`, users, strings.Join(sortedPair(subs[alice], subs[bob]), " "))))

	// A cross-site page posts a form to logout and to revoke, even with
	// bob's real CSRF token: refused, and bob is still served.
	step(t, bob.ctx, "bob's page", chromedp.Navigate(d.PerUser+"/.inject_token/"), await(`document.querySelector('#btn-logout') !== null`))
	tok := bob.eval(`document.querySelector('#f-logout input[name=csrf]').value`)
	u, _ := url.Parse(d.Gateway)
	evil := "http://localhost:" + u.Port() + "/" // another site: localhost vs 127.0.0.1
	for _, path := range []string{"/.inject_token/logout", "/.inject_token/revoke"} {
		step(t, bob.ctx, "a cross-site page posts to "+path, chromedp.Navigate(evil),
			chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const f = document.createElement('form');
				f.method = 'POST'; f.action = %q;
				for (const [k, v] of [['csrf', %q], ['target', 'all']]) { const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }
				document.body.appendChild(f); f.submit(); })()`, d.PerUser+path, tok)),
			await(fmt.Sprintf(`location.href === %q && document.body.innerText.toLowerCase().includes("refused")`, d.PerUser+path)))
	}
	if e := bob.app(); e == nil || e.Claims["sub"] != subs[bob] {
		t.Fatal("bob lost his login to a cross-site post")
	}

	// alice logs out: bob is still served.
	step(t, alice.ctx, "alice logs out", chromedp.Navigate(d.PerUser+"/.inject_token/"),
		await(`document.querySelector('#who-sub') !== null`), click("#btn-logout"),
		await(`location.pathname === "/.inject_token/login"`))
	if alice.app() != nil {
		t.Fatal("alice is served after logging out")
	}
	if e := bob.app(); e == nil || e.Claims["sub"] != subs[bob] {
		t.Fatal("bob is not served after alice's logout")
	}

	// alice logs in with a one-time code, then revokes the gateway's own
	// device from her page: her session ends.
	step(t, alice.ctx, "alice logs in with a one-time code", chromedp.Navigate(d.PerUser+"/"),
		await(`location.pathname === "/.inject_token/login"`),
		chromedp.SendKeys(chromedp.CSS("#otp-id"), alice.email), click("#btn-otp"),
		await(`document.querySelector('#code') !== null`),
		chromedp.SendKeys(chromedp.CSS("#code"), sandbox.DefaultOTPCode), click("#btn-code"),
		await(`location.pathname === "/" && document.body.innerText.includes('"claims"')`))
	if e := alice.app(); e == nil || e.Claims["sub"] != subs[alice] {
		t.Fatal("alice is not herself after the one-time code")
	}
	step(t, alice.ctx, "alice revokes the gateway's device", chromedp.Navigate(d.PerUser+"/.inject_token/"),
		await(`document.querySelector('#devices tr[data-current] button') !== null`),
		click("#devices tr[data-current] button"),
		await(`location.pathname === "/.inject_token/login"`))
	if alice.app() != nil {
		t.Fatal("alice is served after revoking the gateway's device")
	}

	// A tampered cookie is a logged-out user.
	for _, c := range bob.cookies() {
		if c.Name == "inject_token-users" {
			v := []byte(c.Value)
			v[len(v)-4] ^= 1
			bob.setCookie(c.Name, string(v))
		}
	}
	if bob.app() != nil {
		t.Fatal("a tampered cookie was served")
	}

	// A login whose return URL names another site lands on this one.
	step(t, bob.ctx, "a login with return=//evil.example/", chromedp.Navigate(d.PerUser+"/.inject_token/login?return=//evil.example/"),
		chromedp.SendKeys(chromedp.CSS("#email"), bob.email),
		chromedp.SendKeys(chromedp.CSS("#password"), "bob-password"),
		click("#btn-password"),
		await(`document.body.innerText.includes('"claims"')`))
	if where := bob.eval(`location.href`); where != d.PerUser+"/" {
		t.Fatalf("after the login with return=//evil.example/ the browser is at %s", where)
	}

	// The operator revokes bob from the dashboard: bob is logged out.
	row := fmt.Sprintf(`table.users[data-template="users"] tr[data-key=%q]`, subs[bob])
	step(t, alice.ctx, "the operator finds and revokes bob", chromedp.Navigate(d.Dashboard+"/"),
		await(`document.querySelector('#user-template').value === "users"`),
		chromedp.SendKeys(chromedp.CSS("#user-key"), subs[bob]),
		click("#user-search button"),
		await(fmt.Sprintf(`document.querySelector('%s') !== null && document.querySelector('#msg').textContent.startsWith("Found")`, row)),
		click(row+" button"),
		await(`document.querySelector('#msg').textContent.startsWith("Revoke") && document.querySelector('#msg').textContent.endsWith("done.")`))
	if bob.app() != nil {
		t.Fatal("bob is served after the operator revoked him")
	}
}

func sortedPair(a, b string) []string {
	if a > b {
		a, b = b, a
	}
	return []string{a, b}
}
