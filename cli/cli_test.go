package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// TestMain doubles as Caddy's real command line: with CLI_TEST_MAIN set,
// the test binary runs caddycmd.Main with the JSON args in CLI_TEST_ARGS,
// so tests can check exit status and stderr as `caddy inject-token` gives
// them (no server is started; only the fake admin endpoint is contacted).
func TestMain(m *testing.M) {
	if os.Getenv("CLI_TEST_MAIN") == "1" {
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv("CLI_TEST_ARGS")), &args); err != nil {
			panic(err)
		}
		os.Args = append([]string{"caddy"}, args...)
		// As the root package's command.go does.
		caddycmd.RegisterCommand(caddycmd.Command{Name: "inject-token", Usage: Usage, Short: Short, Long: Long,
			CobraFunc: func(cmd *cobra.Command) { Configure(cmd) }})
		caddycmd.Main()
		os.Exit(0)
	}
	now = func() time.Time { return testNow }
	os.Exit(m.Run())
}

// testNow is the clock of relative times in the tests' output.
var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// call is one request the fake admin endpoint received.
type call struct {
	Method, Path, Query, Origin, ContentType string
	Body                                     map[string]any
}

// fakeAdmin serves the shapes of the /inject_token admin routes.
type fakeAdmin struct {
	*httptest.Server
	mu    sync.Mutex
	calls []call
	// fail, when set for "METHOD path", answers with that status and body.
	fail map[string]failure
}

type failure struct {
	status     int
	body       string
	retryAfter string
}

var demoStatus = map[string]any{
	"session":       "demo",
	"state":         "active",
	"auto_login":    true,
	"sub":           "usr_01demo",
	"sid":           "ses_01current",
	"scopes":        []string{"profile"},
	"token_type":    "Bearer",
	"expires_at":    testNow.Add(42 * time.Second).UTC().Format(time.RFC3339),
	"seconds_left":  42,
	"next_refresh":  testNow.Add(22 * time.Second).UTC().Format(time.RFC3339),
	"last_refresh":  testNow.Add(-18 * time.Second).UTC().Format(time.RFC3339),
	"last_outcome":  "refreshed",
	"refresh_count": 3,
	"adopt_count":   1,
	"wait_count":    0,
	"dpop_jkt":      "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
	"dpop_alg":      "ES256",
	"token_header":  map[string]any{"alg": "EdDSA", "kid": "k1"},
	"token_claims":  map[string]any{"sub": "usr_01demo", "sid": "ses_01current"},
	"backend":       "prelude",
	"base_url":      "http://127.0.0.1:9090",
}

func newFakeAdmin(t *testing.T) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{fail: map[string]failure{}}
	mux := http.NewServeMux()
	status := func(w http.ResponseWriter, name string) {
		st := map[string]any{}
		for k, v := range demoStatus {
			st[k] = v
		}
		st["session"] = name
		writeTestJSON(w, st)
	}
	mux.HandleFunc("GET /inject_token/sessions", func(w http.ResponseWriter, r *http.Request) {
		other := map[string]any{"session": "backup", "state": "logged_out", "reason": "refresh response lost", "seconds_left": 0, "refresh_count": 0, "adopt_count": 0, "wait_count": 0, "auto_login": false}
		writeTestJSON(w, map[string]any{"sessions": []any{demoStatus, other}})
	})
	mux.HandleFunc("GET /inject_token/sessions/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") == "nope" {
			w.WriteHeader(http.StatusNotFound)
			writeTestJSON(w, map[string]string{"error": `no session "nope"`, "code": "unknown_session"})
			return
		}
		status(w, r.PathValue("name"))
	})
	for _, p := range []string{"refresh", "logout", "login/otp/check", "login/password"} {
		mux.HandleFunc("POST /inject_token/sessions/{name}/"+p, func(w http.ResponseWriter, r *http.Request) {
			status(w, r.PathValue("name"))
		})
	}
	mux.HandleFunc("POST /inject_token/sessions/{name}/login/otp", func(w http.ResponseWriter, r *http.Request) {
		writeTestJSON(w, map[string]string{"status": "code_sent"})
	})
	mux.HandleFunc("GET /inject_token/sessions/{name}/list", func(w http.ResponseWriter, r *http.Request) {
		writeTestJSON(w, map[string]any{
			"sessions": []map[string]any{
				{"id": "ses_01current", "device_type": "server", "device_model": "caddy", "os_version": "linux", "country_code": "FR", "created_at": "2026-01-02T03:04:05Z", "last_seen_at": "2026-01-02T03:05:05Z", "expires_at": "2026-02-01T03:04:05Z", "current": true},
				{"id": "ses_01phone", "device_type": "mobile", "device_model": "Pixel 9", "os_version": "Android 16", "country_code": "DE", "created_at": "2026-01-01T00:00:00Z", "current": false},
			},
			"total": 2, "limit": 20, "offset": 0,
		})
	})
	mux.HandleFunc("POST /inject_token/sessions/{name}/revoke", func(w http.ResponseWriter, r *http.Request) {
		var b struct{ Target string }
		_ = json.NewDecoder(r.Body).Decode(&b)
		writeTestJSON(w, map[string]any{"target": b.Target, "local_cleared": b.Target == "all" || b.Target == "mine"})
	})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := call{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, Origin: r.Header.Get("Origin"), ContentType: r.Header.Get("Content-Type")}
		if r.Body != nil {
			data, _ := io.ReadAll(r.Body)
			if len(data) > 0 {
				if err := json.Unmarshal(data, &c.Body); err != nil {
					t.Errorf("%s %s: body is not a JSON object: %q", r.Method, r.URL, data)
				}
			}
			r.Body = io.NopCloser(bytes.NewReader(data))
		}
		f.mu.Lock()
		f.calls = append(f.calls, c)
		fl, failing := f.fail[r.Method+" "+r.URL.Path]
		f.mu.Unlock()
		if failing {
			if fl.retryAfter != "" {
				w.Header().Set("Retry-After", fl.retryAfter)
			}
			w.WriteHeader(fl.status)
			io.WriteString(w, fl.body)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func writeTestJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeAdmin) failOn(route string, fl failure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[route] = fl
}

func (f *fakeAdmin) addr() string { return strings.TrimPrefix(f.URL, "http://") }

func (f *fakeAdmin) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// run executes a command line against f with stdin in and returns the
// output (stdout and prompts together) and the error.
func (f *fakeAdmin) run(t *testing.T, in string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	args = append(args, "--address", f.addr())
	err := Run(context.Background(), args, strings.NewReader(in), &out)
	return out.String(), err
}

func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output lacks %q:\n%s", sub, s)
		}
	}
}

func TestStatusOne(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "status", "demo")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "session demo: active", "usr_01demo", "ses_01current", "Bearer, expires in 42s",
		"refreshed 18s ago", "refreshed 3, adopted 1", "ES256 jkt=0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
		"prelude http://127.0.0.1:9090", "auto login    yes")
	calls := f.Calls()
	if len(calls) != 1 || calls[0].Method != "GET" || calls[0].Path != "/inject_token/sessions/demo" {
		t.Fatalf("calls = %+v", calls)
	}
	if calls[0].Origin != f.URL {
		t.Errorf("Origin = %q, want %q (Caddy's admin endpoint checks it)", calls[0].Origin, f.URL)
	}
}

func TestStatusAll(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "status")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "SESSION", "STATE", "DPOP JKT", "demo", "active", "in 42s", "0ZcOCORZNYy-…",
		"backup", "logged_out", "no token", "backup: refresh response lost")
	if c := f.Calls(); len(c) != 1 || c[0].Path != "/inject_token/sessions" {
		t.Fatalf("calls = %+v", c)
	}
}

func TestStatusSessionFlagAndConflict(t *testing.T) {
	f := newFakeAdmin(t)
	if _, err := f.run(t, "", "status", "--session", "demo"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.run(t, "", "status", "demo", "--session", "other"); err == nil {
		t.Fatal("status with two different session names succeeded")
	}
	if _, err := f.run(t, "", "status", "a", "b"); err == nil {
		t.Fatal("status with two arguments succeeded")
	}
	if n := len(f.Calls()); n != 1 {
		t.Fatalf("%d admin calls, want 1", n)
	}
}

func TestJSONIsTheServerAnswer(t *testing.T) {
	f := newFakeAdmin(t)
	for _, args := range [][]string{
		{"status", "demo"}, {"status"}, {"refresh", "-s", "demo"}, {"logout", "-s", "demo"},
		{"list", "-s", "demo"}, {"revoke", "-s", "demo", "--target", "others"},
		{"login", "-s", "demo", "--email", "demo@example.com", "--code", "123456"},
	} {
		out, err := f.run(t, "", append(args, "--json")...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v --json: output is not one JSON object: %v\n%s", args, err, out)
		}
		if args[0] == "status" && len(args) == 2 && (v["dpop_jkt"] != demoStatus["dpop_jkt"] || v["base_url"] == nil) {
			t.Errorf("status --json lost fields: %v", v)
		}
		if args[0] == "list" && v["total"] != float64(2) {
			t.Errorf("list --json = %v", v)
		}
	}
}

func TestLoginOTPPromptsForCode(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "  123456 \n", "login", "--session", "demo", "--email", "demo@example.com")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "A code was sent to demo@example.com. Enter it: ", `Logged in: session "demo" as usr_01demo`)
	c := f.Calls()
	if len(c) != 2 {
		t.Fatalf("calls = %+v", c)
	}
	if c[0].Method != "POST" || c[0].Path != "/inject_token/sessions/demo/login/otp" ||
		c[0].Body["email_address"] != "demo@example.com" || len(c[0].Body) != 1 || c[0].ContentType != "application/json" {
		t.Errorf("first call = %+v", c[0])
	}
	if c[1].Path != "/inject_token/sessions/demo/login/otp/check" || c[1].Body["code"] != "123456" || len(c[1].Body) != 1 {
		t.Errorf("second call = %+v", c[1])
	}
}

func TestLoginOTPWithCodeFlagReadsNothing(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "999999\n", "login", "-s", "demo", "--phone", "+33612345678", "--code", "123456")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "Enter it") {
		t.Errorf("prompted although --code was given:\n%s", out)
	}
	c := f.Calls()
	if len(c) != 2 || c[0].Body["phone_number"] != "+33612345678" || c[1].Body["code"] != "123456" {
		t.Fatalf("calls = %+v", c)
	}
}

func TestLoginOTPJSONKeepsPromptOffStdout(t *testing.T) {
	f := newFakeAdmin(t)
	var out, errOut bytes.Buffer
	err := RunIO(context.Background(), []string{"login", "-s", "demo", "--email", "a@b.c", "--json", "--address", f.addr()},
		strings.NewReader("123456\n"), &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out.Bytes()) {
		t.Errorf("stdout is not JSON: %q", out.String())
	}
	mustContain(t, errOut.String(), "Enter it")
}

func TestLoginOTPNoCode(t *testing.T) {
	f := newFakeAdmin(t)
	_, err := f.run(t, "", "login", "-s", "demo", "--email", "a@b.c")
	if err == nil || !strings.Contains(err.Error(), "reading the code") {
		t.Fatalf("err = %v", err)
	}
	_, err = f.run(t, "\n", "login", "-s", "demo", "--email", "a@b.c")
	if err == nil || !strings.Contains(err.Error(), "no code entered") {
		t.Fatalf("err = %v", err)
	}
	for _, c := range f.Calls() {
		if strings.HasSuffix(c.Path, "/check") {
			t.Errorf("checked a code that was never entered: %+v", c)
		}
	}
}

const secret = "s3cret pass"

func TestLoginPasswordFromStdin(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	f := newFakeAdmin(t)
	out, err := f.run(t, secret+"\r\nsecond line\n", "login", "-s", "demo", "--password", "--email", "demo@example.com")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "Logged in")
	if strings.Contains(out, "s3cret") {
		t.Fatalf("password echoed:\n%s", out)
	}
	c := f.Calls()
	if len(c) != 1 || c[0].Path != "/inject_token/sessions/demo/login/password" ||
		c[0].Body["email"] != "demo@example.com" || c[0].Body["password"] != secret || len(c[0].Body) != 2 {
		t.Fatalf("calls = %+v", c)
	}
}

func TestLoginPasswordFromEnv(t *testing.T) {
	t.Setenv(PasswordEnv, secret)
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "login", "-s", "demo", "--password", "--email", "demo@example.com", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "s3cret") {
		t.Fatalf("password echoed:\n%s", out)
	}
	if c := f.Calls(); len(c) != 1 || c[0].Body["password"] != secret {
		t.Fatalf("calls = %+v", c)
	}
}

func TestLoginPasswordMissing(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	f := newFakeAdmin(t)
	_, err := f.run(t, "", "login", "--password", "--email", "demo@example.com")
	if err == nil || !strings.Contains(err.Error(), PasswordEnv) {
		t.Fatalf("err = %v", err)
	}
	if len(f.Calls()) != 0 {
		t.Fatal("contacted the server without a password")
	}
}

func TestPasswordNeverTakenFromArguments(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	f := newFakeAdmin(t)
	for _, args := range [][]string{
		{"login", "--email", "a@b.c", "--password=" + secret},
		{"login", "--email", "a@b.c", "--password", secret},
		{"login", "--email", "a@b.c", "--password", "hunter2"},
	} {
		out, err := f.run(t, "", args...)
		if err == nil {
			t.Fatalf("%q succeeded", args)
		}
		for _, s := range []string{out, err.Error()} {
			if strings.Contains(s, "s3cret") || strings.Contains(s, "hunter2") {
				t.Errorf("%q: the password shows in %q", args, s)
			}
		}
	}
	for _, c := range f.Calls() {
		// The argument is checked against the configured sessions (so it
		// is never echoed); nothing else may be sent.
		if c.Method != "GET" || c.Path != "/inject_token/sessions" {
			t.Fatalf("sent %+v", c)
		}
	}
}

func TestArgumentValidation(t *testing.T) {
	f := newFakeAdmin(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"login", "--password"}, "needs --email"},
		{[]string{"login", "--email", "a@b.c", "--phone", "+1"}, "not both"},
		{[]string{"login", "--password", "--phone", "+1"}, "takes --email"},
		{[]string{"login", "--password", "--email", "a@b.c", "--code", "1"}, "--code"},
		{[]string{"revoke"}, "--target is required"},
		{[]string{"revoke", "--target", "session"}, "needs --id"},
		{[]string{"revoke", "--target", "others", "--id", "ses_1"}, "--id goes with --target session"},
		{[]string{"revoke", "--target", "everyone"}, `unknown --target "everyone"`},
		{[]string{"list", "--limit", "-1"}, "must not be negative"},
		{[]string{"list", "--limit", "ten"}, "invalid argument"},
		{[]string{"refresh", "a", "b"}, "accepts at most 1 arg"},
		{[]string{"list", "a", "-s", "b"}, `session named twice: "a" and --session "b"`},
		{[]string{"login", "demo", "--refresh-token", "--code", "1"}, "--refresh-token takes no"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"status", "--nope"}, "unknown flag"},
	} {
		_, err := f.run(t, "", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	if c := f.Calls(); len(c) != 0 {
		t.Fatalf("invalid command lines reached the server: %+v", c)
	}
}

func TestHelpNeedsNoServer(t *testing.T) {
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"--help"}, strings.NewReader(""), &out); err != nil {
		t.Fatal(err)
	}
	mustContain(t, out.String(), "login", "status", "refresh", "logout", "list", "revoke", "--address", "--json")
	out.Reset()
	if err := Run(context.Background(), []string{"login", "--help"}, strings.NewReader(""), &out); err != nil {
		t.Fatal(err)
	}
	mustContain(t, out.String(), PasswordEnv, "--code", "--phone")
}

func TestServerErrorRendering(t *testing.T) {
	f := newFakeAdmin(t)
	f.failOn("POST /inject_token/sessions/demo/refresh", failure{status: 503, retryAfter: "7",
		body: `{"error":"session \"demo\" is logged out: refresh token reused","code":"logged_out"}`})
	f.failOn("POST /inject_token/sessions/demo/logout", failure{status: 502, body: "upstream exploded\n"})
	f.failOn("POST /inject_token/sessions/demo/login/otp/check", failure{status: 400, body: `{"error":"wrong code","code":"invalid_otp"}`})

	_, err := f.run(t, "", "refresh", "-s", "demo")
	var ae *APIError
	if !errors.As(err, &ae) || ae.HTTPStatus != 503 || ae.Code != "logged_out" || ae.RetryAfter != "7" {
		t.Fatalf("err = %#v", err)
	}
	mustContain(t, err.Error(), "refresh demo: ", "refresh token reused", "code logged_out", "HTTP 503", "retry after 7s")

	_, err = f.run(t, "", "logout", "-s", "demo", "--json")
	if err == nil {
		t.Fatal("logout succeeded on HTTP 502")
	}
	mustContain(t, err.Error(), "upstream exploded", "HTTP 502")

	_, err = f.run(t, "000000\n", "login", "-s", "demo", "--email", "a@b.c")
	if err == nil {
		t.Fatal("login succeeded with a refused code")
	}
	mustContain(t, err.Error(), "wrong code", "code invalid_otp", "HTTP 400")

	_, err = f.run(t, "", "status", "nope")
	mustContain(t, err.Error(), `no session "nope"`, "code unknown_session", "HTTP 404")
}

func TestUnreachableAdmin(t *testing.T) {
	f := newFakeAdmin(t)
	addr := f.addr()
	f.Close()
	var out bytes.Buffer
	err := Run(context.Background(), []string{"status", "--address", addr}, strings.NewReader(""), &out)
	if err == nil {
		t.Fatal("status succeeded with no admin endpoint")
	}
	mustContain(t, err.Error(), "cannot reach the Caddy admin API at "+addr, "CADDY_ADMIN")
}

func TestAddressResolution(t *testing.T) {
	f := newFakeAdmin(t)
	t.Setenv("CADDY_ADMIN", f.addr())
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"status", "demo"}, strings.NewReader(""), &out); err != nil {
		t.Fatalf("CADDY_ADMIN not honoured: %v", err)
	}
	// --address wins over CADDY_ADMIN; an http:// URL is accepted too.
	g := newFakeAdmin(t)
	if err := Run(context.Background(), []string{"status", "demo", "--address", g.URL}, strings.NewReader(""), &out); err != nil {
		t.Fatal(err)
	}
	if len(f.Calls()) != 1 || len(g.Calls()) != 1 {
		t.Fatalf("calls: env server %d, flag server %d", len(f.Calls()), len(g.Calls()))
	}
	t.Setenv("CADDY_ADMIN", "")
	if got := ResolveAddress(""); got != DefaultAddress {
		t.Errorf("ResolveAddress = %q", got)
	}
	if _, err := NewClient("https://localhost:2019"); err == nil {
		t.Error("https admin address accepted")
	}
	if _, err := NewClient("localhost:2019-2020"); err == nil {
		t.Error("port range accepted")
	}
}

func TestSessionNameIsEscaped(t *testing.T) {
	f := newFakeAdmin(t)
	if _, err := f.run(t, "", "refresh", "-s", "a/b c"); err != nil {
		t.Fatal(err)
	}
	if c := f.Calls(); c[0].Path != "/inject_token/sessions/"+url.PathEscape("a/b c")+"/refresh" {
		t.Fatalf("path = %q", c[0].Path)
	}
}

func TestDefaultSession(t *testing.T) {
	f := newFakeAdmin(t)
	if _, err := f.run(t, "", "refresh"); err != nil {
		t.Fatal(err)
	}
	if c := f.Calls(); c[0].Path != "/inject_token/sessions/default/refresh" {
		t.Fatalf("path = %q", c[0].Path)
	}
}

func TestList(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "list", "-s", "demo", "--limit", "5", "--offset", "10")
	if err != nil {
		t.Fatal(err)
	}
	c := f.Calls()
	if len(c) != 1 || c[0].Path != "/inject_token/sessions/demo/list" || c[0].Query != "limit=5&offset=10" {
		t.Fatalf("calls = %+v", c)
	}
	lines := strings.Split(out, "\n")
	var cur, other string
	for _, l := range lines {
		switch {
		case strings.Contains(l, "ses_01current"):
			cur = l
		case strings.Contains(l, "ses_01phone"):
			other = l
		}
	}
	if !strings.HasPrefix(cur, "* ses_01current") || !strings.HasPrefix(other, "  ses_01phone") {
		t.Fatalf("current session not marked:\n%s", out)
	}
	mustContain(t, out, "server caddy", "Pixel 9", "Android 16", "DE", "of 2")
	if _, err := f.run(t, "", "list"); err != nil {
		t.Fatal(err)
	}
	if c := f.Calls(); c[1].Query != "" {
		t.Errorf("default list sent query %q", c[1].Query)
	}
}

func TestRevoke(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "revoke", "-s", "demo", "--target", "session", "--id", "ses_01phone")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "Revoked session ses_01phone.")
	if strings.Contains(out, "cleared locally") {
		t.Errorf("claimed a local clear the server did not report:\n%s", out)
	}
	out, err = f.run(t, "", "revoke", "-s", "demo", "--target", "all")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "Revoked all sessions of the user.", `Session "demo" was cleared locally`)
	c := f.Calls()
	if len(c) != 2 || c[0].Body["target"] != "session" || c[0].Body["session_id"] != "ses_01phone" ||
		c[1].Body["target"] != "all" || c[1].Body["session_id"] != nil {
		t.Fatalf("calls = %+v", c)
	}
}

func TestLogoutAndRefresh(t *testing.T) {
	f := newFakeAdmin(t)
	out, err := f.run(t, "", "logout", "-s", "demo")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, `Session "demo" logged out.`)
	out, err = f.run(t, "", "refresh", "-s", "demo")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "session demo: active")
	c := f.Calls()
	if len(c) != 2 || c[0].Method != "POST" || c[0].Path != "/inject_token/sessions/demo/logout" || c[1].Path != "/inject_token/sessions/demo/refresh" {
		t.Fatalf("calls = %+v", c)
	}
}

// caddyMain runs `caddy <args>` through caddycmd.Main in a child process.
func caddyMain(t *testing.T, stdin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a child process")
	}
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "CLI_TEST_MAIN=1", "CLI_TEST_ARGS="+string(a)), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestExitStatusThroughCaddy(t *testing.T) {
	f := newFakeAdmin(t)
	f.failOn("POST /inject_token/sessions/demo/refresh", failure{status: 409, body: `{"error":"session is logged out","code":"logged_out"}`})

	out, errOut, code := caddyMain(t, "", nil, "inject-token", "status", "demo", "--address", f.addr())
	if code != 0 {
		t.Fatalf("status: exit %d, stderr:\n%s", code, errOut)
	}
	mustContain(t, out, "session demo: active")

	_, errOut, code = caddyMain(t, "", nil, "inject-token", "refresh", "-s", "demo", "--address", f.addr())
	if code == 0 {
		t.Fatal("refresh refused by the server exited 0")
	}
	mustContain(t, errOut, "session is logged out", "code logged_out", "HTTP 409")

	_, _, code = caddyMain(t, "", nil, "inject-token", "revoke", "--address", f.addr())
	if code == 0 {
		t.Fatal("revoke without --target exited 0")
	}

	out, errOut, code = caddyMain(t, secret+"\n", []string{PasswordEnv + "="}, "inject-token", "login", "-s", "demo", "--password", "--email", "demo@example.com", "--address", f.addr())
	if code != 0 {
		t.Fatalf("login: exit %d, stderr:\n%s", code, errOut)
	}
	if strings.Contains(out+errOut, "s3cret") {
		t.Fatal("password echoed by the real command line")
	}
}
