package injecttoken

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/cli"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// runCLI runs `caddy inject-token args…` against the test admin endpoint.
func runCLI(stdin string, args ...string) (string, error) {
	var out bytes.Buffer
	err := cli.Run(context.Background(), append(args, "--address", "localhost:2999"), strings.NewReader(stdin), &out)
	return out.String(), err
}

// logFile makes the test's Caddy log INFO and up as JSON to a file, and
// returns the globals to use and a reader of the entries so far.
func logFile(t *testing.T, storage string) (string, func() []map[string]any) {
	path := filepath.Join(t.TempDir(), "caddy.log")
	g := strings.Replace(globals(storage), "skip_install_trust", "skip_install_trust\n\tlog {\n\t\toutput file "+path+"\n\t\tformat json\n\t\tlevel INFO\n\t}", 1)
	return g, func() []map[string]any {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var entries []map[string]any
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				entries = append(entries, m)
			}
		}
		return entries
	}
}

// TestOperatorAnswersSayWhatToDo follows one operator session, against a
// real Caddy and sandbox, from the first code to the revoke: every CLI and
// admin answer names the next step, Retry-After matches who can help, and
// each action logs one INFO line saying who, never a token.
func TestOperatorAnswersSayWhatToDo(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	dir := t.TempDir()
	globalsWithLog, logs := logFile(t, dir)
	g := gateway{storage: dir, upstream: srv.URL, rewrite: "/whoami", block: "session ops\nprelude " + srv.URL}
	cfg := strings.Replace(g.String(), globals(dir), globalsWithLog, 1)
	tester := startConfig(t, cfg)
	a := &adminClient{T: t}

	// Never logged in, no automatic login: only an operator can help, so
	// clients are told to come back in a minute, not every second.
	status, hdr, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "60" {
		t.Errorf("never logged in: %d Retry-After %q, want 503 and 60", status, hdr.Get("Retry-After"))
	}

	// A code sent but not typed in (stdin empty) can be finished later
	// with --code alone; the error says how.
	_, err := runCLI("", "login", "ops", "--email", "ops@example.com")
	if err == nil || !strings.Contains(err.Error(), "caddy inject-token login ops --code <code>") {
		t.Fatalf("login without a code: %v", err)
	}
	if out, err := runCLI("", "status", "ops"); err != nil || !strings.Contains(out, "caddy inject-token login ops --code <code>") {
		t.Fatalf("status with a code pending: %v\n%s", err, out)
	}
	out, err := runCLI("", "login", "ops", "--code", sandbox.DefaultOTPCode)
	if err != nil || !strings.Contains(out, `Logged in: session "ops" as usr_`) {
		t.Fatalf("login --code: %v\n%s", err, out)
	}
	st := a.Call("GET", "/inject_token/sessions/ops", "", http.StatusOK)
	sub, sid := st["sub"].(string), st["sid"].(string)

	// Every command takes the session as its argument.
	for _, args := range [][]string{{"status", "ops"}, {"refresh", "ops"}, {"list", "ops"}} {
		if out, err := runCLI("", args...); err != nil || !strings.Contains(out, sid) && !strings.Contains(out, "ops") {
			t.Errorf("%q: %v\n%s", args, err, out)
		}
	}
	other := newSandboxLogin(t, srv.URL, "ops@example.com")
	if out, err := runCLI("", "revoke", "ops", "--target", "session", "--id", other.SID); err != nil || !strings.Contains(out, "Revoked session "+other.SID) {
		t.Errorf("revoke ops: %v\n%s", err, out)
	}

	// A refused password: one clause per layer, the server's words once,
	// and the next step.
	_, err = runCLI("not-the-password\n", "login", "ops", "--password", "--email", "ops@example.com")
	want := "login ops: the token server refused the login (prelude HTTP 401): "
	if err == nil || !strings.HasPrefix(err.Error(), want) ||
		!strings.HasSuffix(err.Error(), "; check the email address and password (code unauthorized, HTTP 422)") {
		t.Errorf("refused password: %v", err)
	} else if words := strings.TrimPrefix(err.Error(), want); strings.Count(err.Error(), words[:12]) != 1 || strings.Contains(err.Error(), "login: login") {
		t.Errorf("refused password repeats itself: %v", err)
	}

	if out, err := runCLI("", "logout", "ops"); err != nil || !strings.Contains(out, `Session "ops" logged out.`) {
		t.Fatalf("logout ops: %v\n%s", err, out)
	}
	// Logged out by an operator: the proxy's 503 says come back later.
	status, hdr, _ = do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "60" {
		t.Errorf("after operator logout: %d Retry-After %q, want 503 and 60", status, hdr.Get("Retry-After"))
	}

	// --json prints the API's error, with its code and status; the 409
	// names the command to run.
	out, err = runCLI("", "list", "ops", "--json")
	var e struct {
		Error      string `json:"error"`
		Code       string `json:"code"`
		HTTPStatus int    `json:"http_status"`
	}
	if err == nil || json.Unmarshal([]byte(out), &e) != nil || e.Code != adminapi.CodeLoggedOut || e.HTTPStatus != http.StatusConflict ||
		!strings.Contains(e.Error, "log in first: caddy inject-token login ops --email <address>") {
		t.Errorf("list --json while logged out: %v\n%s", err, out)
	}
	out, err = runCLI("", "refresh", "nosuch", "--json")
	if err == nil || json.Unmarshal([]byte(out), &e) != nil || e.Code != adminapi.CodeUnknownSession || e.HTTPStatus != http.StatusNotFound {
		t.Errorf("refresh nosuch --json: %v\n%s", err, out)
	}

	// One INFO line per operator action, saying who; never a token.
	seen := map[string]map[string]any{}
	for _, l := range logs() {
		msg, _ := l["msg"].(string)
		if l["level"] == "info" && l["session"] == "ops" {
			seen[msg] = l
		}
		if raw, _ := json.Marshal(l); bytes.Contains(raw, []byte("eyJ")) {
			t.Errorf("a log entry holds a JWT: %s", raw)
		}
	}
	for _, msg := range []string{"session logged in by operator", "session refreshed by operator", "sessions revoked by operator", "session logged out by operator"} {
		l := seen[msg]
		if l == nil || l["sub"] != sub || l["sid"] != sid {
			t.Errorf("INFO %q: %v (want sub %s sid %s)", msg, l, sub, sid)
		}
		if msg != "session logged out by operator" && l != nil && l["expires_at"] == nil {
			t.Errorf("INFO %q without expires_at: %v", msg, l)
		}
	}
}

// TestStatusTable checks the status table in docs/admin-api.md against what the admin
// API answers, for both backends where a backend is involved.
func TestStatusTable(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	g := gateway{storage: t.TempDir(), upstream: srv.URL, block: "session tbl\nprelude " + srv.URL}
	g.start(t)
	a := &adminClient{T: t}
	check := func(method, path, body string, status int, code string) {
		t.Helper()
		if m := a.Call(method, path, body, status); m["code"] != code || m["error"] == "" {
			t.Errorf("%s %s: %v, want code %q", method, path, m, code)
		}
	}
	check("GET", "/inject_token/sessions/nosuch", "", 404, adminapi.CodeUnknownSession)
	check("GET", "/inject_token/sessions/tbl/nothing", "", 404, adminapi.CodeNotFound)
	check("POST", "/inject_token/sessions/tbl", "", 405, adminapi.CodeMethodNotAllowed)
	check("POST", "/inject_token/sessions/tbl/login/password", `{"email":1}`, 400, adminapi.CodeInvalidRequest)
	check("POST", "/inject_token/sessions/tbl/login/refresh-token", `{"refresh_token":"x"}`, 400, adminapi.CodeWrongBackend)
	check("GET", "/inject_token/sessions/tbl/list", "", 409, adminapi.CodeLoggedOut)
	check("POST", "/inject_token/sessions/tbl/login/otp/check", `{"code":"1"}`, 409, adminapi.CodeNoOTPPending)
	check("POST", "/inject_token/sessions/tbl/login/password", `{"email":"demo@example.com","password":"nope"}`, 422, "unauthorized")
	a.Call("POST", "/inject_token/sessions/tbl/login/password",
		`{"email":"`+sandbox.DemoEmail+`","password":"`+sandbox.DemoPassword+`"}`, 200)
	// The answer to a refresh is lost: the refresh token may be spent, the
	// session ends, and the answer says so and what to do.
	srv.DropAfterRotate(1)
	if m := a.Call("POST", "/inject_token/sessions/tbl/refresh", "", 409); m["code"] != adminapi.CodeLoggedOut ||
		!strings.Contains(m["error"].(string), "is logged out (") || !strings.Contains(m["error"].(string), "caddy inject-token login tbl") {
		t.Errorf("refresh with a lost answer: %v", m)
	}
}

// TestStatusFieldsMatchDocs: every status field docs/admin-api.md lists is in
// the JSON, also for a session that has nothing to show, and the page
// lists every field the JSON has.
func TestStatusFieldsMatchDocs(t *testing.T) {
	readme, err := os.ReadFile("docs/admin-api.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "<!-- status-fields -->")
	section, _, ok2 := strings.Cut(section, "<!-- /status-fields -->")
	if !ok || !ok2 {
		t.Fatal("docs/admin-api.md has no <!-- status-fields --> section")
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_]+)`").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	gateway{storage: t.TempDir(), upstream: srv.URL, block: "session fields\nprelude " + srv.URL}.start(t)
	_, _, body := do(t, http.DefaultClient, http.MethodGet, adminURL+"/inject_token/sessions/fields", nil)
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	for _, f := range documented {
		if _, ok := got[f]; !ok {
			t.Errorf("docs/admin-api.md lists %q; the status JSON of a logged-out session lacks it", f)
		}
	}
	for f := range got {
		if !slices.Contains(documented, f) {
			t.Errorf("status JSON has %q; docs/admin-api.md does not list it", f)
		}
	}
}

// TestURLWithoutScheme: a base URL written without http:// says so.
func TestURLWithoutScheme(t *testing.T) {
	for _, u := range []string{"127.0.0.1:9090", "localhost:9090"} {
		g := gateway{storage: t.TempDir(), upstream: "127.0.0.1:1", block: "session noscheme\nprelude " + u}
		cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(g.String()), nil)
		if err == nil {
			var cfg caddy.Config
			if err = json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&cfg)
		}
		if err == nil || !strings.Contains(err.Error(), "has no scheme") || !strings.Contains(err.Error(), u) {
			t.Errorf("prelude %s: %v", u, err)
		}
	}
}

// TestCommandRegistered: the module brings `caddy inject-token` with it.
func TestCommandRegistered(t *testing.T) {
	if cmd, ok := caddycmd.Commands()["inject-token"]; !ok || cmd.CobraFunc == nil {
		t.Fatal("inject-token is not registered with caddycmd")
	}
}
