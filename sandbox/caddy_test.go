package sandbox

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := []struct {
		input   string
		want    Handler
		wantErr bool
	}{
		{input: `prelude_sandbox`, want: Handler{}},
		{input: `prelude_sandbox {
			name demo
			access_token_ttl 90s
			require_nonce
			step_up_granted_for 5m
		}`, want: Handler{Name: "demo", AccessTokenTTL: caddy.Duration(90 * time.Second), RequireNonce: true, StepUpGrantedFor: caddy.Duration(5 * time.Minute)}},
		{input: `prelude_sandbox { step_up_granted_for later }`, wantErr: true},
		{input: `prelude_sandbox { step_up_granted_for -1s }`, wantErr: true},
		{input: `prelude_sandbox inline`, wantErr: true},
		{input: `prelude_sandbox { colour blue }`, wantErr: true},
		{input: `prelude_sandbox { access_token_ttl soon }`, wantErr: true},
		{input: `prelude_sandbox { access_token_ttl 500ms }`, wantErr: true},
		{input: `prelude_sandbox { access_token_ttl }`, wantErr: true},
		{input: `prelude_sandbox { name a b }`, wantErr: true},
		{input: "prelude_sandbox {\nname a\nname b\n}", wantErr: true},
		{input: `prelude_sandbox { require_nonce yes }`, wantErr: true},
	}
	for _, tc := range cases {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v, wantErr %v", tc.input, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && (h.Name != tc.want.Name || h.AccessTokenTTL != tc.want.AccessTokenTTL || h.RequireNonce != tc.want.RequireNonce || h.StepUpGrantedFor != tc.want.StepUpGrantedFor) {
			t.Errorf("%q: got %+v, want %+v", tc.input, h, tc.want)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// loadCaddyfile runs text as the process's Caddy config. Admin is off so
// parallel test binaries of other packages cannot collide on its port.
func loadCaddyfile(t *testing.T, text string) {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("adapter warnings: %v", warnings)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading: %v", err)
	}
}

func TestCaddyModule(t *testing.T) {
	// Keep Caddy's data and config directories out of the user's home.
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	config := func(ttl string) string {
		return fmt.Sprintf(`{
	admin off
	persist_config off
	log {
		output discard
	}
}
%s {
	prelude_sandbox {
		name caddy-test
		access_token_ttl %s
	}
	respond /health "ok" 200
}
`, base, ttl)
	}
	loadCaddyfile(t, config("5m"))
	t.Cleanup(func() { _ = caddy.Stop() })

	cl := newClient(t, base)
	token, access := cl.login("caddy@example.com", "")
	token, access = cl.mustRefresh(token)
	sb, ok := Lookup("caddy-test")
	if !ok {
		t.Fatal("sandbox not in the registry")
	}
	c, err := sb.VerifyAccessToken(access)
	if err != nil {
		t.Fatal(err)
	}
	if c.Issuer != base || c.Expiry.Time().Sub(c.IssuedAt.Time()) != 5*time.Minute {
		t.Errorf("claims = %+v, want iss %s and a 5m lifetime", c, base)
	}
	if st := sb.Stats(); st.Logins != 1 || st.RefreshSuccesses != 1 {
		t.Errorf("stats = %+v", st)
	}
	// Paths outside the API go on down the route; typos inside it do not.
	if r := call(t, "GET", base+"/health", nil, ""); r.Status != http.StatusOK || string(r.Body) != "ok" {
		t.Errorf("/health = %v", r)
	}
	expect(t, call(t, "GET", base+"/v1/session/nope", nil, ""), http.StatusNotFound, "not_found")
	expect(t, call(t, "GET", base+"/v1/session/refresh", nil, ""), http.StatusMethodNotAllowed, "method_not_allowed")

	// A reload keeps users, sessions and keys, and applies the new TTL.
	loadCaddyfile(t, config("2m"))
	// The old config's server closes its keep-alive connections, and a POST
	// on a closed one is not retried.
	http.DefaultClient.CloseIdleConnections()
	if again, _ := Lookup("caddy-test"); again != sb {
		t.Fatal("reload replaced the sandbox")
	}
	token, access = cl.mustRefresh(token)
	if c, err := sb.VerifyAccessToken(access); err != nil || c.Expiry.Time().Sub(c.IssuedAt.Time()) != 2*time.Minute {
		t.Errorf("after reload: claims %+v, err %v", c, err)
	}
	expect(t, cl.dpopCall("POST", "/v1/session/revoke", http.Header{"X-Refresh-Token": {token}}, ""), http.StatusNoContent, "")
	expect(t, cl.refresh(token), http.StatusUnauthorized, "unauthorized")
}

// TestCaddyfileDurationErrorNamesSubdirective: a bad duration's error says
// which subdirective and which line.
func TestCaddyfileDurationErrorNamesSubdirective(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("prelude_sandbox {\n\tstep_up_granted_for later\n}"))
	if err == nil || !strings.Contains(err.Error(), `invalid step_up_granted_for "later"`) || !strings.Contains(err.Error(), ":2") {
		t.Fatalf("err = %v", err)
	}
}
