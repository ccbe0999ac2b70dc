package peruser_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/peruser"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/seal"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

const (
	alice, alicePW = "alice@example.com", "alice-password"
	bob, bobPW     = "bob@example.com", "bob-password"
	pfx            = "/.inject_token"
)

var (
	sealKey = []byte("0123456789abcdef0123456789abcdef")
	secret  = []byte("template-secret-0123456789")
)

// site is a gateway in front of the sandbox's /whoami echo, on its own
// storage directory (shared when two sites are given the same one).
type site struct {
	t   *testing.T
	srv *sandboxtest.Server
	gw  *peruser.Gateway
	rt  *tokencache.Runtime
	URL string

	logs    *observer.ObservedLogs // the gateway's and the sessions' log lines
	mu      sync.Mutex
	seen    []string // every header value and body the gateway sent a browser
	secrets []string // every token the users' sessions were given
}

func (s *site) grant(g *tokencache.Grant) {
	if g != nil {
		s.mu.Lock()
		s.secrets = append(s.secrets, g.AccessToken, g.RefreshToken)
		s.mu.Unlock()
	}
}

// recSessions and recBackend note every token the sessions get.
type recSessions struct {
	*tokencache.Runtime
	s *site
}

func (r recSessions) Adopt(ctx context.Context, key string, k *dpop.Key, g *tokencache.Grant) error {
	r.s.grant(g)
	return r.Runtime.Adopt(ctx, key, k, g)
}

type recBackend struct {
	prelude.Backend
	s *site
}

func (b recBackend) Refresh(ctx context.Context, key *dpop.Key, rt string) (*tokencache.Grant, error) {
	g, err := b.Backend.Refresh(ctx, key, rt)
	b.s.grant(g)
	return g, err
}

// clock is an adjustable clock for the gateway's lifetimes.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newSandbox(t *testing.T) *sandboxtest.Server {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	srv.AddUser(alice, alicePW)
	srv.AddUser(bob, bobPW)
	return srv
}

func sealedStorage(t *testing.T, dir string) certmagic.Storage {
	sl, err := seal.New(sealKey)
	if err != nil {
		t.Fatal(err)
	}
	return seal.Storage{Storage: &certmagic.FileStorage{Path: dir}, Sealer: sl, Prefix: tokencache.StoragePrefix + "/"}
}

func newSite(t *testing.T, srv *sandboxtest.Server, dir string, mod func(*peruser.Config)) *site {
	t.Helper()
	cl, err := prelude.New(srv.URL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := sealedStorage(t, dir)
	core, logs := observer.New(zap.DebugLevel)
	s := &site{t: t, srv: srv, logs: logs}
	rt, err := tokencache.NewRuntime(tokencache.Template{Name: "users", Secret: secret, Storage: st,
		Backend: recBackend{prelude.Backend{Client: cl}, s}, LockTimeout: 10 * time.Second, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	s.rt = rt
	sl, _ := seal.New(sealKey)
	cfg := peruser.Config{Template: "users", Sessions: recSessions{rt, s}, Storage: st, Sealer: sl, Secret: secret, Prelude: cl, Logger: zap.New(core),
		Headers: []peruser.Header{{Name: "X-Forwarded-User", Claim: "sub"}, {Name: "X-Forwarded-Email", Claim: "email"}}}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := peruser.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	s.gw = gw
	up, _ := url.Parse(srv.URL)
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(up)
		pr.Out.URL.Path = "/whoami"
		pr.Out.Header.Set("Authorization", "Bearer "+pr.In.Context().Value(tokKey{}).(string))
	}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, s: s}
		err := gw.Serve(rec, r, func(w http.ResponseWriter, r *http.Request, u *peruser.User) error {
			rec.proxy = true
			proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokKey{}, u.Token.Value)))
			return nil
		})
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	}))
	t.Cleanup(hs.Close)
	s.URL = hs.URL
	return s
}

type tokKey struct{}

// recorder keeps what the gateway itself sends to browsers (its pages and
// headers; the upstream's echo, which shows the token it received, is
// not the gateway's).
type recorder struct {
	http.ResponseWriter
	s     *site
	proxy bool
}

func (r *recorder) WriteHeader(code int) {
	r.s.mu.Lock()
	for _, vs := range r.Header() {
		r.s.seen = append(r.s.seen, vs...)
	}
	r.s.mu.Unlock()
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.proxy {
		r.s.mu.Lock()
		r.s.seen = append(r.s.seen, string(b))
		r.s.mu.Unlock()
	}
	return r.ResponseWriter.Write(b)
}

// browser is one browser profile: its own cookies, never following
// redirects by itself.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type resp struct {
	status int
	loc    string
	body   string
	hdr    http.Header
}

func (b *browser) do(method, path string, form url.Values, hdr ...string) resp {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", b.base)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	r, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer r.Body.Close()
	out, _ := io.ReadAll(r.Body)
	return resp{status: r.StatusCode, loc: r.Header.Get("Location"), body: string(out), hdr: r.Header}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the CSRF token in page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf token in page: %s", page)
	}
	return m[1]
}

// loginForm loads the login page and returns its CSRF token.
func (b *browser) loginForm() string {
	b.t.Helper()
	r := b.do("GET", pfx+"/login", nil)
	if r.status != 200 {
		b.t.Fatalf("login page: %d %s", r.status, r.body)
	}
	return csrf(b.t, r.body)
}

// login logs in with a password and returns the answer.
func (b *browser) login(email, pw, back string) resp {
	b.t.Helper()
	tok := b.loginForm()
	return b.do("POST", pfx+"/login/password", url.Values{"csrf": {tok}, "email": {email}, "password": {pw}, "return": {back}})
}

// whoami requests the app and decodes the upstream's echo.
func (b *browser) whoami(hdr ...string) (int, sandboxWhoami) {
	b.t.Helper()
	r := b.do("GET", "/app", nil, hdr...)
	var w sandboxWhoami
	if r.status == 200 {
		if err := json.Unmarshal([]byte(r.body), &w); err != nil {
			b.t.Fatalf("echo: %v %s", err, r.body)
		}
	}
	return r.status, w
}

type sandboxWhoami struct {
	Claims  map[string]any    `json:"claims"`
	Headers map[string]string `json:"headers"`
}

func (b *browser) cookies() []*http.Cookie {
	u, _ := url.Parse(b.base)
	return b.c.Jar.Cookies(u)
}
