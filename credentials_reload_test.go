package injecttoken

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Issue 8, wrong credentials: a configured password the server refuses
// ends in login_failed after a few attempts with one ERROR line; a reload
// that keeps the same wrong password does not resume automatic login, a
// reload with the right one does.
func TestWrongPasswordPausesUntilReloadChangesIt(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	globalsWithLog, logs := logFile(t, dir)
	config := func(password, header string) string {
		g := gateway{storage: dir, upstream: srv.URL, extra: "header X-Config " + header,
			block: fmt.Sprintf("session creds\n\t\tprelude %s\n\t\tlogin password %s %s", srv.URL, sandbox.DemoEmail, password)}
		return strings.Replace(g.String(), globals(dir), globalsWithLog, 1)
	}
	tester := startConfig(t, config("wrong-password", "1"))
	a := &adminClient{T: t}
	status := func() map[string]any { return a.Call("GET", "/inject_token/sessions/creds", "", http.StatusOK) }
	pausedLines := func() (n int) {
		for _, l := range logs() {
			if l["level"] == "error" && l["session"] == "creds" && strings.Contains(l["msg"].(string), "automatic login is paused") {
				n++
			}
		}
		return n
	}
	waitUntil(t, "login_failed", func() bool { return status()["state"] == tokencache.StateLoginFailed })
	if n := pausedLines(); n != 1 {
		t.Fatalf("%d ERROR lines about the rejected credentials; want 1", n)
	}
	if st := status(); st["auto_login"] != false || !strings.Contains(fmt.Sprint(st["last_error"]), "401") {
		t.Errorf("login_failed status %v", st)
	}
	refused := srv.Stats().Rejections

	// The same wrong password in a new config: still paused, at once.
	tester.InitServer(config("wrong-password", "2"), "caddyfile")
	if st := status(); st["state"] != tokencache.StateLoginFailed || st["auto_login"] != false {
		t.Fatalf("a reload with the same wrong password resumed: %v", st)
	}
	if now := srv.Stats().Rejections; fmt.Sprint(now) != fmt.Sprint(refused) {
		t.Errorf("the same wrong password was tried again: rejections %v, were %v", now, refused)
	}

	// The right password: automatic login resumes and succeeds.
	tester.InitServer(config(sandbox.DemoPassword, "3"), "caddyfile")
	waitUntil(t, "active after the password changed", func() bool { return status()["state"] == tokencache.StateActive })
	if st := status(); st["sub"] == nil || st["auto_login"] != true {
		t.Errorf("active status %v", st)
	}
	if got, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/whoami", nil); got != http.StatusOK {
		t.Errorf("request after the reload: %d %s", got, body)
	}
	if n := pausedLines(); n != 1 {
		t.Errorf("%d ERROR lines about the rejected credentials in all; want 1", n)
	}
}
