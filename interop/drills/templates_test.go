package drills

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/filecas"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The template drills run a template's sessions (one per user, made at
// run time) in Caddy processes against the sandbox. They are heavy, so
// they run only when asked:
//
//	INJECT_TOKEN_TEMPLATE_DRILL=2000 go test -run DrillTemplateRefresh -v -timeout 30m ./drills/
//	INJECT_TOKEN_TEMPLATE_RESTART=100000 go test -run DrillTemplateRestart -v -timeout 60m ./drills/

// templateDrill is the template the drill nodes serve by X-User.
const templateDrill = "drill-users"

// drillCount reads the number of sessions from env, skipping the test
// when it is not set.
func drillCount(t *testing.T, env string) int {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		t.Skipf("set %s to the number of sessions to run this drill", env)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", env, v)
	}
	return n
}

// TestDrillTemplateRefreshLoad: n sessions logged in at once (60 s
// tokens, so all expire within the same minute) and used once on every
// instance; the instances then refresh each one ahead of expiry, once per
// lifetime in the whole cluster: refresh calls at the sandbox = sessions
// × lifetimes, no failed attempt, no refresh after expiry, no reuse.
func TestDrillTemplateRefreshLoad(t *testing.T) {
	n := drillCount(t, "INJECT_TOKEN_TEMPLATE_DRILL")
	t.Run("file_system, one instance", func(t *testing.T) {
		drillTemplateRefresh(t, n, clusterOptions{instances: 1, fileStorage: t.TempDir()}, 1)
	})
	t.Run("redis, three instances", func(t *testing.T) {
		drillTemplateRefresh(t, n, clusterOptions{instances: 3}, 2)
	})
}

func drillTemplateRefresh(t *testing.T, n int, opts clusterOptions, lifetimes int) {
	const ttl = 60 * time.Second
	opts.template, opts.ttl, opts.refreshBefore = templateDrill, ttl, 20*time.Second
	c := startCluster(t, opts)
	base := c.sb.Stats()
	start := time.Now()
	c.loginKeys(c.nodes[0], n)
	loggedIn := time.Since(start)
	for _, nd := range c.nodes { // every instance uses every session once
		nd := nd
		parallel(n, 16, func(i int) error {
			if code := getAs(nd.url, keyOf(i)); code != http.StatusOK {
				return fmt.Errorf("%s: GET as %s: %d", nd.name, keyOf(i), code)
			}
			return nil
		}, t)
	}
	used := time.Since(start)
	want := int64(n * lifetimes)
	c.waitRefreshes(base.RefreshSuccesses+want, time.Duration(lifetimes)*ttl+2*time.Minute)
	done := time.Since(start)
	// Let the calls in flight land, then count.
	poll(10*time.Second, 50*time.Millisecond, func() bool {
		st := c.sb.Stats()
		return st.RefreshCalls == st.RefreshSuccesses
	})
	st := c.sb.Stats()
	calls, ok := st.RefreshCalls-base.RefreshCalls, st.RefreshSuccesses-base.RefreshSuccesses
	var refreshed, adopted, failures, late float64
	count := func() bool {
		refreshed, adopted, failures, late = 0, 0, 0, 0
		for _, nd := range c.nodes {
			refreshed += metricSum(t, nd, "caddy_inject_token_refresh_total", "session", templateDrill, "outcome", "refreshed")
			adopted += metricSum(t, nd, "caddy_inject_token_refresh_total", "session", templateDrill, "outcome", "adopted")
			failures += metricSum(t, nd, "caddy_inject_token_refresh_failures_total", "session", templateDrill)
			late += metricSum(t, nd, "caddy_inject_token_refresh_lead_seconds_bucket", "session", templateDrill, "le", "0")
		}
		return refreshed >= float64(want)
	}
	// An engine reports a refresh after the sandbox has answered it.
	poll(10*time.Second, 100*time.Millisecond, count)
	t.Logf("| %d | %d | %s | %v | %v | %d | %d | %v | %v | %d | %v |", n, len(c.nodes), storageName(opts), loggedIn.Round(100*time.Millisecond),
		used.Round(100*time.Millisecond), calls, ok, failures, late, st.ReuseEvents, done.Round(100*time.Millisecond))
	t.Logf("adopted by other instances: %v; refreshed by the engine: %v", adopted, refreshed)
	if calls != want || ok != want {
		t.Errorf("sandbox refresh calls = %d, rotations = %d; want %d (sessions × lifetimes)", calls, ok, want)
	}
	if st.ReuseEvents != 0 {
		t.Errorf("reuse events = %d, want 0", st.ReuseEvents)
	}
	if failures != 0 || late != 0 {
		t.Errorf("failed attempts = %v, refreshes after expiry = %v; want 0 and 0", failures, late)
	}
	if refreshed != float64(want) {
		t.Errorf("engine refreshes = %v, want %d", refreshed, want)
	}
}

func storageName(o clusterOptions) string {
	if o.fileStorage != "" {
		return "file_system"
	}
	return "redis"
}

func keyOf(i int) string { return "user-" + strconv.Itoa(i) }

// loginKeys logs n keys of the template in at the sandbox (the demo user,
// one Prelude session each) through nd's admin API, 16 at a time.
func (c *cluster) loginKeys(nd *node, n int) {
	c.t.Helper()
	body := fmt.Sprintf(`{"email":%q,"password":%q}`, sandbox.DemoEmail, sandbox.DemoPassword)
	parallel(n, 16, func(i int) error {
		u := nd.admin + "/inject_token/templates/" + templateDrill + "/sessions/" + url.PathEscape(keyOf(i)) + "/login/password"
		resp, err := httpClient.Post(u, "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("login %s: %d", keyOf(i), resp.StatusCode)
		}
		return nil
	}, c.t)
}

// parallel runs f(0..n-1) on workers goroutines; the first errors fail t.
func parallel(n, workers int, f func(i int) error, t *testing.T) {
	t.Helper()
	var next atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d failed, first: %v", len(errs), n, errs[0])
	}
}

// getAs sends a GET as user (X-User) and returns the status.
func getAs(u, user string) int {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("X-User", user)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metricSum adds up the series of name on nd's /metrics that carry every
// label pair given.
func metricSum(t *testing.T, nd *node, name string, pairs ...string) float64 {
	t.Helper()
	resp, err := httpClient.Get(nd.admin + "/metrics")
	if err != nil {
		t.Fatalf("%s: /metrics: %v", nd.name, err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		labels, value, _ := strings.Cut(line, "} ")
		match := true
		for i := 0; i+1 < len(pairs); i += 2 {
			if !strings.Contains(labels, pairs[i]+`="`+pairs[i+1]+`"`) {
				match = false
			}
		}
		if v, err := strconv.ParseFloat(value, 64); match && err == nil {
			sum += v
		}
	}
	return sum
}

// TestDrillTemplateRestart: n sessions stored (tokens valid for an hour),
// and Caddy restarted over them: it serves its first request within 2 s
// of start, and in the first minute makes no refresh call (none is due,
// and only one session is used).
func TestDrillTemplateRestart(t *testing.T) {
	n := drillCount(t, "INJECT_TOKEN_TEMPLATE_RESTART")
	dir := t.TempDir()
	c := startCluster(t, clusterOptions{instances: 1, fileStorage: dir, template: templateDrill, ttl: time.Hour, refreshBefore: time.Minute})
	first := c.nodes[0]
	c.loginKeys(first, 1)
	if code := getAs(first.url, keyOf(0)); code != http.StatusOK {
		t.Fatalf("first session: %d", code)
	}
	_ = first.cmd.Process.Kill()
	<-first.exited
	first.stopped = true

	start := time.Now()
	storeSessions(t, dir, n)
	t.Logf("stored %d more sessions in %v", n, time.Since(start).Round(time.Second))

	base := c.sb.Stats()
	t0 := time.Now()
	nd := c.startNode(caddyBinary(t), "restarted")
	if !poll(30*time.Second, 5*time.Millisecond, func() bool { return getAs(nd.url, keyOf(0)) == http.StatusOK }) {
		t.Fatalf("restarted node does not serve %s", keyOf(0))
	}
	served := time.Since(t0)
	// One minute of use of the one real session (every 100 ms).
	deadline := t0.Add(time.Minute)
	failed := 0
	pace := time.NewTicker(100 * time.Millisecond) // the load's pace, not a wait for anything
	defer pace.Stop()
	for ; time.Now().Before(deadline); <-pace.C {
		if getAs(nd.url, keyOf(0)) != http.StatusOK {
			failed++
		}
	}
	st := c.sb.Stats()
	calls := st.RefreshCalls - base.RefreshCalls
	rss := vmRSS(nd.cmd.Process.Pid)
	t.Logf("| %d | %v | %d | %d | %s |", n+1, served.Round(time.Millisecond), calls, failed, rss)
	if served > 2*time.Second {
		t.Errorf("first request served %v after start, want ≤ 2s", served)
	}
	if calls != 0 || failed != 0 {
		t.Errorf("in the first minute: %d refresh calls, %d failed requests; want 0 and 0", calls, failed)
	}
}

// storeSessions stores n sessions of the drill template in the file
// storage at dir, as the node's own Runtime would (same secret, same
// conditional-write storage), with tokens valid for an hour and refresh
// tokens the sandbox has never issued: refreshing any of them would show
// as a refresh call.
func storeSessions(t *testing.T, dir string, n int) {
	t.Helper()
	secret, err := os.ReadFile(filepath.Join(dir, "inject_token", templateDrill, "hmac_secret"))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := tokencache.NewRuntime(tokencache.Template{
		Name: templateDrill, Secret: secret, Backend: refuseBackend{},
		Storage:     filecas.New(&certmagic.FileStorage{Path: dir}),
		MaxResident: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	expiry := time.Now().Add(time.Hour)
	parallel(n, 8, func(i int) error {
		key := "stored-" + strconv.Itoa(i)
		return rt.Login(context.Background(), key, func(context.Context, *dpop.Key, string) (*tokencache.Grant, error) {
			return &tokencache.Grant{AccessToken: "at-" + key, TokenType: "Bearer", Expiry: expiry, RefreshToken: "rt-" + key}, nil
		})
	}, t)
}

// refuseBackend is the backend of the process that stores the drill's
// sessions: it never needs one.
type refuseBackend struct{}

func (refuseBackend) Refresh(context.Context, *dpop.Key, string) (*tokencache.Grant, error) {
	return nil, errors.New("the storing process does not refresh")
}
func (refuseBackend) Revoke(context.Context, *dpop.Key, string) error { return nil }
func (refuseBackend) AutoLogin() tokencache.LoginFunc                 { return nil }

// vmRSS is a process's resident set size from /proc, "" if unknown.
func vmRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
