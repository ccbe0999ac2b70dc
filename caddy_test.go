package injecttoken

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// These tests drive an in-process Caddy (admin on localhost:2999, shared by
// the whole package: no t.Parallel) in front of a real sandbox on
// 127.0.0.1. Each test uses its own session names, sandbox and storage
// directory.

// gateway is a test Caddy config: one site on :9080 with inject_token in
// front of reverse_proxy.
type gateway struct {
	storage  string // storage directory
	block    string // inject_token block body
	upstream string // reverse_proxy target
	rewrite  string // path the upstream sees ("" keeps the request path)
	extra    string // more site directives
}

func (g gateway) String() string {
	rewrite := ""
	if g.rewrite != "" {
		rewrite = "rewrite * " + g.rewrite
	}
	return globals(g.storage) + fmt.Sprintf(`http://localhost:9080 {
	inject_token {
%s
	}
	%s
	reverse_proxy %s
	%s
}
`, g.block, rewrite, g.upstream, g.extra)
}

// The helpers shared with the interop module's tests live in
// internal/gatewaytest; these names keep this package's tests short.
const adminURL = gatewaytest.AdminURL

type (
	whoami      = gatewaytest.Whoami
	adminClient = gatewaytest.AdminClient
	demo        = gatewaytest.Demo
)

var (
	globals         = gatewaytest.Globals
	startConfig     = gatewaytest.StartConfig
	do              = gatewaytest.Do
	stored          = gatewaytest.Stored
	freePort        = gatewaytest.FreePort
	waitWithin      = gatewaytest.WaitWithin
	newSandboxLogin = gatewaytest.NewSandboxLogin
)

// start loads g into the in-process Caddy and unloads it when the test ends.
func (g gateway) start(t *testing.T) *caddytest.Tester {
	t.Helper()
	return startConfig(t, g.String())
}

func exampleDemo(t *testing.T, storage string) demo {
	t.Helper()
	return gatewaytest.ExampleDemo(t, "Caddyfile.example", storage)
}

func storedString(t *testing.T, dir, session, field string) string {
	t.Helper()
	s, _ := stored(t, dir, session)[field].(string)
	return s
}

func getWhoami(t *testing.T, tester *caddytest.Tester, hdr ...string) whoami {
	t.Helper()
	status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/anything", nil, hdr...)
	if status != http.StatusOK {
		t.Fatalf("GET through proxy: %d %s", status, body)
	}
	var w whoami
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	return w
}

func assertUnavailable(t *testing.T, tester *caddytest.Tester, session string) {
	t.Helper()
	status, hdr, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503; body %s", status, body)
	}
	if hdr.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	if m["session"] != session || m["state"] != "logged_out" || m["error"] == "" {
		t.Errorf("503 body = %s", body)
	}
}

// TestProxyInjectsToken: automatic password login from {env.*}
// placeholders, the token reaches the upstream, client credentials and
// strip_header headers never do, two sites share one session, and the
// password stays out of the JSON config.
func TestProxyInjectsToken(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	uid := srv.AddUser(sandbox.DemoEmail, sandbox.DemoPassword)
	t.Setenv("IT_TEST_EMAIL", sandbox.DemoEmail)
	t.Setenv("IT_TEST_PASSWORD", sandbox.DemoPassword)
	dir := t.TempDir()
	block := fmt.Sprintf(`		session proxy-1
		prelude %s
		login password {env.IT_TEST_EMAIL} {env.IT_TEST_PASSWORD}
		strip_header X-Api-Key X-Other`, srv.URL)
	g := gateway{storage: dir, block: block, upstream: srv.URL, rewrite: "/whoami",
		extra: fmt.Sprintf(`}
http://localhost:9081 {
	inject_token {
%s
	}
	rewrite * /whoami
	reverse_proxy %s`, block, srv.URL)}
	tester := g.start(t)

	w := getWhoami(t, tester,
		"Authorization", "Bearer client-token",
		"DPoP", "client-proof",
		"X-Api-Key", "k",
		"X-Other", "o",
		"X-Kept", "yes")
	if w.Claims["sub"] != uid {
		t.Errorf("sub = %v, want %s", w.Claims["sub"], uid)
	}
	tok := storedString(t, dir, "proxy-1", "access_token")
	if got := w.Headers["Authorization"]; got != "Bearer "+tok {
		t.Errorf("upstream Authorization = %q, want the session's token", got)
	}
	for _, h := range []string{"Dpop", "DPoP", "X-Api-Key", "X-Other"} {
		if v, ok := w.Headers[h]; ok {
			t.Errorf("client header %s forwarded: %q", h, v)
		}
	}
	if w.Headers["X-Kept"] != "yes" {
		t.Errorf("unrelated header dropped: %v", w.Headers)
	}

	// The second site names the same session: same token, no new login.
	status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9081/", nil)
	var w2 whoami
	if status != http.StatusOK || json.Unmarshal(body, &w2) != nil {
		t.Fatalf("second site: %d %s", status, body)
	}
	if w2.Claims["sid"] != w.Claims["sid"] {
		t.Errorf("sites do not share the session: %v vs %v", w2.Claims["sid"], w.Claims["sid"])
	}
	if st := srv.Stats(); st.Logins != 1 {
		t.Errorf("logins = %d, want 1", st.Logins)
	}

	_, _, cfg := do(t, http.DefaultClient, http.MethodGet, adminURL+"/config/", nil)
	if bytes.Contains(cfg, []byte(sandbox.DemoPassword)) {
		t.Error("resolved password in the JSON config")
	}
}

// TestLoggedOutAnswers503: without a login the session is logged out and
// requests get 503 + Retry-After + JSON, never forwarded; with error
// routes, handle_errors shapes the answer and sees the placeholders.
func TestLoggedOutAnswers503(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	g := gateway{storage: dir, block: "session out-1\nprelude " + srv.URL, upstream: srv.URL, rewrite: "/whoami"}
	tester := g.start(t)
	assertUnavailable(t, tester, "out-1")

	g.extra = `handle_errors {
		respond "custom {err.status_code} {http.inject_token.session} {http.inject_token.state}"
	}`
	tester.InitServer(g.String(), "caddyfile")
	status, hdr, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
	if status != http.StatusServiceUnavailable || string(body) != "custom 503 out-1 logged_out" {
		t.Errorf("with handle_errors: %d %q", status, body)
	}
	if hdr.Get("Retry-After") == "" {
		t.Error("handle_errors answer lost Retry-After")
	}
}

// TestUpstream401RetriesOnce: a token the upstream rejects is invalidated
// by the transport,
// refreshed, and a replayable request (small body) is retried once; a
// large body is not replayed, its 401 passes through, and the next request
// uses a fresh token.
func TestUpstream401RetriesOnce(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	var mu sync.Mutex
	rejected := map[string]bool{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		bad := rejected[tok]
		mu.Unlock()
		if _, err := srv.VerifyAccessToken(tok); err != nil || bad {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			if r.Header.Get("X-Big-401") != "" {
				// A streamed body of unknown length: must not be held back.
				w.(http.Flusher).Flush()
				_, _ = w.Write(bytes.Repeat([]byte("r"), 200<<10))
				return
			}
			_, _ = io.WriteString(w, "rejected")
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream", "ok")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "body_len": len(body), "body_sum": string(body[:min(len(body), 16)])})
	}))
	t.Cleanup(upstream.Close)
	reject := func(tok string) {
		mu.Lock()
		rejected[tok] = true
		mu.Unlock()
	}

	// Metrics are process-wide and survive the session: a fresh name per
	// run keeps the counts exact under -count.
	name := fmt.Sprintf("retry-%d", time.Now().UnixNano())
	dir := t.TempDir()
	g := gateway{storage: dir, upstream: upstream.URL + " {\n\t\ttransport inject_token\n\t}", block: fmt.Sprintf(`session %s
		prelude %s
		login password %s %s`, name, srv.URL, sandbox.DemoEmail, sandbox.DemoPassword)}
	tester := g.start(t)

	status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil)
	if status != http.StatusOK {
		t.Fatalf("first request: %d %s", status, body)
	}
	tok1 := storedString(t, dir, name, "access_token")
	reject(tok1)

	small := []byte("small body that must be replayed")
	status, hdr, body := do(t, tester.Client, http.MethodPost, "http://localhost:9080/", small)
	if status != http.StatusOK {
		t.Fatalf("retried request: %d %s", status, body)
	}
	var got struct {
		Token   string `json:"token"`
		BodyLen int    `json:"body_len"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	if got.Token == tok1 || got.BodyLen != len(small) {
		t.Errorf("retry used token %t-equal to the rejected one, body_len %d", got.Token == tok1, got.BodyLen)
	}
	if hdr.Get("WWW-Authenticate") != "" || hdr.Get("X-Upstream") != "ok" {
		t.Errorf("headers of the discarded 401 leaked into the retry's answer: %v", hdr)
	}
	if st := srv.Stats(); st.RefreshSuccesses != 1 {
		t.Errorf("refreshes = %d, want 1", st.RefreshSuccesses)
	}

	// A body over 64 KiB is not buffered: the 401 passes through.
	tok2 := storedString(t, dir, name, "access_token")
	reject(tok2)
	big := bytes.Repeat([]byte("x"), 70<<10)
	status, _, body = do(t, tester.Client, http.MethodPost, "http://localhost:9080/", big)
	if status != http.StatusUnauthorized || string(body) != "rejected" {
		t.Fatalf("large body: %d %q, want the upstream's 401", status, body)
	}
	status, _, body = do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil)
	if status != http.StatusOK {
		t.Fatalf("after 401: %d %s", status, body)
	}
	if st := srv.Stats(); st.RefreshSuccesses != 2 {
		t.Errorf("refreshes = %d, want 2", st.RefreshSuccesses)
	}

	_, _, metrics := do(t, http.DefaultClient, http.MethodGet, adminURL+"/metrics", nil)
	for _, want := range []string{
		`caddy_inject_token_requests_total{result="retried_401",session="` + name + `"} 1`,
		`caddy_inject_token_requests_total{result="injected",session="` + name + `"} 4`,
		`caddy_inject_token_refresh_total{outcome="refreshed",session="` + name + `"} 2`,
		`caddy_inject_token_refresh_total{outcome="logged_in",session="` + name + `"} 1`,
		`caddy_inject_token_token_expiry_timestamp_seconds{session="` + name + `"}`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A 401 whose body has no announced length is not held anywhere: the
	// transport reads the answer, drains it and retries with a fresh token.
	tok3 := storedString(t, dir, name, "access_token")
	reject(tok3)
	status, _, body = do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil, "X-Big-401", "1")
	if status != http.StatusOK {
		t.Fatalf("streamed 401: %d, %d bytes; want the retried 200", status, len(body))
	}
	if st := srv.Stats(); st.RefreshSuccesses != 3 {
		t.Errorf("refreshes = %d, want 3", st.RefreshSuccesses)
	}
}

// TestAdminAPI walks every admin route.
func TestAdminAPI(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	uid := srv.AddUser(sandbox.DemoEmail, sandbox.DemoPassword)
	dir := t.TempDir()
	g := gateway{storage: dir, upstream: srv.URL, rewrite: "/whoami",
		block: "session adm-a\nprelude " + srv.URL,
		extra: fmt.Sprintf(`}
http://localhost:9081 {
	inject_token {
		session adm-b
		prelude %s
	}
	respond "b"`, srv.URL)}
	tester := g.start(t)
	a := &adminClient{T: t}

	// Status of a session never logged in.
	st := a.Call("GET", "/inject_token/sessions/adm-a", "", 200)
	if st["state"] != "logged_out" || st["backend"] != "prelude" || st["base_url"] != srv.URL || st["session"] != "adm-a" {
		t.Errorf("status = %v", st)
	}
	all := a.Call("GET", "/inject_token/sessions", "", 200)
	names := map[string]bool{}
	for _, s := range all["sessions"].([]any) {
		names[s.(map[string]any)["session"].(string)] = true
	}
	if !names["adm-a"] || !names["adm-b"] {
		t.Errorf("sessions = %v", all)
	}
	assertUnavailable(t, tester, "adm-a")

	// Errors: unknown session, wrong method, bad bodies, logged out.
	a.Call("GET", "/inject_token/sessions/nope", "", 404)
	a.Call("GET", "/inject_token/sessions/adm-a/bogus", "", 404)
	a.Call("POST", "/inject_token/sessions/adm-a", "", 405)
	a.Call("GET", "/inject_token/sessions/adm-a/refresh", "", 405)
	a.Call("POST", "/inject_token/sessions", "", 405)
	e := a.Call("POST", "/inject_token/sessions/adm-a/login/password", `{"email":"x","password":"y","extra":1}`, 400)
	if !strings.Contains(e["error"].(string), `"password"`) || strings.Contains(e["error"].(string), `"y"`) {
		t.Errorf("bad body error = %v", e)
	}
	a.Call("POST", "/inject_token/sessions/adm-a/login/password", `not json`, 400)
	a.Call("POST", "/inject_token/sessions/adm-a/login/password", `{"email":"x"}`, 400)
	a.Call("POST", "/inject_token/sessions/adm-a/login/otp", `{"email_address":"a@b.c","phone_number":"+15550100"}`, 400)
	a.Call("POST", "/inject_token/sessions/adm-a/login/otp/check", `{"code":"123456"}`, 409)
	a.Call("POST", "/inject_token/sessions/adm-a/revoke", `{"target":"everything"}`, 400)
	a.Call("POST", "/inject_token/sessions/adm-a/revoke", `{"target":"session"}`, 400)
	a.Call("GET", "/inject_token/sessions/adm-a/list?limit=x", "", 400)
	a.Call("POST", "/inject_token/sessions/adm-a/login/password", strings.Repeat(" ", 65<<10)+"{}", 413)
	e = a.Call("GET", "/inject_token/sessions/adm-a/list", "", 409)
	if !strings.Contains(e["error"].(string), "logged out") {
		t.Errorf("list while logged out: %v", e)
	}
	a.Call("POST", "/inject_token/sessions/adm-a/revoke", `{"target":"others"}`, 409)
	e = a.Call("POST", "/inject_token/sessions/adm-a/login/password", `{"email":"demo@example.com","password":"wrong"}`, 422)
	if e["code"] == nil || e["code"] == "" {
		t.Errorf("Prelude error code not passed on: %v", e)
	}

	// Password login makes the proxy work.
	st = a.Call("POST", "/inject_token/sessions/adm-a/login/password",
		fmt.Sprintf(`{"email":%q,"password":%q}`, sandbox.DemoEmail, sandbox.DemoPassword), 200)
	if st["state"] != "active" || st["sub"] != uid || st["dpop_jkt"] == "" || st["expires_at"] == nil {
		t.Errorf("after password login: %v", st)
	}
	if w := getWhoami(t, tester); w.Claims["sub"] != uid {
		t.Errorf("whoami sub = %v", w.Claims["sub"])
	}
	sidA := st["sid"].(string)

	// Refresh increments the refresh count and changes the token.
	before := storedString(t, dir, "adm-a", "access_token")
	st = a.Call("POST", "/inject_token/sessions/adm-a/refresh", "", 200)
	if st["refresh_count"].(float64) != 1 || st["last_outcome"] != "refreshed" {
		t.Errorf("after refresh: %v", st)
	}
	if storedString(t, dir, "adm-a", "access_token") == before {
		t.Error("refresh kept the token")
	}

	// OTP login for session b.
	if m := a.Call("POST", "/inject_token/sessions/adm-b/login/otp", `{"email_address":"demo@example.com"}`, 200); m["status"] != "code_sent" {
		t.Errorf("otp start: %v", m)
	}
	if st := a.Call("GET", "/inject_token/sessions/adm-b", "", 200); st["otp_pending"] != true {
		t.Errorf("otp not pending: %v", st)
	}
	a.Call("POST", "/inject_token/sessions/adm-b/login/otp/check", `{"code":"000000"}`, 422)
	st = a.Call("POST", "/inject_token/sessions/adm-b/login/otp/check", `{"code":"`+sandbox.DefaultOTPCode+`"}`, 200)
	if st["state"] != "active" || st["sub"] != uid {
		t.Errorf("after otp login: %v", st)
	}
	sidB := st["sid"].(string)

	// List from a: both sessions, a marked current.
	list := a.Call("GET", "/inject_token/sessions/adm-a/list?limit=10", "", 200)
	current := map[string]bool{}
	for _, s := range list["sessions"].([]any) {
		m := s.(map[string]any)
		current[m["id"].(string)] = m["current"].(bool)
	}
	if len(current) != 2 || !current[sidA] || current[sidB] || list["total"].(float64) != 2 || list["limit"] == nil {
		t.Errorf("list = %v (a=%s b=%s)", list, sidA, sidB)
	}

	// Secrets: collect them before they are revoked and cleared.
	secrets := []string{sandbox.DemoPassword,
		storedString(t, dir, "adm-a", "access_token"), storedString(t, dir, "adm-a", "refresh_token"),
		storedString(t, dir, "adm-b", "access_token"), storedString(t, dir, "adm-b", "refresh_token")}

	// Revoke others from a: b's session ends server-side, a keeps going.
	r := a.Call("POST", "/inject_token/sessions/adm-a/revoke", `{"target":"others"}`, 200)
	if r["target"] != "others" || r["local_cleared"] != false {
		t.Errorf("revoke others: %v", r)
	}
	list = a.Call("GET", "/inject_token/sessions/adm-a/list", "", 200)
	if n := len(list["sessions"].([]any)); n != 1 {
		t.Errorf("after revoke others: %d sessions", n)
	}
	getWhoami(t, tester)

	// Revoke mine: local state cleared, requests 503.
	r = a.Call("POST", "/inject_token/sessions/adm-a/revoke", `{"target":"mine"}`, 200)
	if r["local_cleared"] != true {
		t.Errorf("revoke mine: %v", r)
	}
	if st := a.Call("GET", "/inject_token/sessions/adm-a", "", 200); st["state"] != "logged_out" {
		t.Errorf("after revoke mine: %v", st)
	}
	assertUnavailable(t, tester, "adm-a")

	// Log in again, then log out: revoked at Prelude, 503 again.
	a.Call("POST", "/inject_token/sessions/adm-a/login/password",
		fmt.Sprintf(`{"email":%q,"password":%q}`, sandbox.DemoEmail, sandbox.DemoPassword), 200)
	getWhoami(t, tester)
	secrets = append(secrets, storedString(t, dir, "adm-a", "access_token"), storedString(t, dir, "adm-a", "refresh_token"))
	revokes := srv.Stats().Revokes
	st = a.Call("POST", "/inject_token/sessions/adm-a/logout", "", 200)
	if st["state"] != "logged_out" || st["auto_login"] != false {
		t.Errorf("after logout: %v", st)
	}
	if srv.Stats().Revokes != revokes+1 {
		t.Error("logout did not revoke at Prelude")
	}
	assertUnavailable(t, tester, "adm-a")
	a.Call("GET", "/inject_token/sessions", "", 200)

	a.AssertNoSecrets(secrets...)
}

// TestReloadKeepsSession: a reload with changed settings keeps the logged
// in session without a new login or a refresh.
func TestReloadKeepsSession(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	g := gateway{storage: dir, upstream: srv.URL, rewrite: "/whoami", block: fmt.Sprintf(`session reload-1
		prelude %s
		login password %s %s
		refresh_before 20s`, srv.URL, sandbox.DemoEmail, sandbox.DemoPassword)}
	tester := g.start(t)
	sid := getWhoami(t, tester).Claims["sid"]

	g.block = strings.Replace(g.block, "refresh_before 20s", "refresh_before 10s\n\t\tstrip_header X-Foo", 1)
	tester.InitServer(g.String(), "caddyfile")
	if got := getWhoami(t, tester).Claims["sid"]; got != sid {
		t.Errorf("sid after reload = %v, want %v", got, sid)
	}
	// And once more, identical.
	tester.InitServer(g.String(), "caddyfile")
	getWhoami(t, tester)
	if st := srv.Stats(); st.Logins != 1 || st.RefreshCalls != 0 {
		t.Errorf("after reloads: logins %d, refreshes %d; want 1, 0", st.Logins, st.RefreshCalls)
	}
	// The replaced configs released their references: one handler, one ref.
	if n, ok := sessions.References("reload-1"); !ok || n != 1 {
		t.Errorf("pool references = %d, %t; want 1", n, ok)
	}
	st := (&adminClient{T: t}).Call("GET", "/inject_token/sessions/reload-1", "", 200)
	if st["state"] != "active" || st["sid"] != sid {
		t.Errorf("status after reload: %v", st)
	}
}

// TestCaddyfileAdapt compares the adapted JSON with testdata.
func TestCaddyfileAdapt(t *testing.T) {
	for _, name := range []string{"adapt", "adapt_oauth2", "adapt_token_exchange"} {
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile("testdata/" + name + ".caddyfile")
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile("testdata/" + name + ".json")
			if err != nil {
				t.Fatal(err)
			}
			caddytest.AssertAdapt(t, string(in), "caddyfile", strings.TrimRight(string(want), "\n"))
		})
	}
}

// TestUnmarshalCaddyfile: the parsed fields, and errors that name the line
// and what was expected.
func TestUnmarshalCaddyfile(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		session        billing.v2
		prelude        https://acme.session.prelude.dev/
		login password svc@example.com {env.SVC_PASSWORD}
		refresh_before 90s
		strip_header   X-Api-Key Cookie
		strip_header   X-More
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Session != "billing.v2" || h.Prelude != "https://acme.session.prelude.dev/" ||
		h.Login == nil || *h.Login != (Login{Method: "password", Email: "svc@example.com", Password: "{env.SVC_PASSWORD}"}) ||
		time.Duration(h.RefreshBefore) != 90*time.Second ||
		strings.Join(h.StripHeaders, ",") != "X-Api-Key,Cookie,X-More" {
		t.Errorf("parsed %+v", h)
	}

	for _, tc := range []struct {
		name, input, want string
		line              int
	}{
		{"inline arg", "inject_token x {\n prelude https://a.b\n}", "takes no arguments", 1},
		{"unknown", "inject_token {\n prelude https://a.b\n frobnicate 1\n}", "unrecognized subdirective 'frobnicate'", 3},
		{"duplicate", "inject_token {\n prelude https://a.b\n session a\n session b\n}", "session already specified", 4},
		{"session no arg", "inject_token {\n session\n prelude https://a.b\n}", "session: expected exactly one name", 2},
		{"session two args", "inject_token {\n session a b\n prelude https://a.b\n}", "session: expected exactly one name", 2},
		{"session bad name", "inject_token {\n session a/b\n prelude https://a.b\n}", "invalid session name 'a/b'", 2},
		{"session upper case", "inject_token {\n session Api\n prelude https://a.b\n}", "invalid session name 'Api'", 2},
		{"session dots", "inject_token {\n session a..b\n prelude https://a.b\n}", "invalid session name 'a..b'", 2},
		{"session too long", "inject_token {\n session " + strings.Repeat("a", 65) + "\n prelude https://a.b\n}", "invalid session name", 2},
		{"no prelude", "inject_token {\n session a\n}", "a backend is required", 3},
		{"prelude no arg", "inject_token {\n prelude\n}", "prelude: expected exactly one base URL", 2},
		{"prelude relative", "inject_token {\n prelude acme.session.prelude.dev\n}", "prelude 'acme.session.prelude.dev': base URL must start with http:// or https://", 2},
		{"prelude ftp", "inject_token {\n prelude ftp://a.b\n}", "must start with http:// or https://", 2},
		{"prelude query", "inject_token {\n prelude https://a.b/?x=1\n}", "must not have a query", 2},
		{"prelude no host", "inject_token {\n prelude https:///x\n}", "has no host", 2},
		{"login method", "inject_token {\n prelude https://a.b\n login otp a b\n}", "login: unsupported method 'otp'", 3},
		{"login args", "inject_token {\n prelude https://a.b\n login password a@b.c\n}", "login: expected 'login password <email> <password>'", 3},
		{"duration", "inject_token {\n prelude https://a.b\n refresh_before soon\n}", "refresh_before: invalid duration 'soon'", 3},
		{"duration zero", "inject_token {\n prelude https://a.b\n refresh_before 0s\n}", "refresh_before: must be positive", 3},
		{"duration dup", "inject_token {\n prelude https://a.b\n refresh_before 1s\n refresh_before 2s\n}", "refresh_before already specified", 4},
		{"strip none", "inject_token {\n prelude https://a.b\n strip_header\n}", "strip_header: expected at least one header name", 3},
		{"strip bad", "inject_token {\n prelude https://a.b\n strip_header X:Y\n}", "strip_header: invalid header name 'X:Y'", 3},
		{"two backends", "inject_token {\n prelude https://a.b\n oauth2 https://as.b {\n  client_id c\n }\n}", "prelude, oauth2 and token_exchange cannot be combined", 6},
		{"oauth2 no url", "inject_token {\n oauth2 {\n  client_id c\n }\n}", "oauth2: expected the token endpoint or issuer URL", 2},
		{"oauth2 no client", "inject_token {\n oauth2 https://as.b {\n  scope a\n }\n}", "oauth2: client_id is required", 4},
		{"oauth2 bad auth", "inject_token {\n oauth2 https://as.b {\n  client_id c\n  auth magic\n }\n}", "oauth2 auth: 'magic' is not one of basic, post, private_key_jwt, tls_client_auth, self_signed_tls_client_auth, none", 4},
		{"oauth2 bad grant", "inject_token {\n oauth2 https://as.b {\n  client_id c\n  grant password\n }\n}", "oauth2 grant: 'password' is not one of", 4},
		{"oauth2 unknown", "inject_token {\n oauth2 https://as.b {\n  client_id c\n  audience x\n }\n}", "oauth2: unrecognized option 'audience'", 4},
		{"oauth2 param", "inject_token {\n oauth2 https://as.b {\n  client_id c\n  param audience\n }\n}", "oauth2 param: expected 'param <name> <value>'", 4},
		{"oauth2 login", "inject_token {\n oauth2 https://as.b {\n  client_id c\n }\n login password a b\n}", "login password is for the prelude backend", 6},
		{"exchange no subject", "inject_token {\n token_exchange https://as.b {\n  client_id c\n }\n}", "exactly one of subject_file and subject_header", 4},
		{"exchange grant", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  grant client_credentials\n }\n}", "'grant' is an oauth2 option", 4},
		{"exchange no verify", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  subject_header X-User\n }\n}", "subject_header needs 'verify jwks <url>'", 5},
		{"exchange no audience", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  subject_header X-User\n  verify jwks https://as.b/jwks\n }\n}", "needs 'verify audience", 6},
		{"exchange verify", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  verify maybe\n }\n}", "token_exchange verify: expected", 4},
		{"exchange header", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  subject_header X:Y\n }\n}", "subject_header: invalid header name 'X:Y'", 4},
		{"exchange cache", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  cache_size -1\n }\n}", "cache_size: '-1' is not a positive number", 4},
		{"exchange unknown", "inject_token {\n token_exchange https://as.b {\n  client_id c\n  frob x\n }\n}", "token_exchange: unrecognized option 'frob'", 4},
		{"dpop value", "inject_token {\n prelude https://a.b\n dpop RS256\n}", "dpop: expected one of ES256, EdDSA or off", 3},
		{"dpop off prelude", "inject_token {\n prelude https://a.b\n dpop off\n}", "dpop off is for oauth2", 4},
		{"origins none", "inject_token {\n prelude https://a.b\n allow_browser_origins\n}", "allow_browser_origins: expected at least one origin", 3},
		{"origin with path", "inject_token {\n prelude https://a.b\n allow_browser_origins https://app.example.com/x\n}", `"https://app.example.com/x" is not an origin`, 3},
		{"origin bare host", "inject_token {\n prelude https://a.b\n allow_browser_origins app.example.com\n}", "is not an origin", 3},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCaddyfileError(t, tc.input, tc.want, tc.line) })
	}
}

// wantCaddyfileError fails t unless the handler's Caddyfile input fails
// with an error containing want and, when line > 0, naming that line.
func wantCaddyfileError(t *testing.T, input, want string, line int) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want it to contain %q", err, want)
	}
	if at := fmt.Sprintf(", at Testfile:%d", line); line > 0 && !strings.Contains(err.Error(), at) {
		t.Errorf("error = %v, want it to name the line (%s)", err, at)
	}
}

// TestLoadErrors: configs that must not load, with errors that say why and
// never quote a resolved secret.
func TestLoadErrors(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	conflict := gateway{storage: dir, upstream: srv.URL, block: "session conflict-1\nprelude " + srv.URL,
		extra: fmt.Sprintf(`}
http://localhost:9081 {
	inject_token {
		session conflict-1
		prelude %s
		refresh_before 5s
	}
	respond "b"`, srv.URL)}
	caddytest.AssertLoadError(t, conflict.String(), "caddyfile", "configured more than once with different settings")

	t.Setenv("IT_TEST_SECRET_PW", "s3cret-value")
	unset := gateway{storage: dir, upstream: srv.URL, block: "session unset-1\nprelude " + srv.URL +
		"\nlogin password {env.IT_TEST_UNSET_EMAIL} {env.IT_TEST_SECRET_PW}"}
	caddytest.AssertLoadError(t, unset.String(), "caddyfile", "login email: evaluated placeholder {env.IT_TEST_UNSET_EMAIL} is empty")

	badURL := gateway{storage: dir, upstream: srv.URL, block: "session url-1\nprelude {env.IT_TEST_SECRET_PW}"}
	caddytest.AssertLoadError(t, badURL.String(), "caddyfile", "must start with http:// or https://")
}

// waitUntil polls cond until it holds, failing after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, what, 10*time.Second, cond)
}

// TestUpstreamAlways401IsBounded: an upstream that rejects every token (a
// wrong audience, a missing permission) gets its 401s passed on, and the
// refreshes they cause are rate-limited instead of one or two per request.
func TestUpstreamAlways401IsBounded(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(upstream.Close)
	began := time.Now() // before the session and its refresh budget exist
	tester := gateway{storage: t.TempDir(), upstream: upstream.URL, block: fmt.Sprintf(`session always-401
		prelude %s
		login password %s %s`, srv.URL, sandbox.DemoEmail, sandbox.DemoPassword)}.start(t)
	const requests = 12
	for i := range requests {
		if status, _, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil); status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want the upstream's 401", i, status)
		}
	}
	// Each request would otherwise refresh twice (its token, then the
	// retry's fresh one): 24 refreshes. The budget is a burst of 5 plus one
	// unit per 10 s the test took (a busy machine makes it take longer).
	allowed := int64(rejectRefreshBurst) + 1 + int64(time.Since(began)/rejectRefreshEvery)
	if got := srv.Stats().RefreshSuccesses; got > allowed {
		t.Fatalf("%d refreshes for %d rejected requests; want at most %d", got, requests, allowed)
	}
}
