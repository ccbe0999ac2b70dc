package injecttoken

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// demo is Caddyfile.example adapted to the test: the test admin address,
// free loopback ports and storage in a temp dir.
type demo struct {
	config                      string
	sandbox, gateway, dashboard string // base URLs
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

func exampleDemo(t *testing.T, storage string) demo {
	t.Helper()
	b, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	sb, gw, db := freePort(t), freePort(t), freePort(t)
	cfg := strings.NewReplacer(
		"admin localhost:2019", "admin localhost:2999\n\thttp_port 9080\n\thttps_port 9443\n\tskip_install_trust",
		"./.demo-data", storage,
		"127.0.0.1:9090", "127.0.0.1:"+sb,
		"127.0.0.1:8080", "127.0.0.1:"+gw,
		"127.0.0.1:8081", "127.0.0.1:"+db,
	).Replace(string(b))
	for _, want := range []string{storage, sb, gw, db, "localhost:2999"} {
		if !strings.Contains(cfg, want) {
			t.Fatalf("Caddyfile.example changed shape: %q not substituted", want)
		}
	}
	return demo{config: cfg, sandbox: "http://127.0.0.1:" + sb, gateway: "http://127.0.0.1:" + gw, dashboard: "http://127.0.0.1:" + db}
}

// start loads the demo into the in-process Caddy and waits for its session
// to be active: the demo logs in by itself, in the background, and its
// first attempt may run before the sandbox site listens (then it retries
// after a short backoff).
func (d demo) start(t *testing.T) *caddytest.Tester {
	t.Helper()
	tester := startConfig(t, d.config)
	a := &adminClient{t: t}
	waitWithin(t, "the demo session to be active", 30*time.Second, func() bool {
		return a.call("GET", "/inject_token/sessions/demo", "", http.StatusOK)["state"] == "active"
	})
	return tester
}

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

func (d demo) whoami(t *testing.T) whoami {
	t.Helper()
	status, _, body := do(t, http.DefaultClient, http.MethodGet, d.gateway+"/", nil)
	if status != http.StatusOK {
		t.Fatalf("GET through the demo gateway: %d %s", status, body)
	}
	var w whoami
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	return w
}

// TestDemoRestartKeepsSession: restarting Caddy on Caddyfile.example keeps
// the gateway's Prelude session: same sid, same user, no new login, and
// the restored sandbox accepts the stored refresh token.
func TestDemoRestartKeepsSession(t *testing.T) {
	d := exampleDemo(t, t.TempDir())
	d.start(t)
	first := d.whoami(t)
	sid, sub := first.Claims["sid"], first.Claims["sub"]
	if sid == nil || sub == nil {
		t.Fatalf("claims %v", first.Claims)
	}
	stopCaddy(t)

	d.start(t)
	sb, ok := sandbox.Lookup("default")
	if !ok {
		t.Fatal("no sandbox after restart")
	}
	again := d.whoami(t)
	// A forced refresh spends the refresh token stored before the restart.
	a := &adminClient{t: t}
	st := a.call("POST", "/inject_token/sessions/demo/refresh", "", http.StatusOK)
	after := d.whoami(t)
	if again.Claims["sid"] != sid || after.Claims["sid"] != sid || st["sid"] != sid || after.Claims["sub"] != sub {
		t.Fatalf("sid before restart %v, after %v, after refresh %v (status %v)", sid, again.Claims["sid"], after.Claims["sid"], st["sid"])
	}
	if s := sb.Stats(); s.Logins != 0 || s.RefreshSuccesses < 1 || s.ReuseEvents != 0 {
		t.Fatalf("after restart: %+v, want 0 logins, ≥1 refresh, no reuse", s)
	}
}
