package injecttoken

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// perUserAttackLogin starts the per-user site in a real Caddy in front of
// the sandbox echo (reverse_proxy) and logs alice in; it returns her
// client.
func perUserAttackLogin(t *testing.T, more ...func(srv string) string) (*http.Client, string) {
	t.Helper()
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	sub := srv.AddUser("alice@example.com", "alice-password")
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	cfg := perUserSite(t.TempDir(), srv.URL, "")
	for _, m := range more {
		cfg += m(srv.URL)
	}
	startConfig(t, cfg)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	_, _, page := perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("login page: %s", page)
	}
	form := url.Values{"csrf": {m[1]}, "email": {"alice@example.com"}, "password": {"alice-password"}, "return": {"/"}}
	if status, h, body := perUserDo(t, c, "POST", "/.inject_token/login/password", form); status != http.StatusSeeOther {
		t.Fatalf("login: %d %v %s", status, h, body)
	}
	return c, sub
}

// TestAttackIdentityHeaderUnderscoreVariant (holds): a client-sent
// "X_Forwarded_User" (underscore for hyphen) would read as the identity
// header in CGI/PHP/WSGI backends; Caddy 2.11's server drops headers with
// '_' or '.' before the gateway, so it never reaches the legacy app. This
// pins that: an upgrade or expected_underscore_headers must not open it.
func TestAttackIdentityHeaderUnderscoreVariant(t *testing.T) {
	c, sub := perUserAttackLogin(t)
	status, _, body := perUserDo(t, c, "GET", "/orders", nil,
		"X_Forwarded_User", "usr_admin", "x_forwarded_email", "boss@example.com")
	var w whoami
	if status != 200 || json.Unmarshal([]byte(body), &w) != nil {
		t.Fatalf("alice's request: %d %s", status, body)
	}
	if w.Headers["X-Forwarded-User"] != sub {
		t.Fatalf("verified identity header missing: %v", w.Headers)
	}
	for name, v := range w.Headers {
		norm := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		if (norm == "x-forwarded-user" || norm == "x-forwarded-email") && name != "X-Forwarded-User" && name != "X-Forwarded-Email" {
			t.Errorf("client-sent %s: %q reached the upstream (reads as the identity header in CGI/WSGI/PHP)", name, v)
		}
	}
}

// TestAttackIdentityHeaderDroppedByConnection: a client lists the
// identity header in Connection; reverse_proxy then removes it as a
// hop-by-hop header, after the gateway set it, so the legacy app gets the
// user's Authorization without the verified identity header (and,
// combined with a header the app reads in its place, the client's own
// identity). The gateway should refuse (or clean) a Connection header that
// names an identity header or Authorization/DPoP.
func TestAttackIdentityHeaderDroppedByConnection(t *testing.T) {
	c, sub := perUserAttackLogin(t)
	status, _, body := perUserDo(t, c, "GET", "/orders", nil, "Connection", "X-Forwarded-User, X-Forwarded-Email")
	var w whoami
	if status == 200 && json.Unmarshal([]byte(body), &w) == nil && w.Claims["sub"] == sub && w.Headers["X-Forwarded-User"] != sub {
		t.Fatalf("upstream got alice's token but no verified X-Forwarded-User (Connection hop-by-hop trick): %v", w.Headers)
	}
}

// TestAttackTemplateKeyNamespaceShared: two sites share template "users"
// (allowed: "Key is per handler: two sites may find the user
// differently"): the per-user site keys sessions by the Prelude sub, an
// API site by another identity source's id (here a header a forward_auth
// in front would set; equally {http.auth.user.id} of a JWT module trusting
// another issuer, or a basic_auth user name). Both land in one key
// namespace, so an identity of the second source that equals alice's sub
// is served with alice's upstream token. Sessions made by different key
// sources must not be each other's: namespace the stored key by its
// source (e.g. the per-user gateway's keys as "peruser:<sub>"), or refuse
// a template bound with two different key sources.
func TestAttackTemplateKeyNamespaceShared(t *testing.T) {
	apiSite := func(srv string) string {
		return fmt.Sprintf(`http://localhost:9081 {
	inject_token {
		template users
		key {http.request.header.X-User}
		prelude %s
		seal_key {env.IT_PERUSER_SEAL_KEY}
	}
	reverse_proxy %s {
		rewrite /whoami
	}
}
`, srv, strings.TrimPrefix(srv, "http://"))
	}
	// The fix chosen: such a config is refused at load, naming both key
	// sources (docs/per-user.md). A config that loads must keep them apart.
	srv0 := sandboxtest.NewServer(t, sandbox.Options{})
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	dir := t.TempDir()
	startConfig(t, perUserSite(dir, srv0.URL, ""))
	resp, err := http.Post(adminURL+"/load", "text/caddyfile", strings.NewReader(perUserSite(dir, srv0.URL, "")+apiSite(srv0.URL)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		if !strings.Contains(string(b), "per_user login") || !strings.Contains(string(b), "{http.request.header.X-User}") {
			t.Fatalf("refused, but the error does not name both key sources: %d %s", resp.StatusCode, b)
		}
		t.Logf("refused at load: %s", b)
		return
	}
	_, sub := perUserAttackLogin(t, apiSite)
	req, _ := http.NewRequest("GET", "http://localhost:9081/orders", nil)
	req.Header.Set("X-User", sub) // the API site's identity "usr_…", not alice
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var w whoami
	if resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&w) == nil && w.Claims["sub"] == sub {
		t.Fatalf("the API site's identity %q was served with alice's per-user session (her token, sub %v)", sub, w.Claims["sub"])
	}
}

// TestAttackLoginCookieForwardedUpstream: the gateway's own login cookie
// (the user's whole session at the gateway: whoever holds it is the user
// until it expires) is passed on to the legacy app in the Cookie header,
// where the app, its logs, its error pages or a third party it forwards
// to can replay it against the gateway. The token-handler pattern keeps
// the gateway's credential between the browser and the gateway: strip
// the gateway's cookies (login and _flow) from Cookie before the request
// goes on.
func TestAttackLoginCookieForwardedUpstream(t *testing.T) {
	c, _ := perUserAttackLogin(t)
	status, _, body := perUserDo(t, c, "GET", "/orders", nil)
	var w whoami
	if status != 200 || json.Unmarshal([]byte(body), &w) != nil {
		t.Fatalf("alice's request: %d %s", status, body)
	}
	if ck := w.Headers["Cookie"]; strings.Contains(ck, "inject_token") {
		t.Fatalf("the legacy app received the gateway's login cookie: %s", ck)
	}
}

// TestAttackThrottleXForwardedFor (holds): without trusted_proxies a
// client's own X-Forwarded-For does not give it a new address for the
// per-address login limit.
func TestAttackThrottleXForwardedFor(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	srv.AddUser("alice@example.com", "alice-password")
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	startConfig(t, perUserSite(t.TempDir(), srv.URL, "throttle_address 2 1m"))
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var last int
	for i := range 3 {
		_, _, page := perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html")
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("login page: %s", page)
		}
		form := url.Values{"csrf": {m[1]}, "email": {fmt.Sprintf("user%d@example.com", i)}, "password": {"x"}}
		last, _, _ = perUserDo(t, c, "POST", "/.inject_token/login/password", form,
			"X-Forwarded-For", fmt.Sprintf("203.0.113.%d", i+1), "X-Real-IP", fmt.Sprintf("198.51.100.%d", i+1))
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("3rd attempt with a spoofed X-Forwarded-For: %d, want 429", last)
	}
}

// behindProxy is perUserSite with loopback as a trusted proxy (Caddy's
// default, non-strict client-IP choice).
func behindProxy(storage, srv, block string) string {
	cfg := perUserSite(storage, srv, block)
	return strings.Replace(cfg, "\tstorage file_system "+storage+"\n", "\tstorage file_system "+storage+
		"\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/8 ::1/128\n\t}\n", 1)
}

// TestAttackThrottleBehindAppendingProxy: behind a trusted proxy that
// appends the client's address to X-Forwarded-For (nginx
// $proxy_add_x_forwarded_for, most cloud load balancers), Caddy's default
// client IP is the leftmost entry, which the client wrote itself; so one
// guesser gets a fresh "address" per attempt and the per-address login
// limit never applies. The gateway should take the address the trusted
// proxy vouched for (the rightmost untrusted entry, as
// trusted_proxies_strict does), or the docs must make per_user require
// trusted_proxies_strict.
func TestAttackThrottleBehindAppendingProxy(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	startConfig(t, behindProxy(t.TempDir(), srv.URL, "throttle_address 2 1m"))
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var last int
	for i := range 3 {
		// The proxy appended the real client, 198.51.100.7.
		xff := fmt.Sprintf("203.0.113.%d, 198.51.100.7", i+1)
		_, _, page := perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html", "X-Forwarded-For", xff)
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("login page: %s", page)
		}
		form := url.Values{"csrf": {m[1]}, "email": {fmt.Sprintf("user%d@example.com", i)}, "password": {"x"}}
		last, _, _ = perUserDo(t, c, "POST", "/.inject_token/login/password", form, "X-Forwarded-For", xff)
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("3rd attempt by one client (198.51.100.7) with a new leftmost X-Forwarded-For: %d, want 429", last)
	}
}

// TestAttackCookieBehindTLSProxy (holds): through a trusted proxy that
// says it terminated TLS the cookie is __Host- and Secure; a client that
// is not a trusted proxy cannot claim TLS with X-Forwarded-Proto.
func TestAttackCookieBehindTLSProxy(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	startConfig(t, behindProxy(t.TempDir(), srv.URL, ""))
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	_, h, _ := perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html", "X-Forwarded-Proto", "https")
	ck := (&http.Response{Header: h}).Cookies()
	if len(ck) != 1 || !strings.HasPrefix(ck[0].Name, "__Host-") || !ck[0].Secure || !ck[0].HttpOnly || ck[0].Path != "/" || ck[0].Domain != "" {
		t.Fatalf("cookie through a TLS-terminating trusted proxy: %v", h.Values("Set-Cookie"))
	}
	startConfig(t, perUserSite(t.TempDir(), srv.URL, "")) // no trusted proxies
	_, h, _ = perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html", "X-Forwarded-Proto", "https")
	ck = (&http.Response{Header: h}).Cookies()
	if len(ck) != 1 || strings.HasPrefix(ck[0].Name, "__Host-") || ck[0].Secure {
		t.Fatalf("an untrusted client's X-Forwarded-Proto made the cookie %v", h.Values("Set-Cookie"))
	}
}

// TestAttackAddressLimitIPv6: the per-address login limit is per full
// IPv6 address, but every IPv6 client holds at least a /64 (2^64
// addresses): one guesser takes a new address per attempt and the limit
// never applies (and the limiter's memory grows with each). Key IPv6
// clients by their /64 (or /56). Needs addresses of one /64 on lo; run
// inside a network namespace:
//
//	unshare -n sh -c 'ip link set lo up; for i in 10 11 12 13; do ip -6 addr add 2001:db8::$i/64 dev lo nodad; done;
//	  go test -run TestAttackAddressLimitIPv6 .'
func TestAttackAddressLimitIPv6(t *testing.T) {
	src := []string{"2001:db8::11", "2001:db8::12", "2001:db8::13"}
	for _, a := range append(src, "2001:db8::10") {
		ln, err := net.Listen("tcp", "["+a+"]:0")
		if err != nil {
			t.Skipf("needs 2001:db8::10-13/64 on lo (see the comment): %v", err)
		}
		ln.Close()
	}
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	t.Setenv("IT_PERUSER_SEAL_KEY", testSealKey)
	startConfig(t, perUserSite(t.TempDir(), srv.URL, "throttle_address 2 1m"))
	var last int
	for i, a := range src {
		jar, _ := cookiejar.New(nil)
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(a)}}
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", "[2001:db8::10]:9080")
			}}}
		_, _, page := perUserDo(t, c, "GET", "/.inject_token/login", nil, "Accept", "text/html")
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("login page from %s: %s", a, page)
		}
		form := url.Values{"csrf": {m[1]}, "email": {fmt.Sprintf("user%d@example.com", i)}, "password": {"x"}}
		last, _, _ = perUserDo(t, c, "POST", "/.inject_token/login/password", form)
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("3rd attempt from the same /64 (throttle_address 2): %d, want 429", last)
	}
}
