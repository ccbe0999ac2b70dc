package injecttoken

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// TestValidateDoesNotLogIn: `caddy validate` provisions every module but
// starts no app, so a config with automatic login must not log in, refresh
// or write session state while being validated.
func TestValidateDoesNotLogIn(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	g := gateway{
		storage:  dir,
		block:    "session validate-only\nprelude " + srv.URL + "\nlogin password " + sandbox.DemoEmail + " " + sandbox.DemoPassword,
		upstream: srv.URL,
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfgJSON, warnings, err := adapter.Adapt([]byte(g.String()), nil)
	if err != nil {
		t.Fatalf("adapt: %v (%v)", err, warnings)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if st := srv.Stats(); st.Logins != 0 || st.RefreshCalls != 0 {
		t.Fatalf("validation talked to the token server: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, "inject_token", "validate-only", "state.json")); !os.IsNotExist(err) {
		t.Fatalf("validation wrote session state (stat: %v)", err)
	}
	if _, ok := lookupSession("validate-only"); ok {
		t.Fatal("validation left the session in the pool")
	}
}
