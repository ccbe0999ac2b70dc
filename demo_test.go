package injecttoken

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// stop unloads every config, as stopping the process would: the sandbox
// and the sessions are released.
func stopCaddy(t *testing.T) {
	t.Helper()
	resp, err := http.Post(adminURL+"/load", "application/json", strings.NewReader(`{"admin":{"listen":"localhost:2999"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, ok := sandbox.Lookup("default"); ok {
		t.Fatal("the sandbox survived the unload: the restart would prove nothing")
	}
}

// TestDemoRestartKeepsSession: restarting Caddy on Caddyfile.example keeps
// the gateway's Prelude session: same sid, same user, no new login, and
// the restored sandbox accepts the stored refresh token.
func TestDemoRestartKeepsSession(t *testing.T) {
	d := exampleDemo(t, t.TempDir())
	d.Start(t)
	first := d.Whoami(t)
	sid, sub := first.Claims["sid"], first.Claims["sub"]
	if sid == nil || sub == nil {
		t.Fatalf("claims %v", first.Claims)
	}
	stopCaddy(t)

	d.Start(t)
	sb, ok := sandbox.Lookup("default")
	if !ok {
		t.Fatal("no sandbox after restart")
	}
	again := d.Whoami(t)
	// A forced refresh spends the refresh token stored before the restart.
	a := &adminClient{T: t}
	st := a.Call("POST", "/inject_token/sessions/demo/refresh", "", http.StatusOK)
	after := d.Whoami(t)
	if again.Claims["sid"] != sid || after.Claims["sid"] != sid || st["sid"] != sid || after.Claims["sub"] != sub {
		t.Fatalf("sid before restart %v, after %v, after refresh %v (status %v)", sid, again.Claims["sid"], after.Claims["sid"], st["sid"])
	}
	if s := sb.Stats(); s.Logins != 0 || s.RefreshSuccesses < 1 || s.ReuseEvents != 0 {
		t.Fatalf("after restart: %+v, want 0 logins, ≥1 refresh, no reuse", s)
	}
}
