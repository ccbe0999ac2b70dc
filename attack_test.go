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
	a := &adminClient{t: t}
	get := func() int {
		status, _, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
		return status
	}
	if s := get(); s != http.StatusOK {
		t.Fatalf("before logout: %d", s)
	}
	if st := a.call("POST", "/inject_token/sessions/cc-resume/logout", "", 200); st["configured_login"] != true {
		t.Fatalf("status does not offer the configured login: %v", st)
	}
	if s := get(); s != http.StatusServiceUnavailable {
		t.Fatalf("after logout: %d, want 503", s)
	}
	e := a.call("POST", "/inject_token/sessions/cc-resume/refresh", "", http.StatusConflict)
	const hint = "caddy inject-token login cc-resume"
	if msg, _ := e["error"].(string); !strings.HasSuffix(msg, hint) {
		t.Fatalf("refresh while logged out says %q; want it to end with %q", msg, hint)
	}

	// The admin API's login.
	before := issued.Load()
	if st := a.call("POST", "/inject_token/sessions/cc-resume/login", "", 200); st["state"] != "active" || st["auto_login"] != true {
		t.Fatalf("after login: %v", st)
	}
	if s := get(); s != http.StatusOK || issued.Load() != before+1 {
		t.Fatalf("after login: %d, %d tokens issued", s, issued.Load()-before)
	}

	// The CLI's, as the hint says it.
	a.call("POST", "/inject_token/sessions/cc-resume/logout", "", 200)
	out, err := runCLI("", strings.Fields(hint)[2:]...)
	if err != nil || !strings.Contains(out, "cc-resume") {
		t.Fatalf("%s: %v\n%s", hint, err, out)
	}
	if s := get(); s != http.StatusOK {
		t.Fatalf("after CLI login: %d", s)
	}
}
