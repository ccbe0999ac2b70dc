package injecttoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// ccServer is a client_credentials token endpoint counting the tokens it
// issued, and an upstream that wants one of them.
func ccServer(t *testing.T) (as, upstream *httptest.Server, issued *atomic.Int64) {
	issued = new(atomic.Int64)
	as = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ParseForm() != nil || r.PostForm.Get("grant_type") != "client_credentials" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		n := issued.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("cc-token-%d", n), "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(as.Close)
	upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer cc-token-") {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(upstream.Close)
	return as, upstream, issued
}

// TestClientCredentialsResumesAfterLogout: an operator's logout of a
// client_credentials session is undone by `login` (admin API and CLI),
// and every hint on the way names that command, never --refresh-token or
// --email, which cannot work for this grant.
func TestClientCredentialsResumesAfterLogout(t *testing.T) {
	as, upstream, issued := ccServer(t)
	t.Setenv("IT_CC_SECRET", "cc-secret")
	tester := startConfig(t, siteConfig(t.TempDir(), fmt.Sprintf(`inject_token {
		session cc-resume
		oauth2 %s/token {
			client_id gw
			client_secret {env.IT_CC_SECRET}
		}
		dpop off
	}
	reverse_proxy %s`, as.URL, upstream.URL)))
	a := &adminClient{T: t}
	get := func() int {
		status, _, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
		return status
	}
	if s := get(); s != http.StatusOK {
		t.Fatalf("before logout: %d", s)
	}
	if st := a.Call("POST", "/inject_token/sessions/cc-resume/logout", "", 200); st["configured_login"] != true {
		t.Fatalf("status does not offer the configured login: %v", st)
	}
	if s := get(); s != http.StatusServiceUnavailable {
		t.Fatalf("after logout: %d, want 503", s)
	}
	e := a.Call("POST", "/inject_token/sessions/cc-resume/refresh", "", http.StatusConflict)
	const hint = "caddy inject-token login cc-resume"
	if msg, _ := e["error"].(string); !strings.HasSuffix(msg, hint) {
		t.Fatalf("refresh while logged out says %q; want it to end with %q", msg, hint)
	}

	// The admin API's login.
	before := issued.Load()
	if st := a.Call("POST", "/inject_token/sessions/cc-resume/login", "", 200); st["state"] != "active" || st["auto_login"] != true {
		t.Fatalf("after login: %v", st)
	}
	if s := get(); s != http.StatusOK || issued.Load() != before+1 {
		t.Fatalf("after login: %d, %d tokens issued", s, issued.Load()-before)
	}

	// The CLI's, as the hint says it.
	a.Call("POST", "/inject_token/sessions/cc-resume/logout", "", 200)
	out, err := runCLI("", strings.Fields(hint)[2:]...)
	if err != nil || !strings.Contains(out, "cc-resume") {
		t.Fatalf("%s: %v\n%s", hint, err, out)
	}
	if s := get(); s != http.StatusOK {
		t.Fatalf("after CLI login: %d", s)
	}
}

// ccSite is a Caddyfile site whose session cc-NAME logs in with
// client_credentials at as (client secret written as given) and proxies
// to upstream.
func ccSite(name, asURL, secret, upstream string) string {
	return fmt.Sprintf(`inject_token {
		session %s
		oauth2 %s/token {
			client_id gw
			client_secret %s
		}
		dpop off
	}
	reverse_proxy %s`, name, asURL, secret, upstream)
}

// TestTransportOnlyRefusesCrossSite: a transport used without a handler
// refuses a browser's cross-site request like the handler does by default,
// before any token is taken; other clients pass.
func TestTransportOnlyRefusesCrossSite(t *testing.T) {
	as, upstream, _ := ccServer(t)
	var seen atomic.Int64
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		upstream.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(counting.Close)
	t.Setenv("IT_CC_SECRET", "cc-secret")
	tester := startConfig(t, globals(t.TempDir())+fmt.Sprintf(`http://localhost:9081 {
	%s
}
http://localhost:9080 {
	reverse_proxy %s {
		transport inject_token {
			session cc-transport
		}
	}
}
`, ccSite("cc-transport", as.URL, "{env.IT_CC_SECRET}", counting.URL), strings.TrimPrefix(counting.URL, "http://")))
	if s, _, b := do(t, tester.Client, http.MethodPost, "http://localhost:9080/x", []byte("a=1")); s != http.StatusOK {
		t.Fatalf("legacy client: %d %s", s, b)
	}
	before := seen.Load()
	s, _, b := do(t, tester.Client, http.MethodPost, "http://localhost:9080/x", []byte("a=1"),
		"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain")
	var e forbiddenJSON
	if s != http.StatusForbidden || json.Unmarshal(b, &e) != nil || e.Session != "cc-transport" {
		t.Fatalf("cross-site POST through the transport: %d %s, want the 403 refusal", s, b)
	}
	if n := seen.Load() - before; n != 0 {
		t.Fatalf("refused, yet the upstream saw %d requests", n)
	}
}

// TestRejected401sLogOneLine: an upstream rejecting every token makes one
// WARN line per session and interval, with the count of 401s it stands
// for, not one line per 401.
func TestRejected401sLogOneLine(t *testing.T) {
	as, _, _ := ccServer(t)
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(refusing.Close)
	dir := t.TempDir()
	g, logs := logFile(t, dir)
	t.Setenv("IT_CC_SECRET", "cc-secret")
	tester := startConfig(t, g+"http://localhost:9080 {\n"+ccSite("cc-401", as.URL, "{env.IT_CC_SECRET}", refusing.URL)+"\n}\n")
	const requests = 40
	for range requests {
		if s, _, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil); s != http.StatusUnauthorized {
			t.Fatalf("status %d, want the upstream's 401", s)
		}
	}
	var lines []map[string]any
	for _, e := range logs() {
		if msg, _ := e["msg"].(string); strings.HasPrefix(msg, "upstream keeps rejecting") && e["session"] == "cc-401" {
			lines = append(lines, e)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d warning lines for %d rejected requests; want one per interval", len(lines), requests)
	}
	if n, _ := lines[0]["count"].(float64); n < 1 {
		t.Fatalf("the line carries no count: %v", lines[0])
	}
}

// TestLiteralSecretWarnedOnce: a client secret written into the Caddyfile
// is warned about at load, once, naming the placeholder to use; a
// placeholder is not.
func TestLiteralSecretWarnedOnce(t *testing.T) {
	as, upstream, _ := ccServer(t)
	dir := t.TempDir()
	g, logs := logFile(t, dir)
	t.Setenv("IT_CC_SECRET", "cc-secret")
	cfg := g + "http://localhost:9080 {\n" + ccSite("cc-literal", as.URL, "literal-cc-secret", upstream.URL) + "\n}\n" +
		"http://localhost:9081 {\n" + ccSite("cc-placeholder", as.URL, "{env.IT_CC_SECRET}", upstream.URL) + "\n}\n"
	startConfig(t, cfg)
	startConfig(t, cfg) // a reload
	var warned []map[string]any
	for _, e := range logs() {
		if msg, _ := e["msg"].(string); strings.HasPrefix(msg, "literal secret") {
			warned = append(warned, e)
		}
		if strings.Contains(fmt.Sprint(e), "literal-cc-secret") {
			t.Fatalf("the log shows the secret: %v", e)
		}
	}
	if len(warned) != 1 || warned[0]["session"] != "cc-literal" || !strings.Contains(fmt.Sprint(warned[0]["instead"]), "{env.") {
		t.Fatalf("warnings: %v; want one, for cc-literal, naming an {env.…} placeholder", warned)
	}
}

// TestUnusableTokenIsBackendError: a login whose server issues a token
// that cannot be sent answers 502 backend_error, as documented, not 500.
func TestUnusableTokenIsBackendError(t *testing.T) {
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "abc, Basic Zm9vOmJhcg==", "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(as.Close)
	startConfig(t, siteConfig(t.TempDir(), fmt.Sprintf(`inject_token {
		session rt-bad
		oauth2 %s/token {
			client_id gw
			grant refresh_token
			auth none
		}
		dpop off
	}
	respond "x"`, as.URL)))
	a := &adminClient{T: t}
	e := a.Call("POST", "/inject_token/sessions/rt-bad/login/refresh-token", `{"refresh_token":"rt-1"}`, http.StatusBadGateway)
	if e["code"] != "backend_error" {
		t.Fatalf("answer %v, want code backend_error", e)
	}
}
