package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// chromium returns the headless browser to drive, skipping the test loudly
// outside CI when there is none (CI installs Debian's chromium and fails
// without it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "NO CHROMIUM: the dashboard browser test did not run (apt-get install chromium, or set $CHROMIUM)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("\n\n*** " + msg + " ***\n")
	return ""
}

// browser starts a headless Chromium for the test, with extra options.
func browser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-dev-shm-usage", true))
	opts = append(opts, extra...)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// step runs browser actions with a deadline; what names the step on failure.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		page, _ := chromedp.Run(pctx, chromedp.TextContent(chromedp.CSS("#msg")))
		t.Fatalf("%s: %v (page says %q)", what, err, page)
	}
}

// until waits for a JavaScript condition on the page.
func until(cond string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(100*time.Millisecond))
}

func click(sel string) chromedp.Action[chromedp.Void] { return chromedp.Click(chromedp.CSS(sel)) }

func claimsIat(t *testing.T, ctx context.Context) float64 {
	t.Helper()
	raw, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("#d-claims")))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatalf("claims shown are not JSON: %v in %q", err, raw)
	}
	iat, _ := c["iat"].(float64)
	return iat
}

// TestDashboardInBrowser drives the dashboard of Caddyfile.example in a
// real headless Chromium: the session shows, Refresh changes the token's
// iat and the timeline draws the login and the refresh, Log out changes
// the state, a one-time code logs in again, and a
// second device of the user is revoked from the list. A cross-origin
// state-changing call is refused.
//
// UPDATE_SCREENSHOT=1 go test -run TestDashboardInBrowser . rewrites
// docs/dashboard.png.
func TestDashboardInBrowser(t *testing.T) {
	ctx := browser(t)
	d := gatewaytest.ExampleDemo(t, "../../Caddyfile.example", t.TempDir())
	d.Start(t)
	d.Whoami(t) // the demo session is logged in
	sb, _ := sandbox.Lookup("default")

	step(t, ctx, "loading the page",
		chromedp.Navigate(d.Dashboard+"/"),
		until(`document.querySelector('#sessions tr[data-session="demo"] .badge')?.textContent === "active"`),
		until(`document.querySelector('#d-claims').textContent.includes('"sid"')`))
	iat := claimsIat(t, ctx)

	// The sandbox clock moves on so the new token's iat must differ.
	sb.AdvanceClock(2 * time.Second)
	step(t, ctx, "refresh", click("#btn-refresh"),
		until(fmt.Sprintf(`JSON.parse(document.querySelector('#d-claims').textContent || "{}").iat > %d`, int64(iat))))

	// The timeline draws the login and the refresh, and a lifetime bar for
	// each token the session held.
	tl := `document.querySelectorAll('#timelines .tl[data-session="demo"] `
	step(t, ctx, "the timeline shows the login and the refresh",
		until(tl+`[data-kind="issued"]').length === 1`),
		until(tl+`[data-kind="refreshed"]').length === 1`),
		until(tl+`rect.life').length === 2`))

	step(t, ctx, "logout", click("#btn-logout"),
		until(`document.querySelector('#d-state').textContent === "logged_out"`),
		until(`document.querySelector('#d-claims').textContent === "–"`))

	step(t, ctx, "login with a one-time code",
		chromedp.SendKeys(chromedp.CSS("#otp-id"), sandbox.DemoEmail),
		click("#otp-send"),
		until(`document.querySelector('#msg').textContent === "Send code: done."`),
		chromedp.SendKeys(chromedp.CSS("#otp-code"), sandbox.DefaultOTPCode),
		click("#otp-check"),
		until(`document.querySelector('#d-state').textContent === "active"`),
		until(tl+`[data-kind="issued"]').length === 2`))

	other := gatewaytest.NewSandboxLogin(t, d.Sandbox, sandbox.DemoEmail)
	otherSID := other.SID
	row := fmt.Sprintf(`#devices tr[data-id=%q]`, otherSID)
	step(t, ctx, "the other device is listed", until(fmt.Sprintf(`document.querySelector('%s') !== null`, row)))
	if os.Getenv("UPDATE_SCREENSHOT") != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	step(t, ctx, "revoke the other device",
		click(row+" button"), // arms
		until(fmt.Sprintf(`document.querySelector('%s button').classList.contains("armed")`, row)),
		click(row+" button"), // confirms
		until(fmt.Sprintf(`document.querySelector('%s') === null && document.querySelector('#devices tbody tr') !== null`, row)))
	if !other.Revoked() {
		t.Error("the page dropped the row but the session still refreshes")
	}

	// The page's API refuses state changes that do not come from its origin.
	refresh := d.Dashboard + "/api/sessions/demo/refresh"
	for _, hdr := range [][]string{
		{"Origin", "http://evil.example"},
		{"Origin", d.Gateway}, // same host, other port: another origin
		{"Sec-Fetch-Site", "cross-site"},
		nil, // no Origin at all (curl)
	} {
		status, h, body := gatewaytest.Do(t, http.DefaultClient, http.MethodPost, refresh, nil, hdr...)
		if status != http.StatusForbidden || h.Get("Inject-Token-Code") != "cross_origin" {
			t.Errorf("POST with %q: %d %s, want 403 cross_origin", hdr, status, body)
		}
	}
	if status, _, body := gatewaytest.Do(t, http.DefaultClient, http.MethodPost, refresh, nil, "Origin", d.Dashboard); status != http.StatusOK {
		t.Errorf("same-origin POST: %d %s", status, body)
	}
	// And from a page of another origin, in the browser: the request is
	// sent (no-cors) and refused; the session is not refreshed.
	count := func() float64 {
		return (&gatewaytest.AdminClient{T: t}).Call("GET", "/inject_token/sessions/demo", "", http.StatusOK)["refresh_count"].(float64)
	}
	before := count()
	step(t, ctx, "open a page of another origin", chromedp.Navigate(d.Gateway+"/"))
	answer, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		fmt.Sprintf(`fetch(%q, {method: "POST", mode: "no-cors"}).then(() => "sent", (e) => "error: " + e)`, refresh),
		chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if answer != "sent" {
		t.Fatalf("cross-origin fetch: %s", answer)
	}
	if after := count(); after != before {
		t.Errorf("a cross-origin page refreshed the session (refresh_count %v → %v)", before, after)
	}
}

// TestDashboardAPIBaseSameOrigin: a link to the dashboard whose path
// starts with "//host/" still has the page call its own origin's API; a
// base taken from the path as is would post typed passwords to that host.
// The configured-login button logs a logged-out session back in.
func TestDashboardAPIBaseSameOrigin(t *testing.T) {
	ctx := browser(t)
	d := gatewaytest.ExampleDemo(t, "../../Caddyfile.example", t.TempDir())
	d.Start(t)
	u, err := url.Parse(d.Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	step(t, ctx, "loading the page at //evil.test/",
		chromedp.Navigate(u.Scheme+"://"+u.Host+"//evil.test/"),
		until(`typeof api === "string"`))
	where, err := chromedp.Run(ctx, chromedp.Evaluate[string](`new URL(api, location.href).origin + " " + location.origin`))
	if err != nil {
		t.Fatal(err)
	}
	if api, page, _ := strings.Cut(where, " "); api != page {
		t.Fatalf("the page's API is on %s, not on its own origin %s", api, page)
	}

	// From that page, the posts reach the gateway: log out, then back in
	// with the configured credentials (the button a client_credentials
	// session needs after a logout).
	step(t, ctx, "logout", click("#btn-logout"),
		until(`document.querySelector('#d-state').textContent === "logged_out"`))
	step(t, ctx, "log in with the configured credentials", click("#btn-login"),
		until(`document.querySelector('#d-state').textContent === "active"`))
}
