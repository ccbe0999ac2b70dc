package injecttoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// TestTemplateCaddyfileErrors: template mistakes fail at load, naming the
// line and what was expected.
func TestTemplateCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
		line              int
	}{
		{"no key", "inject_token {\n template users\n prelude https://a.b\n}", "template needs 'key <placeholder>'", 4},
		{"key without template", "inject_token {\n key {http.request.header.X-User}\n prelude https://a.b\n}", "key is a template option: add 'template <name>'", 4},
		{"option without template", "inject_token {\n max_resident 10\n prelude https://a.b\n}", "max_resident is a template option", 4},
		{"session and template", "inject_token {\n session a\n template users\n key {http.request.header.X-User}\n prelude https://a.b\n}", "session and template cannot be combined", 6},
		{"literal key", "inject_token {\n template users\n key alice\n prelude https://a.b\n}", "key: 'alice' has no placeholder", 3},
		{"key args", "inject_token {\n template users\n key\n prelude https://a.b\n}", "key: expected exactly one value", 3},
		{"bad template name", "inject_token {\n template Users\n}", "invalid template name 'Users'", 2},
		{"template dup", "inject_token {\n template a\n template b\n}", "template already specified", 3},
		{"max_resident word", "inject_token {\n template users\n max_resident many\n}", "max_resident: expected a positive whole number, got 'many'", 3},
		{"max_refreshing zero", "inject_token {\n template users\n max_refreshing 0\n}", "max_refreshing: expected a positive whole number", 3},
		{"idle_timeout bad", "inject_token {\n template users\n idle_timeout soon\n}", "idle_timeout: expected a positive duration", 3},
		{"retention negative", "inject_token {\n template users\n retention -1h\n}", "retention: expected a positive duration", 3},
		{"use_window args", "inject_token {\n template users\n use_window 1m 2m\n}", "use_window: expected exactly one value", 3},
		{"login with template", "inject_token {\n template users\n key {http.request.header.X-User}\n prelude https://a.b\n login password a b\n}", "login password is for a named session", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if at := fmt.Sprintf(", at Testfile:%d", tc.line); !strings.Contains(err.Error(), at) {
				t.Errorf("error = %v, want it to name the line (%s)", err, at)
			}
		})
	}

	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		template users
		key {http.request.header.X-Tenant}/{http.request.header.X-User}
		prelude https://a.b
		max_resident 500
		idle_timeout 15m
		retention 720h
		use_window 5m
		max_refreshing 8
	}`))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(h.TemplateSessions)
	want := `{"template":"users","key":"{http.request.header.X-Tenant}/{http.request.header.X-User}","max_resident":500,"idle_timeout":900000000000,"retention":2592000000000000,"use_window":300000000000,"max_refreshing":8}`
	if string(got) != want {
		t.Errorf("JSON = %s\nwant   %s", got, want)
	}
}

// templateGateway is a gateway serving template name by X-User, through
// the inject_token transport, with X-User stripped before the upstream.
func templateGateway(dir, name, prelude, extra string) gateway {
	return gateway{storage: dir, upstream: prelude + " {\n\t\ttransport inject_token\n\t}", rewrite: "/whoami",
		block: fmt.Sprintf(`template %s
		key {http.request.header.X-User}
		prelude %s
		strip_header X-User
		%s`, name, prelude, extra)}
}

// TestTemplateSessions: two users behind one template each get their own
// session and token (the sandbox's /whoami shows each one's sub); a
// request without a user is 401, never a shared session; a reload that
// changes refresh_before keeps every session (no new login, same sid);
// the admin routes list, look up, revoke and erase run-time sessions and
// never answer a secret.
func TestTemplateSessions(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	alice := srv.AddUser("alice@example.com", "alice-pw-1")
	bob := srv.AddUser("bob@example.com", "bob-pw-2")
	name := fmt.Sprintf("users-%d", time.Now().UnixNano()%1e9)
	dir := t.TempDir()
	g := templateGateway(dir, name, srv.URL, "refresh_before 30s")
	tester := g.start(t)
	admin := &adminClient{T: t}

	get := func(user string) (int, []byte) {
		t.Helper()
		var hdr []string
		if user != "" {
			hdr = []string{"X-User", user}
		}
		status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil, hdr...)
		return status, body
	}
	who := func(user string) whoami {
		t.Helper()
		status, body := get(user)
		var w whoami
		if status != http.StatusOK || json.Unmarshal(body, &w) != nil {
			t.Fatalf("GET as %q: %d %s", user, status, body)
		}
		if _, leaked := w.Headers["X-User"]; leaked {
			t.Errorf("X-User reached the upstream")
		}
		return w
	}

	// Not logged in yet: 503 naming the template, never another's token.
	if status, body := get("alice@example.com"); status != http.StatusServiceUnavailable {
		t.Fatalf("before login: %d %s", status, body)
	}
	bobKey := "bob/with slash"
	admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "alice@example.com", adminapi.RoutePassword),
		`{"email":"alice@example.com","password":"alice-pw-1"}`, http.StatusOK)
	st := admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, bobKey, adminapi.RoutePassword),
		`{"email":"bob@example.com","password":"bob-pw-2"}`, http.StatusOK)
	if st["sub"] != bob || st["state"] != "active" {
		t.Errorf("login answer = %v", st)
	}

	wa, wb := who("alice@example.com"), who(bobKey)
	if wa.Claims["sub"] != alice || wb.Claims["sub"] != bob {
		t.Fatalf("subs = %v, %v; want %s, %s", wa.Claims["sub"], wb.Claims["sub"], alice, bob)
	}
	if wa.Headers["Authorization"] == wb.Headers["Authorization"] {
		t.Fatal("two users were sent the same token")
	}

	// No user: 401 with a JSON error, nothing forwarded.
	before := srv.Stats()
	status, body := get("")
	var nu map[string]string
	if status != http.StatusUnauthorized || json.Unmarshal(body, &nu) != nil || !strings.Contains(nu["error"], "no user") || nu["template"] != name {
		t.Fatalf("without X-User: %d %s", status, body)
	}

	// Sessions live under inject_token/<template>/<keyed hash>/, not
	// under the key.
	entries, err := os.ReadDir(filepath.Join(dir, "inject_token", name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "alice") || strings.Contains(e.Name(), "bob") {
			t.Errorf("storage entry %q names a user", e.Name())
		}
	}

	// A reload changing refresh_before keeps both sessions: no login,
	// same sid.
	g2 := templateGateway(dir, name, srv.URL, "refresh_before 45s")
	tester.InitServer(g2.String(), "caddyfile")
	if wa2 := who("alice@example.com"); wa2.Claims["sid"] != wa.Claims["sid"] {
		t.Errorf("sid after reload = %v, want %v", wa2.Claims["sid"], wa.Claims["sid"])
	}
	if wb2 := who(bobKey); wb2.Claims["sid"] != wb.Claims["sid"] {
		t.Errorf("bob's sid after reload = %v, want %v", wb2.Claims["sid"], wb.Claims["sid"])
	}
	if after := srv.Stats(); after.Logins != before.Logins || after.Logins != 2 {
		t.Errorf("logins = %d (were %d), want 2", after.Logins, before.Logins)
	}

	// Admin: templates, paged listing, lookup.
	list := admin.Call(http.MethodGet, adminapi.TemplatesPath, "", http.StatusOK)
	found := false
	for _, v := range list["templates"].([]any) {
		tm := v.(map[string]any)
		if tm["name"] == name {
			found = true
			if c := tm["counts"].(map[string]any); c["active"] != float64(2) {
				t.Errorf("counts = %v, want 2 active", c)
			}
		}
	}
	if !found {
		t.Fatalf("template %s not listed: %v", name, list)
	}
	keys := map[string]bool{}
	cursor := ""
	for page := 0; page < 3; page++ {
		p := admin.Call(http.MethodGet, adminapi.TemplatePath(name, "/sessions")+"?limit=1&cursor="+url.QueryEscape(cursor), "", http.StatusOK)
		for _, s := range p["sessions"].([]any) {
			keys[s.(map[string]any)["key"].(string)] = true
		}
		if cursor, _ = p["next"].(string); cursor == "" {
			break
		}
	}
	if !keys["alice@example.com"] || !keys[bobKey] || len(keys) != 2 {
		t.Errorf("listed keys = %v", keys)
	}
	lk := admin.Call(http.MethodGet, adminapi.TemplateSessionPath(name, bobKey, ""), "", http.StatusOK)
	if lk["sub"] != bob || lk["key"] != bobKey {
		t.Errorf("lookup = %v", lk)
	}
	admin.Call(http.MethodGet, adminapi.TemplateSessionPath(name, "nobody", ""), "", http.StatusNotFound)

	// Revoke bob: his requests stop; alice's go on.
	admin.Call(http.MethodDelete, adminapi.TemplateSessionPath(name, bobKey, ""), "", http.StatusOK)
	if status, body := get(bobKey); status != http.StatusServiceUnavailable {
		t.Errorf("bob after revoke: %d %s", status, body)
	}
	if srv.Stats().Revokes != 1 {
		t.Errorf("sandbox revokes = %d, want 1", srv.Stats().Revokes)
	}
	who("alice@example.com")

	// Erase alice: every trace gone, her requests stop.
	admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "alice@example.com", adminapi.RouteErase), "", http.StatusOK)
	admin.Call(http.MethodGet, adminapi.TemplateSessionPath(name, "alice@example.com", ""), "", http.StatusNotFound)
	if status, body := get("alice@example.com"); status != http.StatusServiceUnavailable {
		t.Errorf("alice after erase: %d %s", status, body)
	}

	admin.AssertNoSecrets("alice-pw-1", "bob-pw-2",
		strings.TrimPrefix(wa.Headers["Authorization"], "Bearer "), strings.TrimPrefix(wb.Headers["Authorization"], "Bearer "))
}
