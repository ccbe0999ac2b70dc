package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// sample is one series of a scrape, histograms flattened into their
// _bucket, _sum and _count series as Prometheus stores them.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

func (x sample) String() string {
	return fmt.Sprintf("%s%v", x.name, x.labels)
}

type scrape []sample

// scrapeMetrics reads the in-process Caddy's /metrics.
func scrapeMetrics(t *testing.T) scrape {
	t.Helper()
	status, _, body := do(t, http.DefaultClient, http.MethodGet, adminURL+"/metrics", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return flatten(fams)
}

func flatten(fams map[string]*dto.MetricFamily) scrape {
	var out scrape
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			with := func(k, v string) map[string]string {
				c := maps.Clone(labels)
				c[k] = v
				return c
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, sample{name, labels, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, sample{name, labels, m.GetGauge().GetValue()})
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					le := model.SampleValue(b.GetUpperBound()).String()
					out = append(out, sample{name + "_bucket", with("le", le), float64(b.GetCumulativeCount())})
				}
				out = append(out,
					sample{name + "_bucket", with("le", "+Inf"), float64(h.GetSampleCount())},
					sample{name + "_sum", labels, h.GetSampleSum()},
					sample{name + "_count", labels, float64(h.GetSampleCount())})
			default:
				out = append(out, sample{name, labels, m.GetUntyped().GetValue()})
			}
		}
	}
	return out
}

// match returns the series called name that carry every label pair given.
func (s scrape) match(name string, pairs ...string) []sample {
	var out []sample
	for _, x := range s {
		if x.name != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(pairs); i += 2 {
			if v, has := x.labels[pairs[i]]; !has || v != pairs[i+1] {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, x)
		}
	}
	return out
}

// sum adds up the matching series (0 when there are none).
func (s scrape) sum(name string, pairs ...string) float64 {
	var n float64
	for _, x := range s.match(name, pairs...) {
		n += x.value
	}
	return n
}

// nonzero lists the matching series that are not zero, with their values.
func (s scrape) nonzero(name string, pairs ...string) []string {
	var out []string
	for _, x := range s.match(name, pairs...) {
		if x.value != 0 {
			out = append(out, fmt.Sprintf("%s %v", x, x.value))
		}
	}
	return out
}

// one returns the value of the single matching series.
func (s scrape) one(t *testing.T, name string, pairs ...string) float64 {
	t.Helper()
	m := s.match(name, pairs...)
	if len(m) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, pairs, len(m))
	}
	return m[0].value
}

// of returns the series labelled with session.
func (s scrape) of(session string) scrape {
	var out scrape
	for _, x := range s {
		if x.labels["session"] == session {
			out = append(out, x)
		}
	}
	return out
}

// counters returns the cumulative series (counters and histogram
// _bucket/_sum/_count), keyed by name and labels: what a reload must keep.
func (s scrape) counters() map[string]float64 {
	out := map[string]float64{}
	for _, x := range s {
		if strings.HasSuffix(x.name, "_total") || strings.HasSuffix(x.name, "_bucket") ||
			strings.HasSuffix(x.name, "_sum") || strings.HasSuffix(x.name, "_count") {
			keys := slices.Sorted(maps.Keys(x.labels))
			k := x.name
			for _, l := range keys {
				k += fmt.Sprintf(",%s=%s", l, x.labels[l])
			}
			out[k] = x.value
		}
	}
	return out
}

// waitScrape scrapes until cond holds for the scrape.
func waitScrape(t *testing.T, what string, cond func(scrape) bool) scrape {
	t.Helper()
	var last scrape
	waitUntil(t, what, func() bool {
		last = scrapeMetrics(t)
		return cond(last)
	})
	return last
}

// waitingForFileLock reports whether some goroutine is polling for a
// certmagic file-storage lock that someone else holds: its stack is parked
// in obtainLock's select between polls.
func waitingForFileLock() bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") && strings.Contains(g, "certmagic.(*FileStorage).obtainLock") {
			return true
		}
	}
	return false
}

// TestMetricsEndToEnd drives a real Caddy through a login, refreshes, a
// lock wait, an upstream 401, a reload, a forced failure, a failed login
// and a logout, and asserts each series moves as described in the docs/metrics.md;
// then that the dashboard and the alert rules reference only series that
// this scrape contains, that a session dropped by a reload stops being
// exported, and that an unloaded session leaves no series.
func TestMetricsEndToEnd(t *testing.T) {
	// Tokens live an hour so no background refresh runs during the test:
	// every refresh below is one the test caused, and counts are exact.
	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: time.Hour})
	// The upstream accepts the sandbox's tokens, but refuses the next
	// request when told to.
	var rejectNext atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := srv.VerifyAccessToken(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		if rejectNext.Swap(false) || err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(upstream.Close)

	const a, b = "metrics-a", "metrics-b" // b's password is wrong
	dir := t.TempDir()
	siteB := fmt.Sprintf(`}
http://localhost:9081 {
	inject_token {
		session %s
		prelude %s
		login password %s wrong-password
	}
	reverse_proxy %s`, b, srv.URL, sandbox.DemoEmail, upstream.URL)
	// The transport owns the upstream exchange: it retries a 401 once.
	g := gateway{storage: dir, upstream: upstream.URL + " {\n\t\ttransport inject_token\n\t}", extra: siteB, block: fmt.Sprintf(`session %s
		prelude %s
		login password %s %s
		refresh_before 2m`, a, srv.URL, sandbox.DemoEmail, sandbox.DemoPassword)}
	tester := g.start(t)
	get := func(wantStatus int) {
		t.Helper()
		if status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil); status != wantStatus {
			t.Fatalf("GET: %d %s, want %d", status, body, wantStatus)
		}
	}
	adm := &adminClient{T: t}

	// Login: the background login, then one injected request.
	get(http.StatusOK)
	m := scrapeMetrics(t)
	expectA := map[string]float64{"logged_in": 1}
	checkAttempts := func(m scrape) {
		t.Helper()
		for _, o := range attemptOutcomes {
			if got := m.one(t, "caddy_inject_token_refresh_total", "session", a, "outcome", o); got != expectA[o] {
				t.Errorf("refresh_total{outcome=%q} = %v, want %v", o, got, expectA[o])
			}
			// Every attempt's round trip is timed, under the same outcome.
			if got := m.sum("caddy_inject_token_refresh_duration_seconds_count", "session", a, "outcome", o); got != expectA[o] {
				t.Errorf("refresh_duration_seconds_count{outcome=%q} = %v, want %v", o, got, expectA[o])
			}
		}
	}
	checkAttempts(m)
	if got := m.one(t, "caddy_inject_token_session_state", "session", a); got != 1 ||
		len(m.match("caddy_inject_token_session_state", "session", a, "state", "active")) != 1 {
		t.Errorf("session_state of %s: %v, want one series, state active", a, m.match("caddy_inject_token_session_state", "session", a))
	}
	if got := m.one(t, "caddy_inject_token_auto_login_enabled", "session", a); got != 1 {
		t.Errorf("auto_login_enabled = %v, want 1", got)
	}
	if got := m.one(t, "caddy_inject_token_refresh_before_seconds", "session", a); got != 120 {
		t.Errorf("refresh_before_seconds = %v, want 120", got)
	}
	exp := m.one(t, "caddy_inject_token_token_expiry_timestamp_seconds", "session", a)
	if left := time.Until(time.Unix(int64(exp), 0)); left < 50*time.Minute || left > time.Hour+time.Minute {
		t.Errorf("token expiry in %v, want about an hour", left)
	}
	if got := m.one(t, "caddy_inject_token_requests_total", "session", a, "result", "injected"); got != 1 {
		t.Errorf("requests_total{injected} = %v, want 1", got)
	}
	for _, reason := range failureReasons {
		if got := m.one(t, "caddy_inject_token_refresh_failures_total", "session", a, "reason", reason); got != 0 {
			t.Errorf("refresh_failures_total{reason=%q} = %v before any failure", reason, got)
		}
	}

	// A refresh: one more refreshed attempt, and its lead.
	adm.Call("POST", "/inject_token/sessions/"+a+"/refresh", "", 200)
	expectA["refreshed"]++
	checkAttempts(scrapeMetrics(t))

	// A lock wait: another holder (this test, like a second instance) has
	// the session's storage lock while the admin API forces a refresh.
	fs := &certmagic.FileStorage{Path: dir}
	lockName := tokencache.StoragePrefix + "_" + a // as the engine names it
	ctx := context.Background()
	if err := fs.Lock(ctx, lockName); err != nil {
		t.Fatal(err)
	}
	if waitingForFileLock() {
		t.Fatal("someone is already waiting for a file lock")
	}
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		adm.Call("POST", "/inject_token/sessions/"+a+"/refresh", "", 200)
	}()
	waitUntil(t, "the refresh waiting for the lock", waitingForFileLock)
	if err := fs.Unlock(ctx, lockName); err != nil {
		t.Fatal(err)
	}
	<-refreshed
	expectA["refreshed"]++
	m = scrapeMetrics(t)
	checkAttempts(m)
	waits := m.one(t, "caddy_inject_token_storage_lock_wait_seconds_count", "session", a)
	if waits < 1 {
		t.Errorf("storage_lock_wait_seconds_count = %v, want at least the one wait", waits)
	}
	// The waiter was seen between polls of the held lock, and file
	// storage polls once a second: that wait lasted about a second.
	if fast := m.one(t, "caddy_inject_token_storage_lock_wait_seconds_bucket", "session", a, "le", "0.5"); fast >= waits {
		t.Errorf("all %v lock waits under 0.5 s; the contended one is missing", waits)
	}

	// An upstream 401: the rejected token is replaced and the request
	// retried once.
	rejectNext.Store(true)
	get(http.StatusOK)
	expectA["refreshed"]++
	m = scrapeMetrics(t)
	checkAttempts(m)
	if got := m.one(t, "caddy_inject_token_requests_total", "session", a, "result", "retried_401"); got != 1 {
		t.Errorf("requests_total{retried_401} = %v, want 1", got)
	}
	// counted by the request path (branch reqpath)
	if got := m.one(t, "caddy_inject_token_upstream_rejections_total", "session", a, "kind", "token_rejected"); got != 1 {
		t.Errorf("upstream_rejections_total{token_rejected} = %v, want 1", got)
	}
	// Every refresh replaced a token with about an hour left.
	n := expectA["refreshed"]
	if got := m.one(t, "caddy_inject_token_refresh_lead_seconds_count", "session", a); got != n {
		t.Errorf("refresh_lead_seconds_count = %v, want %v (one per refresh)", got, n)
	}
	if got := m.one(t, "caddy_inject_token_refresh_lead_seconds_bucket", "session", a, "le", "1800"); got != 0 {
		t.Errorf("%v refreshes with under 30 min lead; tokens had about an hour left", got)
	}
	if got := m.one(t, "caddy_inject_token_refresh_lead_seconds_bucket", "session", a, "le", "3600"); got != n {
		t.Errorf("refresh_lead_seconds_bucket{le=3600} = %v, want %v", got, n)
	}

	// The wrong password: failed logins, a failure reason, the state. The
	// engine pauses automatic login after a few rejections.
	const wantB = "login_failed"
	m = waitScrape(t, b+" "+wantB+" after failed logins", func(m scrape) bool {
		return m.sum("caddy_inject_token_refresh_total", "session", b, "outcome", "login_fail") >= 1 &&
			len(m.match("caddy_inject_token_session_state", "session", b, "state", wantB)) == 1
	})
	fails := m.sum("caddy_inject_token_refresh_total", "session", b, "outcome", "login_fail")
	if got := m.sum("caddy_inject_token_refresh_failures_total", "session", b); got != fails {
		t.Errorf("refresh_failures_total of %s = %v, want %v (one per failed login)", b, got, fails)
	}
	t.Logf("%s: failures %v", b, m.nonzero("caddy_inject_token_refresh_failures_total", "session", b))
	if got := m.one(t, "caddy_inject_token_refresh_failures_total", "session", b, "reason", "invalid_client"); got != fails {
		t.Errorf("refresh_failures_total{%s,invalid_client} = %v, want %v", b, got, fails)
	}
	if got := m.one(t, "caddy_inject_token_auto_login_enabled", "session", b); got != 0 {
		t.Errorf("auto_login_enabled of %s = %v, want 0 (paused)", b, got)
	}

	// A reload that rebuilds a's cache (refresh_before changes) keeps every
	// counter, histogram and session, without a registration error.
	before := m.of(a).counters()
	g.block = strings.Replace(g.block, "refresh_before 2m", "refresh_before 90s", 1)
	tester.InitServer(g.String(), "caddyfile")
	m = scrapeMetrics(t)
	after := m.of(a).counters()
	if !maps.Equal(before, after) {
		for k, v := range before {
			if after[k] != v {
				t.Errorf("after reload %s = %v, was %v", k, after[k], v)
			}
		}
		t.Errorf("reload changed %s's counters (%d series before, %d after)", a, len(before), len(after))
	}
	if got := m.one(t, "caddy_inject_token_refresh_before_seconds", "session", a); got != 90 {
		t.Errorf("refresh_before_seconds after reload = %v, want 90", got)
	}
	if len(m.of(b)) == 0 {
		t.Errorf("%s vanished in a reload that keeps it", b)
	}

	// A forced failure: the token server answers 500 once.
	srv.FailRefreshes(1)
	status, _, body := do(t, http.DefaultClient, http.MethodPost, adminURL+"/inject_token/sessions/"+a+"/refresh", nil)
	t.Logf("refresh against a failing server: %d %s", status, body)
	m = waitScrape(t, "a transient refresh failure", func(m scrape) bool {
		return m.sum("caddy_inject_token_refresh_total", "session", a, "outcome", "transient") >= 1
	})
	t.Logf("%s: failures %v", a, m.nonzero("caddy_inject_token_refresh_failures_total", "session", a))
	if got := m.one(t, "caddy_inject_token_refresh_failures_total", "session", a, "reason", "status_5xx"); got < 1 {
		t.Errorf("refresh_failures_total{status_5xx} = %v after a 500", got)
	}
	// Each failed attempt is one failure, whatever its reason.
	var failedAttempts float64
	for _, o := range failedOutcomes {
		failedAttempts += m.sum("caddy_inject_token_refresh_total", "session", a, "outcome", o)
	}
	if got := m.sum("caddy_inject_token_refresh_failures_total", "session", a); got != failedAttempts {
		t.Errorf("refresh_failures_total of %s = %v, want %v (failed attempts)", a, got, failedAttempts)
	}

	// The dashboard and the rules ask only for what this scrape has.
	checkReferences(t, m)

	// A reload without b: b stops being exported; a continues.
	g.extra = ""
	tester.InitServer(g.String(), "caddyfile")
	m = scrapeMetrics(t)
	if left := m.of(b); len(left) > 0 {
		t.Errorf("%s left the config but %d series remain, e.g. %s", b, len(left), left[0])
	}
	if len(m.match("caddy_inject_token_session_state", "session", a)) != 1 {
		t.Errorf("%s lost its state series", a)
	}

	// A logout: state and auto-login follow at once.
	adm.Call("POST", "/inject_token/sessions/"+a+"/logout", "", 200)
	m = scrapeMetrics(t)
	if len(m.match("caddy_inject_token_session_state", "session", a, "state", "logged_out")) != 1 ||
		len(m.match("caddy_inject_token_session_state", "session", a)) != 1 {
		t.Errorf("session_state after logout: %v", m.match("caddy_inject_token_session_state", "session", a))
	}
	if got := m.one(t, "caddy_inject_token_auto_login_enabled", "session", a); got != 0 {
		t.Errorf("auto_login_enabled after logout = %v, want 0", got)
	}
	if got := m.one(t, "caddy_inject_token_refresh_total", "session", a, "outcome", "logged_out"); got != 1 {
		t.Errorf("refresh_total{logged_out} = %v, want 1", got)
	}

	// Unloaded: nothing of a remains in the collectors.
	resp, err := http.Post(adminURL+"/load", "application/json", strings.NewReader(`{"admin":{"listen":"localhost:2999"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if left := gather(t).of(a); len(left) > 0 {
		t.Errorf("%s was unloaded but %d series remain, e.g. %s", a, len(left), left[0])
	}
}

// TestMetricsObserveBoundsLabels: reasons and storage operations outside
// the fixed sets are counted as "other", never as new label values; lock
// waits, late refreshes and storage errors land where the docs/metrics.md says.
func TestMetricsObserveBoundsLabels(t *testing.T) {
	const name = "unit-observe"
	t.Cleanup(func() { forgetSessionMetrics(name) })
	hook := observeRefresh(name)
	hook(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeTransient,
		Reason: "a backend's brand new reason", Duration: 2 * time.Second})
	hook(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeTransient, Reason: tokencache.ReasonTimeout})
	hook(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeDead, Reason: tokencache.ReasonTokenReused})
	hook(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeRefreshed, Lead: -3 * time.Second})
	hook(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeLoggedIn}) // no previous token: no lead
	hook(tokencache.Event{Kind: tokencache.EventLockWait, Duration: 1500 * time.Millisecond})
	hook(tokencache.Event{Kind: tokencache.EventStorageError, Op: "store"})
	hook(tokencache.Event{Kind: tokencache.EventStorageError, Op: "rename " + strings.Repeat("x", 100)})
	hook(tokencache.Event{Kind: tokencache.EventState, State: tokencache.StateActive, AutoLogin: true})

	m := gather(t).of(name)
	for _, c := range []struct {
		name  string
		pairs []string
		want  float64
	}{
		{"caddy_inject_token_refresh_failures_total", []string{"reason", "other"}, 1},
		{"caddy_inject_token_refresh_failures_total", []string{"reason", "timeout"}, 1},
		{"caddy_inject_token_refresh_failures_total", []string{"reason", "token_reused"}, 1},
		{"caddy_inject_token_refresh_failures_total", nil, 3},
		{"caddy_inject_token_refresh_total", []string{"outcome", "transient"}, 2},
		{"caddy_inject_token_refresh_duration_seconds_bucket", []string{"outcome", "transient", "le", "1"}, 1},
		{"caddy_inject_token_refresh_duration_seconds_bucket", []string{"outcome", "transient", "le", "2.5"}, 2},
		{"caddy_inject_token_refresh_lead_seconds_count", nil, 1},
		{"caddy_inject_token_refresh_lead_seconds_bucket", []string{"le", "0"}, 1}, // finished after expiry
		{"caddy_inject_token_storage_lock_wait_seconds_bucket", []string{"le", "1"}, 0},
		{"caddy_inject_token_storage_lock_wait_seconds_bucket", []string{"le", "2.5"}, 1},
		{"caddy_inject_token_storage_errors_total", []string{"op", "store"}, 1},
		{"caddy_inject_token_storage_errors_total", []string{"op", "other"}, 1},
		{"caddy_inject_token_storage_errors_total", nil, 2},
	} {
		if got := m.sum(c.name, c.pairs...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.pairs, got, c.want)
		}
	}
	for _, x := range m {
		for l, v := range x.labels {
			if l == "reason" && !slices.Contains(failureReasons, v) || l == "op" && !slices.Contains(storageOps, v) {
				t.Errorf("unbounded label %s=%q on %s", l, v, x.name)
			}
		}
	}

	forgetSessionMetrics(name)
	if left := gather(t).of(name); len(left) > 0 {
		t.Errorf("%d series left after forgetSessionMetrics", len(left))
	}
}

// TestMetricsForgetSparesNamesake: destroying a session whose name a new
// session already took again (the pool drops the old one before closing
// it) leaves the series alone; destroying the last one deletes them.
func TestMetricsForgetSparesNamesake(t *testing.T) {
	const name = "unit-namesake"
	observeRefresh(name)(tokencache.Event{Kind: tokencache.EventAttempt, Outcome: tokencache.OutcomeRefreshed})
	if _, _, err := sessions.LoadOrNew(name, func() (caddy.Destructor, error) {
		return newSession(name), nil // no cache: Destruct only forgets
	}); err != nil {
		t.Fatal(err)
	}
	forgetSessionMetrics(name) // the old namesake's Destruct
	if got := gatherVecs(t).sum("caddy_inject_token_refresh_total", "session", name, "outcome", "refreshed"); got != 1 {
		t.Errorf("refresh_total of the live session = %v after a namesake was destroyed, want 1", got)
	}
	if _, err := sessions.Delete(name); err != nil {
		t.Fatal(err)
	}
	if left := gatherVecs(t).of(name); len(left) > 0 {
		t.Errorf("%d series left after the session was destroyed", len(left))
	}
}

// gather collects the module's collectors through a fresh registry.
func gather(t *testing.T) scrape {
	t.Helper()
	return gatherFrom(t, func(reg prometheus.Registerer) error { return registerMetrics(reg) })
}

// gatherVecs collects the per-session vectors only, without reading the
// live sessions.
func gatherVecs(t *testing.T) scrape {
	t.Helper()
	return gatherFrom(t, func(reg prometheus.Registerer) error {
		for _, v := range sessionVecs {
			if err := reg.Register(v); err != nil {
				return err
			}
		}
		return nil
	})
}

func gatherFrom(t *testing.T, register func(prometheus.Registerer) error) scrape {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := register(reg); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	return flatten(byName)
}

// Files that reference metrics by name.
const (
	rulesFile     = "contrib/prometheus/inject-token.rules.yml"
	dashboardFile = "contrib/grafana/inject-token.json"
)

// A query's references: metric selectors, grouping labels, legend labels.
var (
	selectorRE = regexp.MustCompile(`\b(caddy_inject_token_[a-z0-9_]+)\b(?:\s*\{([^}]*)\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	groupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	legendRE   = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	labelValRE = regexp.MustCompile(`label_values\(\s*([a-z0-9_]+)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	literalsRE = regexp.MustCompile(`^[a-zA-Z0-9_.+|-]+$`)
)

// targetLabels are added by Prometheus at scrape time.
var targetLabels = []string{"instance", "job"}

// queries reads every PromQL expression (and Grafana legend) of the rules
// and the dashboard, by where it was found.
func queries(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out[rulesFile+" "+r.Alert+r.Record] = []string{r.Expr}
		}
	}
	raw, err = os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct {
				Expr, LegendFormat string
			}
		}
		Templating struct {
			List []struct {
				Name, Type string
				Query      any
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			out[fmt.Sprintf("%s panel %q target %d", dashboardFile, p.Title, i)] = []string{tg.Expr, tg.LegendFormat}
		}
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		if q, ok := v.Query.(string); ok {
			out[dashboardFile+" variable "+v.Name] = []string{q}
		} else if q, ok := v.Query.(map[string]any); ok {
			if s, ok := q["query"].(string); ok {
				out[dashboardFile+" variable "+v.Name] = []string{s}
			}
		}
	}
	return out
}

// checkReferences fails for every metric name, label name or label value
// the rules or the dashboard use that the scrape m lacks.
func checkReferences(t *testing.T, m scrape) {
	t.Helper()
	labels := map[string]map[string]map[string]bool{} // metric → label → values
	for _, x := range m {
		if labels[x.name] == nil {
			labels[x.name] = map[string]map[string]bool{}
		}
		for l, v := range x.labels {
			if labels[x.name][l] == nil {
				labels[x.name][l] = map[string]bool{}
			}
			labels[x.name][l][v] = true
		}
	}
	refs := queries(t)
	if len(refs) < 10 {
		t.Fatalf("only %d queries found in the rules and the dashboard", len(refs))
	}
	metricsSeen := map[string]bool{}
	for where, qs := range refs {
		expr := qs[0]
		known := map[string]bool{}
		for _, l := range targetLabels {
			known[l] = true
		}
		sels := selectorRE.FindAllStringSubmatch(expr, -1)
		if len(sels) == 0 {
			t.Errorf("%s: no caddy_inject_token metric in %q", where, expr)
		}
		for _, sel := range sels {
			name := sel[1]
			metricsSeen[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] = true
			have, ok := labels[name]
			if !ok {
				t.Errorf("%s: metric %s is not in the scrape", where, name)
				continue
			}
			for l := range have {
				known[l] = true
			}
			for _, mt := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
				label, op, value := mt[1], mt[2], mt[3]
				values, ok := have[label]
				if !ok {
					t.Errorf("%s: %s has no label %s", where, name, label)
					continue
				}
				if strings.Contains(value, "$") {
					continue // a dashboard variable
				}
				alts := []string{value}
				if op == "=~" || op == "!~" {
					if !literalsRE.MatchString(value) {
						t.Errorf("%s: %s{%s%s%q}: only alternations of literal values can be checked", where, name, label, op, value)
						continue
					}
					alts = strings.Split(value, "|")
				}
				for _, v := range alts {
					if !values[v] {
						t.Errorf("%s: %s{%s=%q} is not in the scrape (have %v)", where, name, label, v, slices.Sorted(maps.Keys(values)))
					}
				}
			}
		}
		for _, gr := range groupingRE.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(gr[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !known[l] {
					t.Errorf("%s: groups by %s, which none of its metrics has", where, l)
				}
			}
		}
		if len(qs) > 1 {
			for _, l := range legendRE.FindAllStringSubmatch(qs[1], -1) {
				if !known[l[1]] {
					t.Errorf("%s: legend uses {{%s}}, which none of its metrics has", where, l[1])
				}
			}
		}
		for _, lv := range labelValRE.FindAllStringSubmatch(expr, -1) {
			if _, ok := labels[lv[1]][lv[2]]; !ok {
				t.Errorf("%s: label_values(%s, %s) finds nothing in the scrape", where, lv[1], lv[2])
			}
		}
	}
	// And docs/metrics.md lists every metric the module exports.
	readme, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range labels {
		if !strings.HasPrefix(name, "caddy_inject_token_") {
			continue
		}
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if _, hist := labels[base+"_bucket"]; hist {
			name = base
		}
		if !bytes.Contains(readme, []byte("`"+name+"{")) {
			t.Errorf("docs/metrics.md does not list %s", name)
		}
	}
	t.Logf("%d queries checked; metrics used: %v", len(refs), slices.Sorted(maps.Keys(metricsSeen)))
}

// TestMetricsRulesTestedAndDocumented: every alert in the rules file has a
// promtool case that fires it and one that expects silence, and the docs/metrics.md
// names it.
func TestMetricsRulesTestedAndDocumented(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert string }
		}
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string
				ExpAlerts []any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	for file, into := range map[string]any{rulesFile: &rules, strings.TrimSuffix(rulesFile, ".yml") + ".test.yml": &tests} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, into); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, c := range tc.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				silent[c.Alertname] = true
			}
		}
	}
	readme, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("%s: a case that fires it: %t, one that does not: %t", r.Alert, fires[r.Alert], silent[r.Alert])
			}
			if !bytes.Contains(readme, []byte("`"+r.Alert+"`")) {
				t.Errorf("docs/metrics.md does not name alert %s", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no alerts in %s", rulesFile)
	}
}
