package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// TestOfficialWebSDK runs Prelude's own web SDK (@prelude.so/js-sdk 0.6.0,
// bundled unchanged by esbuild from sandbox/websdk) in headless Chromium
// against the sandbox, cross-origin as in a real deployment: the page is
// served from one loopback HTTPS origin, the sandbox from another (the SDK
// always calls https://<domain>/v1/session). The SDK has to get through
// OTP login (a wrong code refused, then the right one), password login,
// three forced refreshes with rotation and one DPoP key, two concurrent
// refreshes making one call, step-up (requestStepUp, otpCreate, otpCheck
// with a wrong code first), listSessions with paging, the revokes and
// logout — so the sandbox stays faithful to the official client.
func TestOfficialWebSDK(t *testing.T) {
	bundle := webSDKBundle(t)
	sb, err := sandbox.New(sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewTLSServer(sb)
	t.Cleanup(api.Close)
	page := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bundle.js" {
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write(bundle)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(`<!doctype html><title>sdk</title><script type="module" src="/bundle.js"></script>`))
	}))
	t.Cleanup(page.Close)
	sb.SetAllowedOrigins([]string{page.URL})

	ctx := browser(t, chromedp.Flag("ignore-certificate-errors", true))
	step(t, ctx, "load the page", chromedp.Navigate(page.URL), until(`!!window.PrldSessionClient`))

	domain := strings.TrimPrefix(api.URL, "https://")
	run := func(what, script string) map[string]any {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		js := `(async () => { const c = window.sdk ??= new PrldSessionClient({domain: "` + domain + `"});
			try { return JSON.stringify(await (async () => {` + script + `})()); }
			catch (e) { return JSON.stringify({error: e.name + ": " + e.message}); } })()`
		raw, err := chromedp.Run(sctx, chromedp.Evaluate[string](js, chromedp.EvalAsValue, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var out map[string]any
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			t.Fatalf("%s: %v: %s", what, err, raw)
		}
		if out["error"] != nil {
			t.Fatalf("%s: %v (sandbox %+v)", what, out["error"], sb.Stats())
		}
		return out
	}

	// SDK 0.6.0 loads its WebAssembly core in the background, and a call
	// made before it is ready fails before sending anything ("reading
	// '__wbindgen_add_to_stack_pointer'"): the first call is polled until
	// the core answers, like any other page waiting for a script to load.
	otp := run("OTP login", `
		for (let i = 0; ; i++) {
			try {
				await c.startOTPLogin({identifier: {type: "email_address", value: "web@example.com"}});
				break;
			} catch (e) {
				if (i >= 100 || !String(e).includes("__wbindgen")) throw e;
				await new Promise(r => setTimeout(r, 100));
			}
		}
		let wrong = "";
		try { await c.checkOTP("000000"); } catch (e) { wrong = e.name; }
		await c.checkOTP("`+sandbox.DefaultOTPCode+`");
		const {user} = await c.refresh();
		return {wrong, sid: await c.getSessionId(), token: user.accessToken};`)
	if otp["wrong"] == "" || otp["sid"] == "" {
		t.Fatalf("OTP login: %v", otp)
	}

	before := sb.Stats().RefreshCalls
	rot := run("forced refreshes", `
		const seen = [];
		for (let i = 0; i < 3; i++) {
			await c.invalidateCache();
			seen.push((await c.refresh()).user.accessToken);
		}
		await c.invalidateCache();
		const both = await Promise.all([c.refresh(), c.refresh()]);
		return {distinct: new Set(seen).size, same: both[0].user.accessToken === both[1].user.accessToken, sid: await c.getSessionId()};`)
	if rot["distinct"] != float64(3) || rot["same"] != true || rot["sid"] != otp["sid"] {
		t.Fatalf("refreshes: %v", rot)
	}
	if n := sb.Stats().RefreshCalls - before; n != 4 {
		t.Fatalf("%d /refresh calls for 3 forced and 2 concurrent refreshes, want 4", n)
	}

	// Step-up as the SDK does it: request (Bearer only), the OTP bound to
	// the challenge (a wrong code first), a challenge-bound proof on the
	// check, then the SDK's own refresh with step_up_token.
	up := run("step-up", `
		let info, done;
		const res = await c.requestStepUp({scope: "transfer:write", onChallenge: i => { info = i; }});
		await c.otpCreate({challengeId: info.challengeId});
		let wrong = "";
		try { await c.otpCheck(info.challengeId, "000000"); } catch (e) { wrong = e.name; }
		await c.otpCheck(info.challengeId, "`+sandbox.DefaultOTPCode+`", i => { done = i; });
		const {user} = await c.refresh();
		return {status: res.status, step: info.currentStep, scope: info.scopeRequested, wrong,
			done: done.currentStep, token: user.accessToken};`)
	if up["status"] != "review" || up["step"] != "verify_email" || up["scope"] != "transfer:write" || up["wrong"] == "" || up["done"] != "completed" {
		t.Fatalf("step-up: %v", up)
	}
	if c, err := sb.VerifyAccessToken(up["token"].(string)); err != nil || c.Scope != "transfer:write" {
		t.Fatalf("access token after step-up: %+v, %v", c, err)
	}

	run("password login", `
		await c.loginWithPassword({identifier: "`+sandbox.DemoEmail+`", password: "`+sandbox.DemoPassword+`"});
		await c.refresh();
		return {};`)
	// Two more sessions of the demo user, from outside the browser, so
	// there is something to page through and revoke.
	for range 2 {
		webSDKPasswordSession(t, api)
	}
	pages := run("listSessions paging", `
		const first = await c.listSessions({limit: 2, offset: 0});
		const rest = await c.listSessions({limit: 2, offset: 2});
		return {total: first.total, n1: first.sessions.length, n2: rest.sessions.length,
			ids: [...first.sessions, ...rest.sessions].map(s => s.id)};`)
	if pages["total"] != float64(3) || pages["n1"] != float64(2) || pages["n2"] != float64(1) {
		t.Fatalf("listSessions: %v", pages)
	}
	ids := pages["ids"].([]any)
	mine := run("my session", `return {sid: await c.getSessionId()};`)["sid"]
	var other string
	for _, id := range ids {
		if id != mine {
			other = id.(string)
		}
	}
	left := run("revoke one session, then the others", `
		await c.revokeSessions("session", "`+other+`");
		const afterOne = (await c.listSessions()).total;
		await c.revokeSessions("others");
		return {afterOne, afterOthers: (await c.listSessions()).total};`)
	if left["afterOne"] != float64(2) || left["afterOthers"] != float64(1) {
		t.Fatalf("revokes: %v", left)
	}
	run("revoke mine, log in again, revoke all", `
		await c.revokeSessions("mine");
		await c.loginWithPassword({identifier: "`+sandbox.DemoEmail+`", password: "`+sandbox.DemoPassword+`"});
		await c.refresh();
		await c.revokeSessions("all");
		return {};`)
	out := run("log in and out", `
		await c.loginWithPassword({identifier: "`+sandbox.DemoEmail+`", password: "`+sandbox.DemoPassword+`"});
		await c.refresh();
		await c.logout();
		let after = "";
		try { await c.invalidateCache(); await c.refresh(); } catch (e) { after = e.name; }
		return {after};`)
	if out["after"] == "" {
		t.Fatalf("refresh after logout succeeded: %v", out)
	}
	st := sb.Stats()
	if st.ReuseEvents != 0 {
		t.Fatalf("the SDK reused a refresh token: %+v", st)
	}
	if st.Revokes == 0 {
		t.Fatalf("logout never reached /revoke: %+v", st)
	}
}

// webSDKPasswordSession logs the demo user in from outside the browser
// (password, then finalize with a fresh key), adding a session to list.
func webSDKPasswordSession(t *testing.T, api *httptest.Server) {
	t.Helper()
	c, err := prelude.New(api.URL, prelude.Options{HTTPClient: api.Client()})
	if err != nil {
		t.Fatal(err)
	}
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prelude.PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)(context.Background(), key, ""); err != nil {
		t.Fatal(err)
	}
}

// webSDKBundle bundles sandbox/websdk/entry.js with the SDK package,
// installing it first (npm ci) when needed; without node the test skips
// outside CI and fails under it.
func webSDKBundle(t *testing.T) []byte {
	t.Helper()
	chromium(t)
	dir := filepath.Join("..", "websdk")
	if _, err := exec.LookPath("npm"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("npm is required for the official web SDK test")
		}
		t.Skip("no npm: the official web SDK test did not run")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@prelude.so", "js-sdk", "package.json")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	out := filepath.Join(t.TempDir(), "bundle.js")
	cmd := exec.Command(filepath.Join("node_modules", ".bin", "esbuild"), "entry.js", "--bundle", "--format=esm", "--outfile="+out)
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
