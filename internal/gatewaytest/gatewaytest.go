// Package gatewaytest drives an in-process Caddy with inject_token for
// tests: the root package's tests and the nested interop module's (which
// may import this internal package: its path lies under this module's).
//
// Every config listens on the tester's admin address, localhost:2999, shared
// by the whole test binary: tests that use it do not run in parallel.
package gatewaytest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// AdminURL is the in-process Caddy's admin endpoint.
const AdminURL = "http://localhost:2999"

// Globals are the global options of every test config: the tester's admin
// address, test ports, and storage in the test's own directory.
func Globals(storage string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	skip_install_trust
	storage file_system %s
}
`, storage)
}

// StartConfig loads a Caddyfile into the in-process Caddy and, when the
// test ends (before its temp dirs are removed), unloads it so no session
// keeps writing there.
func StartConfig(t *testing.T, caddyfile string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(caddyfile, "caddyfile")
	t.Cleanup(func() {
		resp, err := http.Post(AdminURL+"/load", "application/json",
			strings.NewReader(`{"admin":{"listen":"localhost:2999"}}`))
		if err != nil {
			t.Errorf("unloading config: %v", err)
			return
		}
		resp.Body.Close()
	})
	return tester
}

// Whoami is the sandbox's /whoami answer.
type Whoami struct {
	Claims  map[string]any    `json:"claims"`
	Headers map[string]string `json:"headers"`
}

// Do sends a request and returns status, headers and body; hdr holds
// header name, value pairs.
func Do(t *testing.T, c *http.Client, method, url string, body []byte, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// AdminClient calls the admin API, records every answer for the secrets
// check, and decodes the JSON answer into a map.
type AdminClient struct {
	T       *testing.T
	mu      sync.Mutex
	answers [][]byte
}

// Call sends one admin request and fails the test unless the answer has
// wantStatus and is JSON. An Inject-Token-Code header lands in m["code"].
func (a *AdminClient) Call(method, path, body string, wantStatus int) map[string]any {
	a.T.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	status, hdr, out := Do(a.T, http.DefaultClient, method, AdminURL+path, b, "Content-Type", "application/json")
	a.mu.Lock()
	a.answers = append(a.answers, out)
	a.mu.Unlock()
	if status != wantStatus {
		a.T.Fatalf("%s %s: status %d, want %d; body %s", method, path, status, wantStatus, out)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		a.T.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		a.T.Fatalf("%s %s: %v in %s", method, path, err, out)
	}
	if code := hdr.Get("Inject-Token-Code"); code != "" {
		m["code"] = code
	}
	return m
}

// AssertNoSecrets fails if any admin answer so far contains a secret.
func (a *AdminClient) AssertNoSecrets(secrets ...string) {
	a.T.Helper()
	for _, ans := range a.answers {
		for _, s := range secrets {
			if s != "" && bytes.Contains(ans, []byte(s)) {
				a.T.Fatalf("admin answer contains a secret: %s", ans)
			}
		}
	}
}

// Stored reads a session's state record from file storage.
func Stored(t *testing.T, dir, session string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "inject_token", session, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// FreePort returns a loopback port nothing listens on right now.
func FreePort(t *testing.T) string {
	t.Helper()
	// Below the kernel's ephemeral range (32768–60999 by default): a port
	// taken from that range with :0 and closed again could be handed to
	// any outgoing connection (a Redis client, an HTTP client) or to
	// another :0 listener before the Caddy under test binds it — the
	// cause of a rare "address already in use" in the drills.
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return fmt.Sprint(port)
	}
	t.Fatal("no free loopback port in 20000-31999")
	return ""
}

// WaitWithin polls cond until it holds, failing the test after d.
func WaitWithin(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		<-tick.C
	}
}

// Demo is Caddyfile.example adapted to the test: the test admin address,
// free loopback ports and storage in a temp dir.
type Demo struct {
	Config                               string
	Sandbox, Gateway, Dashboard, PerUser string // base URLs
}

// ExampleDemo reads the Caddyfile.example at path and adapts it.
func ExampleDemo(t *testing.T, path, storage string) Demo {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sb, gw, db, pu := FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	root, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"admin localhost:2019", "admin localhost:2999\n\thttp_port 9080\n\thttps_port 9443\n\tskip_install_trust",
		"./.demo-data", storage,
		"127.0.0.1:9090", "127.0.0.1:"+sb,
		"127.0.0.1:8080", "127.0.0.1:"+gw,
		"127.0.0.1:8081", "127.0.0.1:"+db,
		"127.0.0.1:8082", "127.0.0.1:"+pu,
		"{file.contrib/", "{file."+root+"/contrib/",
	).Replace(string(b))
	for _, want := range []string{storage, sb, gw, db, pu, root, "localhost:2999"} {
		if !strings.Contains(cfg, want) {
			t.Fatalf("Caddyfile.example changed shape: %q not substituted", want)
		}
	}
	return Demo{Config: cfg, Sandbox: "http://127.0.0.1:" + sb, Gateway: "http://127.0.0.1:" + gw,
		Dashboard: "http://127.0.0.1:" + db, PerUser: "http://127.0.0.1:" + pu}
}

// Start loads the demo into the in-process Caddy and waits for its session
// to be active: the demo logs in by itself, in the background, and its
// first attempt may run before the sandbox site listens (then it retries
// after a short backoff).
func (d Demo) Start(t *testing.T) *caddytest.Tester {
	t.Helper()
	tester := StartConfig(t, d.Config)
	a := &AdminClient{T: t}
	WaitWithin(t, "the demo session to be active", 30*time.Second, func() bool {
		return a.Call("GET", "/inject_token/sessions/demo", "", http.StatusOK)["state"] == "active"
	})
	return tester
}

// Whoami asks the sandbox's /whoami through the demo gateway.
func (d Demo) Whoami(t *testing.T) Whoami {
	t.Helper()
	status, _, body := Do(t, http.DefaultClient, http.MethodGet, d.Gateway+"/", nil)
	if status != http.StatusOK {
		t.Fatalf("GET through the demo gateway: %d %s", status, body)
	}
	var w Whoami
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	return w
}

// OtherDevice is a second session of a sandbox user, logged in directly
// with the Prelude client as another device would.
type OtherDevice struct {
	SID string // the sid claim of its first access token
	cl  *prelude.Client
	key *dpop.Key
	rt  string
}

// NewSandboxLogin logs email in at the sandbox at baseURL with the default
// one-time code.
func NewSandboxLogin(t *testing.T, baseURL, email string) *OtherDevice {
	t.Helper()
	ctx := context.Background()
	cl, err := prelude.New(baseURL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	vt, err := cl.StartOTP(ctx, prelude.EmailIdentifier(email))
	if err != nil {
		t.Fatal(err)
	}
	challenge, err := cl.CheckOTP(ctx, vt, sandbox.DefaultOTPCode)
	if err != nil {
		t.Fatal(err)
	}
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := cl.Finalize(ctx, key, challenge, "")
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		SID string `json:"sid"`
	}
	parts := strings.Split(toks.AccessToken, ".")
	if len(parts) != 3 {
		t.Fatal("access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.SID == "" {
		t.Fatalf("no sid in the access token: %v", err)
	}
	return &OtherDevice{SID: claims.SID, cl: cl, key: key, rt: toks.RefreshToken}
}

// Revoked reports whether the device's session can no longer refresh.
func (d *OtherDevice) Revoked() bool {
	_, err := d.cl.Refresh(context.Background(), d.key, d.rt)
	return errors.Is(err, tokencache.ErrSessionDead) || err != nil && strings.Contains(err.Error(), "unauthorized")
}
