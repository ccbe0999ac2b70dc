package gateway_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// startPerUserCaddy starts a Caddy process with a per-user site in front of
// the sandbox at prelude, on storage, and returns its base URL.
func startPerUserCaddy(t *testing.T, bin, name, storage, prelude string) string {
	t.Helper()
	port := gatewaytest.FreePort(t)
	home := t.TempDir()
	conf := fmt.Sprintf(`{
	admin 127.0.0.1:%s
	storage file_system %s
	persist_config off
}
http://127.0.0.1:%s {
	bind 127.0.0.1
	inject_token {
		template users
		prelude %s
		seal_key {env.IT_SEAL_KEY}
		per_user {
			identity_header X-Forwarded-User sub
		}
	}
	reverse_proxy %s {
		rewrite /whoami
	}
}
`, gatewaytest.FreePort(t), storage, port, prelude, strings.TrimPrefix(prelude, "http://"))
	file := filepath.Join(home, "Caddyfile")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &interop.SyncBuffer{}
	cmd := exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home,
		"IT_SEAL_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("--- log of instance %s ---\n%s", name, out.String())
		}
	})
	base := "http://127.0.0.1:" + port
	gatewaytest.WaitWithin(t, name+" listening", 60*time.Second, func() bool {
		resp, err := http.Get(base + "/.inject_token/login")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

// TestPerUserTwoCaddyProcesses: two Caddy processes on one storage and one
// seal key: a user who logged in through one is served by the other, as
// the same user with the same session, with no new login; a logout
// through the other ends the login on both.
func TestPerUserTwoCaddyProcesses(t *testing.T) {
	bin := buildCaddy(t)
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	sub := srv.AddUser("alice@example.com", "alice-password")
	storage := t.TempDir()
	a := startPerUserCaddy(t, bin, "A", storage, srv.URL)
	b := startPerUserCaddy(t, bin, "B", storage, srv.URL)

	// Cookies are not port-bound: one jar is one browser that a load
	// balancer sends to either instance.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	status, _, page := gatewaytest.Do(t, c, "GET", a+"/.inject_token/login", nil)
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(page))
	if status != 200 || m == nil {
		t.Fatalf("login page: %d %s", status, page)
	}
	form := url.Values{"csrf": {m[1]}, "email": {"alice@example.com"}, "password": {"alice-password"}}
	status, _, body := gatewaytest.Do(t, c, "POST", a+"/.inject_token/login/password", []byte(form.Encode()),
		"Content-Type", "application/x-www-form-urlencoded", "Origin", a)
	if status != http.StatusSeeOther {
		t.Fatalf("login through A: %d %s", status, body)
	}
	var sid any
	for _, base := range []string{a, b, a, b} {
		status, _, body := gatewaytest.Do(t, c, "GET", base+"/", nil)
		var w gatewaytest.Whoami
		if status != 200 || json.Unmarshal(body, &w) != nil || w.Claims["sub"] != sub || w.Headers["X-Forwarded-User"] != sub {
			t.Fatalf("%s: %d %s", base, status, body)
		}
		if sid != nil && w.Claims["sid"] != sid {
			t.Fatalf("%s serves session %v, the other %v", base, w.Claims["sid"], sid)
		}
		sid = w.Claims["sid"]
	}
	if st := srv.Stats(); st.Logins != 1 {
		t.Fatalf("sandbox logins: %+v", st)
	}

	// Log out through B.
	status, _, page = gatewaytest.Do(t, c, "GET", b+"/.inject_token/", nil)
	m = regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(page))
	if status != 200 || m == nil {
		t.Fatalf("user's page on B: %d %s", status, page)
	}
	status, _, _ = gatewaytest.Do(t, c, "POST", b+"/.inject_token/logout", []byte(url.Values{"csrf": {m[1]}}.Encode()),
		"Content-Type", "application/x-www-form-urlencoded", "Origin", b)
	if status != http.StatusSeeOther {
		t.Fatalf("logout through B: %d", status)
	}
	for _, base := range []string{a, b} {
		resp, err := c.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("%s after logout: %d", base, resp.StatusCode)
		}
	}
}
