package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/cli"
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
		t.Run(tc.name, func(t *testing.T) { wantCaddyfileError(t, tc.input, tc.want, tc.line) })
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

	// Metrics: per template, never per user.
	m := scrapeMetrics(t)
	if g := m.match("caddy_inject_token_template_sessions", "template", name, "state", "active"); len(g) != 1 || g[0].value != 2 {
		t.Errorf("template_sessions{active} = %v, want one series of 2", g)
	}
	if r := m.match("caddy_inject_token_requests_total", "session", name, "result", resultNoUser); len(r) != 1 || r[0].value != 1 {
		t.Errorf("requests_total{no_user} = %v, want 1", r)
	}
	if r := m.match("caddy_inject_token_requests_total", "session", name, "result", resultInjected); len(r) != 1 || r[0].value != 2 {
		t.Errorf("requests_total{injected} = %v, want 2", r)
	}
	for _, x := range m {
		for _, v := range x.labels {
			if strings.Contains(v, "alice") || strings.Contains(v, "bob") {
				t.Errorf("series %v is labelled with a user", x)
			}
		}
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
	residentOf := func() any {
		t.Helper()
		return admin.Call(http.MethodGet, adminapi.TemplatePath(name, ""), "", http.StatusOK)["resident"]
	}
	if r := residentOf(); r != float64(2) {
		t.Fatalf("resident before reload = %v, want 2", r)
	}
	g2 := templateGateway(dir, name, srv.URL, "refresh_before 45s")
	tester.InitServer(g2.String(), "caddyfile")
	// Swapped in place: the resident sessions were neither dropped nor
	// reloaded from storage.
	if r := residentOf(); r != float64(2) {
		t.Errorf("resident after reload = %v, want 2 (the reload rebuilt the template)", r)
	}
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
	// The CLI shows the same.
	var out bytes.Buffer
	if err := cli.Run(context.Background(), []string{"templates", name, "--address", adminURL}, strings.NewReader(""), &out); err != nil ||
		!strings.Contains(out.String(), "alice@example.com  active  sub "+alice) || !strings.Contains(out.String(), bobKey+"  active") {
		t.Errorf("caddy inject-token templates %s: %v\n%s", name, err, out.String())
	}
	out.Reset()
	if err := cli.Run(context.Background(), []string{"templates", "--address", adminURL}, strings.NewReader(""), &out); err != nil ||
		!strings.Contains(out.String(), name+"  (prelude") || !strings.Contains(out.String(), "active 2") {
		t.Errorf("caddy inject-token templates: %v\n%s", err, out.String())
	}
	lk := admin.Call(http.MethodGet, adminapi.TemplateSessionPath(name, bobKey, ""), "", http.StatusOK)
	if lk["sub"] != bob || lk["key"] != bobKey {
		t.Errorf("lookup = %v", lk)
	}
	admin.Call(http.MethodGet, adminapi.TemplateSessionPath(name, "nobody", ""), "", http.StatusNotFound)
	admin.Call(http.MethodDelete, adminapi.TemplateSessionPath(name, "nobody", ""), "", http.StatusNotFound)
	admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "nobody", adminapi.RouteErase), "", http.StatusNotFound)
	admin.Call(http.MethodGet, adminapi.TemplatePath("no-such-template", "/sessions"), "", http.StatusNotFound)

	// A one-time-code login waits for its code per key, across requests.
	carol := srv.AddUser("carol@example.com", "carol-pw-3")
	otp := adminapi.TemplateSessionPath(name, "carol", adminapi.RouteOTPStart)
	if m := admin.Call(http.MethodPost, otp, `{"email_address":"carol@example.com"}`, http.StatusOK); m["status"] != "code_sent" {
		t.Fatalf("otp start = %v", m)
	}
	admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "dave", adminapi.RouteOTPCheck), `{"code":"`+sandbox.DefaultOTPCode+`"}`, http.StatusConflict)
	admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "carol", adminapi.RouteOTPCheck), `{"code":"000000"}`, http.StatusUnprocessableEntity)
	if st := admin.Call(http.MethodPost, adminapi.TemplateSessionPath(name, "carol", adminapi.RouteOTPCheck), `{"code":"`+sandbox.DefaultOTPCode+`"}`, http.StatusOK); st["sub"] != carol {
		t.Errorf("otp login answer = %v", st)
	}
	if w := who("carol"); w.Claims["sub"] != carol {
		t.Errorf("carol's sub = %v, want %s", w.Claims["sub"], carol)
	}

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

// TestPlaceholderKey: a request's key is every placeholder of key resolved,
// and no key at all when any of them is empty or unknown (never a shared
// or partial key); one header is read directly, with the placeholder's
// value (several values joined with ",").
func TestPlaceholderKey(t *testing.T) {
	for _, tc := range []struct {
		key     string
		headers []string
		want    string // "" = refused
	}{
		{"{http.request.header.X-User}", []string{"X-User", "alice"}, "alice"},
		{"{http.request.header.X-User}", []string{"X-User", "a", "X-User", "b"}, "a,b"},
		{"{http.request.header.X-User}", nil, ""},
		{"{http.request.header.X-User}", []string{"X-User", ""}, ""},
		{"{http.request.header.X-User}", []string{"X-User", strings.Repeat("a", maxKeyLen+1)}, ""},
		{"{http.request.header.X-Tenant}/{http.request.header.X-User}", []string{"X-Tenant", "t1", "X-User", "bob"}, "t1/bob"},
		{"{http.request.header.X-Tenant}/{http.request.header.X-User}", []string{"X-Tenant", "t1"}, ""},
		{"tenant-{http.request.header.X-User}", nil, ""},
		{"{http.request.no_such_placeholder}", []string{"X-User", "alice"}, ""},
	} {
		r := httptest.NewRequest(http.MethodGet, "http://gw/", nil)
		for i := 0; i+1 < len(tc.headers); i += 2 {
			r.Header.Add(tc.headers[i], tc.headers[i+1])
		}
		repl := caddyhttp.NewTestReplacer(r)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		got, err := placeholderKey(tc.key)(r)
		if tc.want == "" && err == nil || tc.want != "" && (err != nil || got != tc.want) {
			t.Errorf("key %s with %q: %q, %v; want %q", tc.key, tc.headers, got, err, tc.want)
		}
	}
}

// TestTemplateProvisionErrors: the JSON config path refuses what the
// Caddyfile does, and a template cannot take a live session's name (both
// would live under inject_token/<name>/).
func TestTemplateProvisionErrors(t *testing.T) {
	storage, _ := json.Marshal(map[string]string{"module": "file_system", "root": t.TempDir()})
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: storage})
	if err != nil {
		t.Fatal(err)
	}
	key := "{http.request.header.X-User}"
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: "users"}}, "template needs 'key <placeholder>'"},
		{Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: "users", Key: "alice"}}, "has no placeholder"},
		{Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Key: key}}, "key is a template option"},
		{Handler{Prelude: "http://127.0.0.1:9", Session: "s", TemplateSessions: TemplateSessions{Template: "users", Key: key}}, "session and template cannot be combined"},
		{Handler{Prelude: "http://127.0.0.1:9", Login: &Login{Method: "password", Email: "a", Password: "{env.X}"},
			TemplateSessions: TemplateSessions{Template: "users", Key: key}}, "login password is for a named session"},
		{Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: "Users", Key: key}}, "invalid template name"},
		{Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: "users", Key: key, MaxResident: -1}}, "must not be negative"},
	} {
		h := tc.h
		if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error = %v, want %q", tc.h.TemplateSessions, err, tc.want)
			h.Cleanup()
		}
	}

	name := fmt.Sprintf("clash-%d", time.Now().UnixNano()%1e9)
	named := &Handler{Session: name, Prelude: "http://127.0.0.1:9"}
	if err := named.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer named.Cleanup()
	tmpl := &Handler{Prelude: "http://127.0.0.1:9", TemplateSessions: TemplateSessions{Template: name, Key: key}}
	if err := tmpl.Provision(ctx); err == nil || !strings.Contains(err.Error(), "has the name of a session") {
		t.Errorf("template named as a live session: %v", err)
		tmpl.Cleanup()
	}
}

// TestTemplateSecretCreatedOnce: instances starting together on one
// storage agree on one secret (created under the storage lock, read again
// inside it), and it survives: a later load returns it unchanged.
func TestTemplateSecretCreatedOnce(t *testing.T) {
	dir := t.TempDir()
	const n = 3
	secrets := make([][]byte, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &certmagic.FileStorage{Path: dir} // an instance of its own
			<-start
			s, err := loadTemplateSecret(context.Background(), st, "users")
			if err != nil {
				t.Error(err)
			}
			secrets[i] = s
		}()
	}
	close(start)
	wg.Wait()
	for i := range secrets {
		if len(secrets[i]) != templateSecretSize || !bytes.Equal(secrets[i], secrets[0]) {
			t.Fatalf("instance %d got another secret (%d bytes)", i, len(secrets[i]))
		}
	}
	again, err := loadTemplateSecret(context.Background(), &certmagic.FileStorage{Path: dir}, "users")
	if err != nil || !bytes.Equal(again, secrets[0]) {
		t.Errorf("reloaded secret differs: %v", err)
	}
}
