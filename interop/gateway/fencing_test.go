//go:build unix

package gateway_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TestTwoProcessesSurviveAFrozenLockHolder is the fencing drill with real
// parts: two Caddy processes share one file_system storage and one session.
// Instance A is frozen (SIGSTOP) while its refresh is at the token server,
// holding the storage lock, for longer than the lock's staleness (10 s).
// B takes the stale lock, finds A's unresolved intent, gives that refresh
// token up and logs in again. A is resumed: its late answer must not be
// written over B's newer session, no refresh token may be presented twice,
// and both instances must go on serving the one live session.
func TestTwoProcessesSurviveAFrozenLockHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("two-process drill: takes ~15 s of real time for the lock to go stale")
	}
	t.Parallel()
	bin := buildCaddy(t)
	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: 10 * time.Minute})
	dir := t.TempDir()
	a := startCaddy(t, bin, "A", dir, srv.URL)
	waitActive(t, a)
	b := startCaddy(t, bin, "B", dir, srv.URL)
	waitActive(t, b)
	a.whoami(t)
	b.whoami(t)

	// A's refresh reaches the token server and stays there 4 s; A is
	// frozen meanwhile, with the storage lock held.
	srv.SetRefreshLatency(4 * time.Second)
	calls := srv.Stats().RefreshCalls
	aDone := make(chan error, 1)
	go func() { aDone <- a.post("/refresh") }()
	gatewaytest.WaitWithin(t, "A's refresh at the token server", 30*time.Second, func() bool { return srv.Stats().RefreshCalls > calls })
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	a.stopped = true
	srv.SetRefreshLatency(0)

	// B waits out the stale lock (10 s), then resolves A's intent: the token
	// may be spent, so it logs in anew instead of presenting it.
	if err := b.post("/refresh"); err != nil {
		t.Fatalf("B: %v", err)
	}
	bStatus := b.status(t)
	if bStatus.State != tokencache.StateActive {
		t.Fatalf("B after taking over: %+v", bStatus)
	}

	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	a.stopped = false
	select {
	case <-aDone:
	case <-time.After(60 * time.Second):
		t.Fatal("A's refresh did not finish after resuming")
	}

	if n := srv.Stats().ReuseEvents; n != 0 {
		t.Fatalf("%d refresh-token reuse events: the session was revoked", n)
	}
	stored := storedSID(t, dir)
	if stored != bStatus.SessionID {
		t.Fatalf("storage holds session %s, B logged in %s: the resumed instance overwrote newer state", stored, bStatus.SessionID)
	}
	gatewaytest.WaitWithin(t, "A to follow storage", 30*time.Second, func() bool {
		st := a.status(t)
		return st.State == tokencache.StateActive && st.SessionID == stored
	})
	a.whoami(t)
	b.whoami(t)
	// A's answer either arrives (its tokens are dropped) or, under load,
	// arrives after A's client timeout (its "lost response" is not written
	// either): both are the fence at work.
	if l := a.logs(); !strings.Contains(l, "storage moved on") && !strings.Contains(l, "held the storage lock") {
		t.Fatalf("A's late answer was not fenced off; A's log:\n%s", a.logs())
	}
}

// buildCaddy builds ./cmd/caddy once for the test, or uses the xcaddy
// build of this checkout that .ci/run makes (it has every module the drill
// loads), which saves CI a second full Caddy build.
func buildCaddy(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("XCADDY_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/tokenwarden/caddy-inject-token/cmd/caddy").CombinedOutput()
	if err != nil {
		t.Skipf("\n\n*** SKIPPING the two-process fencing drill: cannot build ./cmd/caddy: %v\n%s\n", err, out)
	}
	return bin
}

// caddyProc is one Caddy process of the drill.
type caddyProc struct {
	name    string
	cmd     *exec.Cmd
	admin   string // host:port
	http    string // base URL
	out     *interop.SyncBuffer
	stopped bool
}

func startCaddy(t *testing.T, bin, name, storage, prelude string) *caddyProc {
	t.Helper()
	p := &caddyProc{name: name, admin: "127.0.0.1:" + gatewaytest.FreePort(t), out: &interop.SyncBuffer{}}
	httpPort := gatewaytest.FreePort(t)
	p.http = "http://127.0.0.1:" + httpPort
	home := t.TempDir()
	conf := fmt.Sprintf(`{
	admin %s
	storage file_system %s
	persist_config off
}
http://127.0.0.1:%s {
	bind 127.0.0.1
	route {
		inject_token {
			session fence
			prelude %s
			login password %s %s
		}
		rewrite * /whoami
		reverse_proxy %s
	}
}
`, p.admin, storage, httpPort, prelude, sandbox.DemoEmail, sandbox.DemoPassword, strings.TrimPrefix(prelude, "http://"))
	file := filepath.Join(home, "Caddyfile")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.stopped {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		if t.Failed() {
			t.Logf("--- log of instance %s ---\n%s", p.name, p.logs())
		}
	})
	return p
}

// logs is the process's output so far.
func (p *caddyProc) logs() string { return p.out.String() }

func (p *caddyProc) post(path string) error {
	cl := &http.Client{Timeout: 90 * time.Second}
	resp, err := cl.Post("http://"+p.admin+"/inject_token/sessions/fence"+path, "application/json", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: POST %s: %d %s", p.name, path, resp.StatusCode, body)
	}
	return nil
}

func (p *caddyProc) status(t *testing.T) tokencache.Status {
	t.Helper()
	var st tokencache.Status
	resp, err := http.Get("http://" + p.admin + "/inject_token/sessions/fence")
	if err != nil {
		return st
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return st
}

func (p *caddyProc) whoami(t *testing.T) {
	t.Helper()
	resp, err := http.Get(p.http + "/")
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: upstream answered %d %s", p.name, resp.StatusCode, body)
	}
}

func waitActive(t *testing.T, p *caddyProc) {
	t.Helper()
	gatewaytest.WaitWithin(t, p.name+" active", 60*time.Second, func() bool { return p.status(t).State == tokencache.StateActive })
}

// storedSID is the sid claim of the access token in the stored session.
func storedSID(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "inject_token", "fence", "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(rec.AccessToken, ".")
	if len(parts) != 3 {
		t.Fatalf("stored access token is not a JWT")
	}
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct {
		SID string `json:"sid"`
	}
	_ = json.Unmarshal(raw, &claims)
	return claims.SID
}
