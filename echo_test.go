package injecttoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// echoStyle is how a hostile server quotes the request it got in its
// error text.
type echoStyle struct {
	name string
	echo func(dump string) string
}

var serverEchoStyles = []echoStyle{
	{"raw", func(d string) string { return d }},
	{"json", func(d string) string { b, _ := json.Marshal(d); return string(b) }},
	{"form", url.QueryEscape},
	{"form lower hex", func(d string) string {
		q := []byte(url.QueryEscape(d))
		for i := 0; i+2 < len(q); i++ {
			if q[i] == '%' {
				q[i+1], q[i+2] = lower(q[i+1]), lower(q[i+2])
			}
		}
		return string(q)
	}},
	{"base64", func(d string) string { return base64.StdEncoding.EncodeToString([]byte(d)) }},
	{"html", html.EscapeString},
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// echoServer answers the requests it is told to with a 400 whose error
// text quotes the whole request (request line, every header, the body) in
// the current style, and records what it was sent; other requests go to
// next (nil: every request is echoed).
type echoServer struct {
	next http.Handler
	mu   sync.Mutex
	on   map[string]bool // paths to echo
	st   echoStyle
	got  []string // every request dump, for the secrets they carried
}

func (e *echoServer) set(st echoStyle, paths ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st, e.on = st, map[string]bool{}
	for _, p := range paths {
		e.on[p] = true
	}
}

func (e *echoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	echo, st := e.next == nil || e.on[r.URL.Path], e.st
	e.mu.Unlock()
	if !echo {
		e.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	// Credentials first: the gateway keeps only the start of the text.
	var d strings.Builder
	d.Write(body)
	for _, h := range []string{"Authorization", "X-Refresh-Token", "X-Verification-Token"} {
		if v := r.Header.Get(h); v != "" {
			fmt.Fprintf(&d, "\n%s: %s", h, v)
		}
	}
	fmt.Fprintf(&d, "\n%s %s", r.Method, r.URL.RequestURI())
	e.mu.Lock()
	e.got = append(e.got, d.String())
	e.mu.Unlock()
	text := st.echo("you sent: " + d.String())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	// Both envelopes: Prelude's code/message and OAuth's error/description.
	_ = json.NewEncoder(w).Encode(map[string]string{"code": "invalid_request", "message": text,
		"error": "invalid_request", "error_description": text})
}

// secretForms are the forms of secret a reader could find in an output:
// raw, form encoded (either hex case), JSON escaped, HTML escaped, base64,
// and base64 of Basic credentials id:secret.
func secretForms(id, secret string) []string {
	j, _ := json.Marshal(secret)
	q := url.QueryEscape(secret)
	return []string{secret, q, strings.ToLower(q), string(j[1 : len(j)-1]), html.EscapeString(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.StdEncoding.EncodeToString([]byte(id + ":" + secret)),
		base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id) + ":" + q))}
}

// assertNoSecret fails when out (an admin answer, a log, an error text)
// holds any form of any secret; JSON outputs are checked decoded as well.
func assertNoSecret(t *testing.T, where, out string, secrets []string) {
	t.Helper()
	views := []string{out}
	var v any
	if json.Unmarshal([]byte(out), &v) == nil {
		views = append(views, jsonStrings(v)...)
	}
	// And decoded, twice, as a reader would: JSON string escapes (an
	// echoed JSON body inside a JSON answer), URL escapes, base64.
	for range 2 {
		for _, view := range views {
			if u, err := strconv.Unquote(`"` + view + `"`); err == nil {
				views = append(views, u)
			}
			if u, err := url.QueryUnescape(view); err == nil {
				views = append(views, u)
			}
			for _, f := range strings.FieldsFunc(view, func(r rune) bool { return strings.ContainsRune(" :\"\\…", r) }) {
				f = strings.TrimRight(f, "=")
				if b, err := base64.RawStdEncoding.DecodeString(f[:len(f)/4*4]); err == nil {
					views = append(views, string(b))
				}
			}
		}
	}
	for _, s := range secrets {
		if len(s) < 6 {
			continue
		}
		for _, f := range secretForms("gw", s) {
			for _, view := range views {
				if strings.Contains(view, f) {
					t.Errorf("%s holds a secret (%q as %q): %.300s", where, s, f, view)
					return
				}
			}
		}
	}
}

// jsonStrings returns every string in a decoded JSON value.
func jsonStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
		return out
	}
	return nil
}

// adminRaw calls the admin API and returns the answer whatever its status.
func adminRaw(t *testing.T, method, path, body string) string {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	_, _, out := do(t, http.DefaultClient, method, adminURL+path, b, "Content-Type", "application/json")
	return string(out)
}

// TestHostileServerEchoes: token servers that echo the whole request in
// their error text, in each style, for each credential the gateway sends
// (password, OTP code, refresh token, access token, client secret by Basic
// and by form, client assertion): no form of it reaches the admin answer,
// the session status, the log, or the backend error's %v / %+v.
func TestHostileServerEchoes(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	sb, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	pe := &echoServer{next: httputil.NewSingleHostReverseProxy(sb)}
	pHost := httptest.NewServer(pe)
	t.Cleanup(pHost.Close)
	oe := &echoServer{}
	oHost := httptest.NewServer(oe)
	t.Cleanup(oHost.Close)

	dir := t.TempDir()
	logFile := filepath.Join(dir, "caddy.log")
	const clientSecret = "s3cr+t/=&x y-CLIENT-SECRET"
	t.Setenv("IT_ECHO_CS", clientSecret)
	ck, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clientKeyD := base64.StdEncoding.EncodeToString(ck.D.Bytes()) // the assertion key's material
	der, _ := x509.MarshalPKCS8PrivateKey(ck)
	keyFile := filepath.Join(dir, "client.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	site := func(port int, block string) string {
		return fmt.Sprintf("http://localhost:%d {\n\tinject_token {\n%s\n\t}\n\trespond ok\n}\n", port, block)
	}
	oauthBlock := func(session, auth string) string {
		cred := "client_secret {env.IT_ECHO_CS}"
		if auth == "private_key_jwt" {
			cred = "client_key {file." + keyFile + "}"
		}
		return fmt.Sprintf("session %s\noauth2 %s/token {\nclient_id gw\n%s\nauth %s\ngrant refresh_token\n}", session, oHost.URL, cred, auth)
	}
	cfg := strings.Replace(globals(dir), "{\n", "{\n\tdebug\n\tlog {\n\t\toutput file "+logFile+"\n\t\tlevel DEBUG\n\t}\n", 1) +
		site(9080, "session echo-p\nprelude "+pHost.URL) +
		site(9081, oauthBlock("echo-ob", "basic")) +
		site(9082, oauthBlock("echo-op", "post")) +
		site(9083, oauthBlock("echo-oj", "private_key_jwt"))
	startConfig(t, cfg)

	const password = `Sec&ret<Pw"2 y+/=`
	const otp = "483920"
	const refreshIn = "rt+abc/def==-HANDED-IN"
	// login logs echo-p in through the sandbox, then echoes path again.
	login := func(path string) {
		st := pe.st
		defer pe.set(st, path)
		pe.set(echoStyle{})
		out := adminRaw(t, "POST", "/inject_token/sessions/echo-p/login/password",
			fmt.Sprintf(`{"email":%q,"password":%q}`, sandbox.DemoEmail, sandbox.DemoPassword))
		if !strings.Contains(out, `"active"`) {
			t.Fatalf("login: %s", out)
		}
	}
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := prelude.New(pHost.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	oc, err := oauth.New(oauth.Config{Settings: oauth.Settings{Endpoint: oHost.URL + "/token", ClientID: "gw", ClientSecret: clientSecret,
		Grant: oauth.GrantRefreshToken}, DPoP: true})
	if err != nil {
		t.Fatal(err)
	}

	type op struct {
		kind, session string
		paths         []string
		run           func() (adminAnswer string, secrets []string)
		direct        func() error // the same exchange through the backend's client
	}
	ops := []op{
		{"password", "echo-p", []string{"/v1/session/login/email/password"}, func() (string, []string) {
			return adminRaw(t, "POST", "/inject_token/sessions/echo-p/login/password",
				fmt.Sprintf(`{"email":"a@b.c","password":%q}`, password)), []string{password}
		}, func() error { _, err := pc.LoginPassword(context.Background(), "a@b.c", password); return err }},
		{"OTP code", "echo-p", []string{"/v1/session/otp/check"}, func() (string, []string) {
			adminRaw(t, "POST", "/inject_token/sessions/echo-p/login/otp", `{"email_address":"`+sandbox.DemoEmail+`"}`)
			return adminRaw(t, "POST", "/inject_token/sessions/echo-p/login/otp/check", `{"code":"`+otp+`"}`), []string{otp}
		}, func() error { _, err := pc.CheckOTP(context.Background(), "vt-0123456789", otp); return err }},
		{"refresh token", "echo-p", []string{"/v1/session/refresh"}, func() (string, []string) {
			login("/v1/session/refresh")
			rt := storedString(t, dir, "echo-p", "refresh_token")
			return adminRaw(t, "POST", "/inject_token/sessions/echo-p/refresh", ""), []string{rt}
		}, func() error { _, err := pc.Refresh(context.Background(), key, refreshIn); return err }},
		{"access token", "echo-p", []string{"/v1/session/me/list"}, func() (string, []string) {
			login("/v1/session/me/list")
			at := storedString(t, dir, "echo-p", "access_token")
			return adminRaw(t, "GET", "/inject_token/sessions/echo-p/list", ""), []string{at}
		}, func() error {
			_, err := pc.ListSessions(context.Background(), "at-0123456789-direct", 0, 0)
			return err
		}},
	}
	for _, o := range []struct{ session, kind string }{
		{"echo-ob", "client secret (basic) and refresh token"},
		{"echo-op", "client secret (post) and refresh token"},
		{"echo-oj", "client assertion and refresh token"},
	} {
		ops = append(ops, op{o.kind, o.session, nil, func() (string, []string) {
			return adminRaw(t, "POST", "/inject_token/sessions/"+o.session+"/login/refresh-token",
				`{"refresh_token":"`+refreshIn+`"}`), []string{refreshIn, clientSecret, clientKeyD}
		}, func() error { _, err := oc.Token(context.Background(), key, refreshIn); return err }})
	}

	for _, st := range serverEchoStyles {
		for _, o := range ops {
			t.Run(st.name+"/"+o.kind, func(t *testing.T) {
				es := pe
				if o.session != "echo-p" {
					es = oe
				}
				es.set(st, o.paths...)
				es.mu.Lock()
				es.got = nil
				es.mu.Unlock()
				answer, secrets := o.run()
				derr := o.direct()
				es.mu.Lock()
				got := slices.Clone(es.got)
				es.mu.Unlock()
				if len(got) == 0 {
					t.Fatalf("the hostile server was not asked; answer %s", answer)
				}
				// What the server saw is what it echoed: a client assertion
				// (made per request) is taken from there.
				for _, d := range got {
					if i := strings.Index(d, "client_assertion="); i >= 0 {
						a, _, _ := strings.Cut(d[i+len("client_assertion="):], "&")
						secrets = append(secrets, a)
					}
				}
				if !strings.Contains(answer, "error") {
					t.Errorf("admin answer is not an error: %s", answer)
				}
				assertNoSecret(t, "admin answer", answer, secrets)
				assertNoSecret(t, "status", adminRaw(t, "GET", "/inject_token/sessions/"+o.session, ""), secrets)
				if derr == nil {
					t.Fatal("direct call succeeded against a hostile server")
				}
				direct := []string{refreshIn, clientSecret, password, otp, "at-0123456789-direct"}
				for _, f := range []string{"%v", "%+v", "%s", "%q"} {
					assertNoSecret(t, "backend error "+f, fmt.Sprintf(f, derr), direct)
				}
				logs, err := os.ReadFile(logFile)
				if err != nil {
					t.Fatal(err)
				}
				assertNoSecret(t, "log", string(logs), secrets)
			})
		}
	}
}
