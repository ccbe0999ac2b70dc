package drills

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// binDir holds the Caddy the drills run, built once per test binary.
var (
	binDir   string
	buildOne sync.Once
	binPath  string
	buildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drills-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// caddyBinary builds interop/cmd/caddy-redis (without -race: the drills
// test the protocol between processes; the engine's races are the unit
// tests' job, and three race-built Caddies would crowd two cores).
func caddyBinary(t *testing.T) string {
	t.Helper()
	buildOne.Do(func() {
		start := time.Now()
		defer func() { t.Logf("built caddy-redis in %v", time.Since(start).Round(time.Millisecond)) }()
		binPath = filepath.Join(binDir, "caddy-redis")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/tokenwarden/caddy-inject-token/interop/cmd/caddy-redis")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build caddy-redis: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// The session every drill shares, and its lock's key in Redis.
const (
	sessionName = "drill"
	keyPrefix   = "drill"
	lockKey     = keyPrefix + "/locks/inject_token_" + sessionName
	recordKey   = keyPrefix + "/inject_token/" + sessionName + "/state.json"
)

// clusterOptions shape one drill's cluster.
type clusterOptions struct {
	instances     int
	ttl           time.Duration // access-token lifetime at the sandbox
	refreshBefore time.Duration
	persist       bool          // Redis append-only file
	lockTTL       time.Duration // lease; default 5s (the module's)
	redisTimeout  time.Duration // per Redis read/write; default 3s (go-redis's), below the lease
	// template, when set, makes the nodes serve that template's sessions
	// by X-User (templates_test.go) instead of the one named session.
	template string
	// fileStorage, when set, is a file_system storage directory the nodes
	// share instead of Redis.
	fileStorage string
}

// cluster is one Redis, one sandbox and several Caddy processes, each
// reaching Redis through its own fault proxy.
type cluster struct {
	t     *testing.T
	opts  clusterOptions
	redis *interop.Redis
	sb    *sandboxtest.Server
	rdb   *redis.Client // the test's own view of Redis, no proxy
	nodes []*node
}

// node is one Caddy process.
type node struct {
	name    string
	cmd     *exec.Cmd
	proxy   *faultProxy
	url     string // the gateway site
	admin   string // the admin endpoint
	logPath string
	exited  chan struct{}
	ready   chan struct{} // closed once Caddy serves its config
	stopped bool          // SIGSTOP sent and no SIGCONT yet
}

func startCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	if opts.lockTTL == 0 {
		opts.lockTTL = 5 * time.Second
	}
	if opts.redisTimeout == 0 {
		opts.redisTimeout = 3 * time.Second
	}
	r := interop.StartRedis(t, interop.RedisOptions{Persist: opts.persist})
	bin := caddyBinary(t)
	c := &cluster{
		t:     t,
		opts:  opts,
		redis: r,
		sb:    sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: opts.ttl}),
		rdb:   redis.NewClient(&redis.Options{Addr: r.Addr, DisableIdentity: true}),
	}
	t.Cleanup(func() { c.rdb.Close() })
	start := time.Now()
	for i := range opts.instances {
		c.nodes = append(c.nodes, c.startNode(bin, fmt.Sprintf("caddy%d", i+1)))
	}
	for _, n := range c.nodes {
		c.waitReady(n)
	}
	for _, n := range c.nodes {
		if opts.template == "" { // a template's sessions start logged out
			c.waitServing(n, 60*time.Second)
		}
	}
	t.Logf("cluster of %d serving after %v", opts.instances, time.Since(start).Round(time.Millisecond))
	return c
}

func freeAddr(t *testing.T) string { return "127.0.0.1:" + gatewaytest.FreePort(t) }

func (c *cluster) startNode(bin, name string) *node {
	t := c.t
	dir := t.TempDir()
	n := &node{
		name:    name,
		proxy:   newFaultProxy(t, c.redis.Addr),
		url:     "http://" + freeAddr(t),
		admin:   "http://" + freeAddr(t),
		logPath: filepath.Join(dir, "caddy.log"),
		exited:  make(chan struct{}),
		ready:   make(chan struct{}),
	}
	sandboxHost := strings.TrimPrefix(c.sb.URL, "http://")
	storage := fmt.Sprintf(`inject_token_redis {
		address %s
		key_prefix %s
		lock_ttl %s
		lock_refresh %s
		lock_poll 100ms
		timeout %s
	}`, n.proxy.addr, keyPrefix, c.opts.lockTTL, c.opts.lockTTL/4, c.opts.redisTimeout)
	if c.opts.fileStorage != "" {
		storage = "file_system " + c.opts.fileStorage
	}
	sess := fmt.Sprintf("session %s\n\t\tlogin password %s %s", sessionName, sandbox.DemoEmail, sandbox.DemoPassword)
	if c.opts.template != "" {
		sess = "template " + c.opts.template + "\n\t\tkey {http.request.header.X-User}"
	}
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	storage %s
}

%s {
	bind 127.0.0.1
	inject_token {
		%s
		prelude %s
		refresh_before %s
	}
	reverse_proxy %s {
		rewrite /whoami
	}
}
`, strings.TrimPrefix(n.admin, "http://"), storage, n.url, sess, c.sb.URL, c.opts.refreshBefore, sandboxHost)
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd = cmd
	go func() {
		defer close(n.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if !signalled && strings.Contains(sc.Text(), "serving initial configuration") {
				signalled = true
				close(n.ready)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		logf.Close()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-n.exited
		if t.Failed() {
			b, _ := os.ReadFile(n.logPath)
			t.Logf("%s log (engine, warnings and errors):\n%s", n.name, tail(relevant(b), 8000))
		}
	})
	return n
}

// waitReady waits until n's Caddy serves its config.
func (c *cluster) waitReady(n *node) {
	c.t.Helper()
	select {
	case <-n.ready:
	case <-n.exited:
		b, _ := os.ReadFile(n.logPath)
		c.t.Fatalf("%s exited at start:\n%s", n.name, tail(b, 6000))
	case <-time.After(60 * time.Second):
		c.t.Fatalf("%s not ready after 60s", n.name)
	}
}

// relevant keeps the log lines worth reading after a failure: the engine's
// and every warning or error, without the admin API's request lines.
func relevant(b []byte) []byte {
	var out []byte
	for line := range bytes.Lines(b) {
		if bytes.Contains(line, []byte(`"logger":"admin.api"`)) || bytes.Contains(line, []byte("skipped because it requires TLS")) {
			continue
		}
		if bytes.Contains(line, []byte("inject_token")) || bytes.Contains(line, []byte(`"level":"warn"`)) || bytes.Contains(line, []byte(`"level":"error"`)) {
			out = append(out, line...)
		}
	}
	return out
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// waitServing waits until n answers 200 through its gateway.
func (c *cluster) waitServing(n *node, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	if !poll(within, 100*time.Millisecond, func() bool { return get(n.url) == http.StatusOK }) {
		c.t.Fatalf("%s not serving 200 after %v; status: %v", n.name, within, c.status(n))
	}
	return time.Since(start)
}

func get(url string) int {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// poll checks cond every interval until it holds or within has passed. The
// drills watch other processes and a server's counters, which have no
// event to wait on; the deadline bounds every wait.
func poll(within, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-t.C
	}
}

// status is the node's session status from its admin API (no secrets in
// it, by the admin API's contract).
func (c *cluster) status(n *node) map[string]any {
	resp, err := httpClient.Get(n.admin + "/inject_token/sessions/" + sessionName)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return map[string]any{"error": err.Error()}
	}
	return m
}

// waitRefreshes waits until the sandbox has rotated the refresh token at
// least n times in all: the drills count token lifetimes, not seconds.
func (c *cluster) waitRefreshes(n int64, within time.Duration) {
	c.t.Helper()
	if !poll(within, 50*time.Millisecond, func() bool { return c.sb.Stats().RefreshSuccesses >= n }) {
		c.t.Fatalf("sandbox saw %d refreshes, want %d within %v", c.sb.Stats().RefreshSuccesses, n, within)
	}
}

// lockOwner is the pid recorded in the session lock's lease, or 0 when the
// lock is free. A lease is a 22-character token, then "<hostname>:<pid>"
// (redisstorage writes it as redislock does).
func (c *cluster) lockOwner(ctx context.Context) int {
	v, err := c.rdb.Get(ctx, lockKey).Result()
	if err != nil || len(v) <= 22 {
		return 0
	}
	i := strings.LastIndexByte(v, ':')
	pid, _ := strconv.Atoi(v[i+1:])
	return pid
}

func (c *cluster) nodeByPid(pid int) *node {
	for _, n := range c.nodes {
		if n.cmd.Process.Pid == pid {
			return n
		}
	}
	return nil
}

func (n *node) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: %v: %v", n.name, sig, err)
	}
	n.stopped = sig == syscall.SIGSTOP
}

// logCounts prints what every drill reports: the sandbox's view and each
// node's own counters.
func (c *cluster) logCounts(label string) {
	c.t.Helper()
	st := c.sb.Stats()
	c.t.Logf("%s: sandbox refresh calls=%d successes=%d reuse=%d logins=%d revokes=%d max in flight=%d rejections=%v",
		label, st.RefreshCalls, st.RefreshSuccesses, st.ReuseEvents, st.Logins, st.Revokes, st.MaxRefreshInFlight, st.Rejections)
	for _, n := range c.nodes {
		if n.stopped {
			c.t.Logf("  %s: stopped", n.name)
			continue
		}
		s := c.status(n)
		c.t.Logf("  %s: state=%v last_outcome=%v refresh_count=%v adopt_count=%v wait_count=%v last_error=%v redis calls=%d",
			n.name, s["state"], s["last_outcome"], s["refresh_count"], s["adopt_count"], s["wait_count"], s["last_error"], n.proxy.callCount())
	}
}

// assertExactlyOnce checks the figures every drill shares: since base,
// every refresh call rotated (one call may still be in flight), none
// presented a spent token, at most maxLogins logins in all (1: the
// cluster's first), and never two refreshes at once across the cluster.
func (c *cluster) assertExactlyOnce(base sandbox.Stats, lifetimes, maxLogins int64) {
	c.t.Helper()
	st := c.sb.Stats()
	calls, ok := st.RefreshCalls-base.RefreshCalls, st.RefreshSuccesses-base.RefreshSuccesses
	if calls < lifetimes || calls > ok+1 {
		c.t.Errorf("refresh calls = %d for %d rotations (want ≥ %d lifetimes and at most one more call than rotations)", calls, ok, lifetimes)
	}
	if st.ReuseEvents != 0 {
		c.t.Errorf("reuse events = %d, want 0", st.ReuseEvents)
	}
	if st.Logins < 1 || st.Logins > maxLogins {
		c.t.Errorf("logins = %d, want 1..%d", st.Logins, maxLogins)
	}
	if st.MaxRefreshInFlight > 1 {
		c.t.Errorf("max refreshes in flight = %d, want 1", st.MaxRefreshInFlight)
	}
}

// waitLockFree waits until no instance holds the session lock, i.e. the
// last refresh has been written and the lease released.
func (c *cluster) waitLockFree() {
	c.t.Helper()
	if !poll(10*time.Second, 5*time.Millisecond, func() bool { return c.lockOwner(context.Background()) == 0 }) {
		c.t.Fatal("session lock still held after 10s")
	}
}
