package injecttoken

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// testSealKey is a seal key for tests (base64 of 32 bytes).
const testSealKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// perUserSite is a Caddyfile with a per-user site at localhost:9080 in
// front of srv's /whoami echo; block is more per_user options.
func perUserSite(storage, srv, block string) string {
	return globals(storage) + fmt.Sprintf(`http://localhost:9080 {
	inject_token {
		template users
		prelude %s
		seal_key {env.IT_PERUSER_SEAL_KEY}
		per_user {
			identity_header X-Forwarded-User sub
			identity_header X-Forwarded-Email email
			%s
		}
	}
	reverse_proxy %s {
		rewrite /whoami
	}
}
`, srv, block, strings.TrimPrefix(srv, "http://"))
}

// TestPerUserThroughCaddy: the per_user block in a real Caddy: an
// unidentified browser is redirected to the login page and an API client
// gets 401; alice logs in through the page and the upstream sees her token
// and identity headers, never the client's own; her logout sends her back
// to the login page.
func TestPerUserThroughCaddy(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	sub := srv.AddUser("alice@example.com", "alice-password")
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	startConfig(t, perUserSite(t.TempDir(), srv.URL, ""))

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string, hdr ...string) (int, http.Header, string) {
		return perUserDo(t, c, "GET", path, nil, hdr...)
	}
	status, h, _ := get("/orders", "Accept", "text/html")
	if status != http.StatusSeeOther || h.Get("Location") != "/.inject_token/login?return=%2Forders" {
		t.Fatalf("unidentified browser: %d %v", status, h)
	}
	status, _, body := get("/orders", "Accept", "application/json")
	if status != http.StatusUnauthorized || !strings.Contains(body, `"login":"/.inject_token/login"`) {
		t.Fatalf("unidentified API client: %d %s", status, body)
	}
	_, _, page := get("/.inject_token/login", "Accept", "text/html")
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatalf("login page: %s", page)
	}
	form := url.Values{"csrf": {csrf[1]}, "email": {"alice@example.com"}, "password": {"alice-password"}, "return": {"/orders"}}
	status, h, body = perUserDo(t, c, "POST", "/.inject_token/login/password", form)
	if status != http.StatusSeeOther || h.Get("Location") != "/orders" {
		t.Fatalf("login: %d %v %s", status, h, body)
	}
	status, _, body = get("/orders", "X-Forwarded-User", "usr_forged", "Authorization", "Bearer forged")
	var w whoami
	if status != 200 || json.Unmarshal([]byte(body), &w) != nil {
		t.Fatalf("alice's request: %d %s", status, body)
	}
	if w.Claims["sub"] != sub || w.Headers["X-Forwarded-User"] != sub || w.Headers["X-Forwarded-Email"] != "alice@example.com" {
		t.Fatalf("upstream saw %v %v", w.Claims, w.Headers)
	}
	a := &adminClient{T: t}
	if st := a.Call("GET", "/inject_token/templates/users/sessions/"+sub, "", 200); st["state"] != "active" {
		t.Fatalf("alice's session in the admin API: %v", st)
	}

	_, _, page = get("/.inject_token/", "Accept", "text/html")
	csrf = regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil || !strings.Contains(page, sub) {
		t.Fatalf("alice's page: %s", page)
	}
	status, h, _ = perUserDo(t, c, "POST", "/.inject_token/logout", url.Values{"csrf": {csrf[1]}})
	if status != http.StatusSeeOther || h.Get("Location") != "/.inject_token/login" {
		t.Fatalf("logout: %d %v", status, h)
	}
	if status, _, _ = get("/orders", "Accept", "text/html"); status != http.StatusSeeOther {
		t.Fatalf("after logout: %d", status)
	}
	if st := srv.Stats(); st.Revokes != 1 || st.Logins != 1 {
		t.Fatalf("sandbox: %+v", st)
	}
}

func perUserDo(t *testing.T, c *http.Client, method, path string, form url.Values, hdr ...string) (int, http.Header, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, "http://localhost:9080"+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "http://localhost:9080")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestPerUserConfigErrors: per_user mistakes fail at load with the line
// and what was expected, and per_user without a seal key is refused.
func TestPerUserConfigErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"inject_token {\n prelude https://a.b\n per_user\n}", "per_user needs 'template <name>'"},
		{"inject_token {\n template u\n prelude https://a.b\n per_user {\n identity_header X-User password\n }\n}", "unknown claim 'password'"},
		{"inject_token {\n template u\n prelude https://a.b\n per_user {\n throttle_account many 5m\n }\n}", "expected a count and a window"},
		{"inject_token {\n template u\n prelude https://a.b\n per_user {\n path login\n }\n}", "starting with /"},
		{"inject_token {\n template u\n prelude https://a.b\n per_user {\n idle_timeout soon\n }\n}", "expected a positive duration"},
		{"inject_token {\n template u\n prelude https://a.b\n per_user {\n cookie x\n }\n}", "unrecognized subdirective 'cookie'"},
		{"inject_token {\n template u\n key alice\n prelude https://a.b\n per_user\n}", "no placeholder"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: error = %v, want %q with the line", tc.input, err, tc.want)
		}
	}
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("inject_token {\n template u\n prelude https://a.b\n per_user\n}")); err != nil {
		t.Fatalf("per_user without key: %v", err)
	}

	// Without seal_key the config does not load.
	cfg := strings.Replace(perUserSite(t.TempDir(), "http://127.0.0.1:1", ""), "seal_key {env.IT_PERUSER_SEAL_KEY}", "", 1)
	resp, err := http.Post(adminURL+"/load", "text/caddyfile", strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !strings.Contains(string(b), "per_user requires seal_key") {
		t.Fatalf("load without seal_key: %d %s", resp.StatusCode, b)
	}
}

// TestDemoPerUserSite: the demo's per-user site redirects an
// unidentified browser to its login page, and alice and bob (the demo's
// users) log in there with their passwords and are served as themselves.
func TestDemoPerUserSite(t *testing.T) {
	d := exampleDemo(t, t.TempDir())
	d.Start(t)
	status, h, _ := do(t, noRedirect(), "GET", d.PerUser+"/", nil, "Accept", "text/html")
	if status != http.StatusSeeOther || h.Get("Location") != "/.inject_token/login?return=%2F" {
		t.Fatalf("unidentified browser at the demo's per-user site: %d %v", status, h)
	}
	subs := map[string]bool{}
	for _, u := range [][2]string{{"alice@example.com", "alice-password"}, {"bob@example.com", "bob-password"}} {
		jar, _ := cookiejar.New(nil)
		c := noRedirect()
		c.Jar = jar
		_, _, page := do(t, c, "GET", d.PerUser+"/.inject_token/login", nil)
		csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(page))
		if csrf == nil {
			t.Fatalf("login page: %s", page)
		}
		form := url.Values{"csrf": {csrf[1]}, "email": {u[0]}, "password": {u[1]}}
		status, _, body := do(t, c, "POST", d.PerUser+"/.inject_token/login/password", []byte(form.Encode()),
			"Content-Type", "application/x-www-form-urlencoded", "Origin", d.PerUser)
		if status != http.StatusSeeOther {
			t.Fatalf("%s login: %d %s", u[0], status, body)
		}
		status, _, body = do(t, c, "GET", d.PerUser+"/", nil)
		var w whoami
		if status != 200 || json.Unmarshal(body, &w) != nil || w.Headers["X-Forwarded-Email"] != u[0] || w.Claims["sub"] == nil {
			t.Fatalf("%s through the demo: %d %s", u[0], status, body)
		}
		subs[w.Claims["sub"].(string)] = true
	}
	if len(subs) != 2 {
		t.Fatalf("alice and bob served as %v", subs)
	}
}

func noRedirect() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
