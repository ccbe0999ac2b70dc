package injecttoken

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// These tests follow one request through a real Caddy: the handler strips
// what the client sent, the transport presents the token and owns the
// exchange with the upstream. Each hole a client could use has its test.

// seen is one request as the recording upstream received it.
type seen struct {
	Method, Path, Token, DPoP string
	Trailer                   http.Header
	Body                      string
}

// recordingUpstream answers 200 with a JSON echo to a request carrying a
// token the sandbox issued and that was not rejected, and 401 otherwise.
// It records every request it receives.
type recordingUpstream struct {
	*httptest.Server
	mu       sync.Mutex
	rejected map[string]bool
	log      []seen
}

func newRecordingUpstream(t *testing.T, srv *sandboxtest.Server) *recordingUpstream {
	u := &recordingUpstream{rejected: map[string]bool{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		u.mu.Lock()
		u.log = append(u.log, seen{Method: r.Method, Path: r.URL.Path, Token: tok, DPoP: r.Header.Get("DPoP"),
			Trailer: r.Trailer.Clone(), Body: string(body)})
		bad := u.rejected[tok]
		u.mu.Unlock()
		if r.Method == http.MethodTrace { // a reflecting upstream
			w.Header().Set("Content-Type", "message/http")
			_ = r.Write(w)
			return
		}
		if _, err := srv.VerifyAccessToken(tok); err != nil || bad {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, "rejected by upstream")
			return
		}
		w.Header().Set("X-Upstream", "ok")
		_ = json.NewEncoder(w).Encode(map[string]any{"path": r.URL.Path, "body": string(body)})
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *recordingUpstream) reject(tok string) {
	u.mu.Lock()
	u.rejected[tok] = true
	u.mu.Unlock()
}

func (u *recordingUpstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.log...)
}

func (u *recordingUpstream) reset() {
	u.mu.Lock()
	u.log = nil
	u.mu.Unlock()
}

// preludeBlock is an inject_token block for a logged-in Prelude session.
func preludeBlock(name string, srv *sandboxtest.Server, extra string) string {
	return fmt.Sprintf(`inject_token {
		session %s
		prelude %s
		login password %s %s
		%s
	}`, name, srv.URL, sandbox.DemoEmail, sandbox.DemoPassword, extra)
}

// siteConfig is a one-site Caddyfile on :9080.
func siteConfig(dir, body string) string {
	return globals(dir) + "http://localhost:9080 {\n" + body + "\n}\n"
}

// TestRejectedTokenRetriedByTransport: with path-changing directives in
// front of reverse_proxy, a rejected token is retried by the transport on
// the exact request the upstream received: the client gets the upstream's
// retried 200 and the upstream saw the same path twice. Without the
// transport the client gets the upstream's own 401, never a response the
// upstream did not send, and the next request carries a fresh token.
func TestRejectedTokenRetriedByTransport(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	host := strings.TrimPrefix(up.URL, "http://")
	routes := []struct{ name, route, path, want string }{
		{"handle_path", "handle_path /api/* {\n\t\treverse_proxy %s %s\n\t}", "/api/items", "/items"},
		{"uri strip_prefix", "uri strip_prefix /api\n\treverse_proxy %s %s", "/api/items", "/items"},
		{"rewrite", "rewrite * /v1{uri}\n\treverse_proxy %s %s", "/items", "/v1/items"},
		{"handle", "handle /api/* {\n\t\treverse_proxy %s %s\n\t}", "/api/items", "/api/items"},
	}
	for _, transport := range []bool{true, false} {
		for i, rt := range routes {
			t.Run(fmt.Sprintf("%s transport=%v", rt.name, transport), func(t *testing.T) {
				name := fmt.Sprintf("rp-%d-%v", i, transport)
				dir := t.TempDir()
				tr := ""
				if transport {
					tr = "{\n\t\ttransport inject_token\n\t}"
				}
				tester := startConfig(t, siteConfig(dir, preludeBlock(name, srv, "")+"\n\t"+fmt.Sprintf(rt.route, host, tr)))
				if status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080"+rt.path, nil); status != http.StatusOK {
					t.Fatalf("first request: %d %s", status, body)
				}
				tok1 := storedString(t, dir, name, "access_token")
				up.reject(tok1)
				up.reset()

				status, hdr, body := do(t, tester.Client, http.MethodPost, "http://localhost:9080"+rt.path, []byte("payload"))
				log := up.requests()
				if transport {
					if status != http.StatusOK || hdr.Get("X-Upstream") != "ok" || !strings.Contains(string(body), `"body":"payload"`) {
						t.Fatalf("got %d %v %q; want the upstream's retried 200", status, hdr, body)
					}
					if len(log) != 2 || log[0].Path != rt.want || log[1].Path != rt.want ||
						log[0].Token != tok1 || log[1].Token == tok1 || log[1].Body != "payload" {
						t.Fatalf("upstream saw %+v; want %s twice, first with the rejected token", log, rt.want)
					}
					return
				}
				if status != http.StatusUnauthorized || string(body) != "rejected by upstream" {
					t.Fatalf("got %d %q; want the upstream's own 401", status, body)
				}
				if len(log) != 1 || log[0].Path != rt.want {
					t.Fatalf("upstream saw %+v", log)
				}
				// No retry without the transport, but the next request
				// carries a fresh token.
				if status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080"+rt.path, nil); status != http.StatusOK {
					t.Fatalf("next request: %d %s", status, body)
				}
			})
		}
	}
}

// TestConnectionHeaderCannotDropToken: a client naming Authorization in
// Connection would make reverse_proxy drop the injected header as
// hop-by-hop; the upstream must still get the token, and the 401s of such
// requests must not spend the refresh budget.
func TestConnectionHeaderCannotDropToken(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	dir := t.TempDir()
	tester := startConfig(t, siteConfig(dir, preludeBlock("conn-hop", srv, "strip_header X-Secret")+
		"\n\treverse_proxy "+up.URL))
	for i := range 20 {
		status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil,
			"Connection", "Authorization, X-Secret", "Connection", "DPoP", "X-Secret", "client")
		if status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, status, body)
		}
	}
	for _, s := range up.requests() {
		if s.Token == "" {
			t.Fatal("a request reached the upstream without the token")
		}
	}
	if n := srv.Stats().RefreshSuccesses; n != 0 {
		t.Fatalf("%d refreshes for requests whose token the client tried to drop", n)
	}
}

// chunkedBody is a request body of unknown length (sent chunked, so it can
// carry trailers).
type chunkedBody struct{ io.Reader }

// TestTrailersCannotCarryCredentials: a client declaring Authorization,
// DPoP (and a strip_header name) as trailers of a chunked body must not get
// them to the upstream, with or without the transport.
func TestTrailersCannotCarryCredentials(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	host := strings.TrimPrefix(up.URL, "http://")
	for _, transport := range []bool{false, true} {
		t.Run(fmt.Sprintf("transport=%v", transport), func(t *testing.T) {
			up.reset()
			tr := ""
			if transport {
				tr = "{\n\t\ttransport inject_token\n\t}"
			}
			tester := startConfig(t, siteConfig(t.TempDir(), preludeBlock(fmt.Sprintf("trailers-%v", transport), srv,
				"strip_header X-Secret")+"\n\treverse_proxy "+host+" "+tr))
			for _, size := range []int{10, 100 << 10} { // buffered, and streamed
				req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/t",
					chunkedBody{strings.NewReader(strings.Repeat("b", size))})
				req.Trailer = http.Header{"Authorization": {"Bearer client-trailer"}, "Dpop": {"client-proof"},
					"X-Secret": {"client"}, "X-Ok": {"kept"}}
				resp, err := tester.Client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("size %d: status %d", size, resp.StatusCode)
				}
			}
			log := up.requests()
			if len(log) != 2 {
				t.Fatalf("upstream saw %d requests", len(log))
			}
			for _, s := range log {
				for name := range s.Trailer {
					if n := http.CanonicalHeaderKey(name); n == "Authorization" || n == "Dpop" || n == "X-Secret" {
						t.Fatalf("upstream got trailer %s (body %d bytes): %v", name, len(s.Body), s.Trailer)
					}
				}
				if len(s.Body) == 10 && s.Trailer.Get("X-Ok") != "kept" {
					t.Errorf("other trailers must pass: %v", s.Trailer)
				}
			}
		})
	}
}

// TestTraceNotForwardedWithToken: an upstream reflecting TRACE would hand
// the injected token to the client.
func TestTraceNotForwardedWithToken(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	tester := startConfig(t, siteConfig(t.TempDir(), preludeBlock("trace", srv, "")+"\n\treverse_proxy "+up.URL))
	status, _, body := do(t, tester.Client, http.MethodTrace, "http://localhost:9080/x", nil)
	if status != http.StatusMethodNotAllowed || len(up.requests()) != 0 {
		t.Fatalf("TRACE: %d %q, upstream saw %d requests", status, body, len(up.requests()))
	}
}

// TestSlowBodyGetsCurrentToken: the token is taken once the body has
// arrived. The client sends its headers with Expect: 100-continue, so it
// knows when the gateway starts reading the body; the token changes
// meanwhile (a forced refresh); the upstream must get the new token.
func TestSlowBodyGetsCurrentToken(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	dir := t.TempDir()
	tester := startConfig(t, siteConfig(dir, preludeBlock("slow-body", srv, "")+
		"\n\treverse_proxy "+strings.TrimPrefix(up.URL, "http://")+" {\n\t\ttransport inject_token\n\t}"))
	if status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/warm", nil); status != http.StatusOK {
		t.Fatalf("first request: %d %s", status, body)
	}
	tok1 := storedString(t, dir, "slow-body", "access_token")

	conn, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := "slow body"
	fmt.Fprintf(conn, "POST /slow HTTP/1.1\r\nHost: localhost:9080\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(body))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, "100") {
		t.Fatalf("want 100 Continue, got %q %v", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil { // the blank line after the interim response
		t.Fatal(err)
	}
	// The body is being waited for: the token changes now.
	if status, _, b := do(t, http.DefaultClient, http.MethodPost, adminURL+"/inject_token/sessions/slow-body/refresh", nil); status != http.StatusOK {
		t.Fatalf("forced refresh: %d %s", status, b)
	}
	tok2 := storedString(t, dir, "slow-body", "access_token")
	if tok2 == tok1 {
		t.Fatal("the forced refresh did not change the token")
	}
	_, _ = io.WriteString(conn, body)
	var resp *http.Response
	for resp == nil || resp.StatusCode < 200 { // the upstream's own 100 Continue is relayed
		if resp, err = http.ReadResponse(br, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	log := up.requests()
	if resp.StatusCode != http.StatusOK || len(log) != 2 || log[1].Body != body {
		t.Fatalf("status %d, upstream saw %+v", resp.StatusCode, log)
	}
	if log[1].Token != tok2 {
		t.Fatalf("the slow request carried the token from before its body arrived (old %t)", log[1].Token == tok1)
	}
}

// TestTransportOnlyStripsClientCredentials: a transport with its own
// session option (no inject_token handler in the route) must not pass the
// client's DPoP (or Authorization) through.
func TestTransportOnlyStripsClientCredentials(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	dir := t.TempDir()
	cfg := globals(dir) + fmt.Sprintf(`http://localhost:9081 {
	%s
	respond "session holder"
}
http://localhost:9080 {
	reverse_proxy %s {
		transport inject_token {
			session transport-only
		}
	}
}
`, preludeBlock("transport-only", srv, ""), strings.TrimPrefix(up.URL, "http://"))
	tester := startConfig(t, cfg)
	status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil,
		"Authorization", "Bearer client", "DPoP", "client-proof")
	log := up.requests()
	if status != http.StatusOK || len(log) != 1 || log[0].DPoP != "" || log[0].Token == "client" {
		t.Fatalf("status %d %s, upstream saw %+v", status, body, log)
	}
	// Nor as trailers, of a buffered or a streamed body.
	for _, size := range []int{10, 100 << 10} {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/t", chunkedBody{strings.NewReader(strings.Repeat("b", size))})
		req.Trailer = http.Header{"Authorization": {"Bearer client-trailer"}, "Dpop": {"client-proof"}}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for _, s := range up.requests()[1:] {
		if s.Trailer.Get("Authorization") != "" || s.Trailer.Get("Dpop") != "" {
			t.Fatalf("upstream got client trailers %v (body %d bytes)", s.Trailer, len(s.Body))
		}
	}
}

// TestBadTokenIsFailedRefresh: a token server that issues a token which is
// not a valid header value (a comma and a second scheme, CR/LF) gets a
// failed login, and nothing is sent upstream with it.
func TestBadTokenIsFailedRefresh(t *testing.T) {
	for _, bad := range []string{"abc, Basic Zm9vOmJhcg==", "abc\r\nX-Injected: 1", "abc def"} {
		t.Run(fmt.Sprintf("%q", bad), func(t *testing.T) {
			var mu sync.Mutex
			issued := 0
			as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				issued++
				mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(map[string]any{"access_token": bad, "token_type": "Bearer", "expires_in": 3600})
			}))
			t.Cleanup(as.Close)
			var upMu sync.Mutex
			var got []string
			upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				upMu.Lock()
				got = append(got, r.Header.Values("Authorization")...)
				upMu.Unlock()
			}))
			t.Cleanup(upstream.Close)
			tester := startConfig(t, siteConfig(t.TempDir(), fmt.Sprintf(`inject_token {
		session bad-token
		oauth2 %s/token {
			client_id gw
			client_secret s
		}
		dpop off
	}
	reverse_proxy %s`, as.URL, upstream.URL)))
			status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
			upMu.Lock()
			defer upMu.Unlock()
			if status != http.StatusServiceUnavailable || len(got) != 0 {
				t.Fatalf("status %d %s; upstream got Authorization %q", status, body, got)
			}
		})
	}
}

// TestRejectionBurstSpendsOneBudgetUnit: concurrent requests that all
// carried the same stale token, all answered 401, spend one unit of the
// session's 401 refresh budget, not one each.
func TestRejectionBurstSpendsOneBudgetUnit(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	const burst = 5
	var arrived sync.WaitGroup
	arrived.Add(burst)
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/burst" {
			arrived.Done()
			<-release
		}
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(upstream.Close)
	go func() { arrived.Wait(); close(release) }()
	name := fmt.Sprintf("burst-%d", time.Now().UnixNano()%1e6)
	tester := startConfig(t, siteConfig(t.TempDir(), preludeBlock(name, srv, "")+"\n\treverse_proxy "+upstream.URL))
	var wg sync.WaitGroup
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/burst", nil)
			if resp, err := tester.Client.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	s, ok := lookupSession(name)
	if !ok {
		t.Fatal("no session")
	}
	// One unit spent (plus whatever refilled while the test ran: at most
	// one unit per 10 s).
	if left := s.rejects.Tokens(); left < rejectRefreshBurst-1.5 {
		t.Fatalf("%.1f of %d budget units left after one token's burst of %d 401s; want %d", left, rejectRefreshBurst, burst, rejectRefreshBurst-1)
	}
}

// TestBrowserCrossSiteRefused: the gateway acts as the user, so a browser
// request another site makes (a cross-site form POST, a DNS-rebinding
// Host) is refused by default; clients that are not browsers (no
// Sec-Fetch-*, no Origin) and same-origin pages are never affected, and
// allow_browser_origins opts an origin in.
func TestBrowserCrossSiteRefused(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	up := newRecordingUpstream(t, srv)
	cfg := globals(t.TempDir()) + fmt.Sprintf(`:9080 {
	%s
	reverse_proxy %s
}
`, preludeBlock("browser", srv, "allow_browser_origins https://app.example.com"), up.URL)
	tester := startConfig(t, cfg)
	get := func(method, host string, hdr ...string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://127.0.0.1:9080/x", strings.NewReader("a=1"))
		req.Host = host
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, c := range []struct {
		name string
		host string
		hdr  []string
		want int
	}{
		{"legacy client", "localhost:9080", nil, http.StatusOK},
		{"legacy client, any Host", "rebind.evil.example", nil, http.StatusOK},
		{"same-origin page", "localhost:9080", []string{"Origin", "http://localhost:9080", "Sec-Fetch-Site", "same-origin"}, http.StatusOK},
		{"navigation typed by the user", "localhost:9080", []string{"Sec-Fetch-Site", "none"}, http.StatusOK},
		{"cross-site form post", "localhost:9080", []string{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain"}, http.StatusForbidden},
		{"same-site", "localhost:9080", []string{"Origin", "http://other.localhost:9080", "Sec-Fetch-Site", "same-site"}, http.StatusForbidden},
		{"cross-site, no Origin", "localhost:9080", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"old browser, foreign Origin", "localhost:9080", []string{"Origin", "http://evil.example"}, http.StatusForbidden},
		{"DNS rebinding", "rebind.evil.example:9080", []string{"Origin", "http://rebind.evil.example:9080", "Sec-Fetch-Site", "same-origin"}, http.StatusOK},
		{"opaque origin", "localhost:9080", []string{"Origin", "null"}, http.StatusForbidden},
		{"allowed origin", "localhost:9080", []string{"Origin", "https://app.example.com", "Sec-Fetch-Site", "cross-site"}, http.StatusOK},
	} {
		up.reset()
		status, body := get(http.MethodPost, c.host, c.hdr...)
		if status != c.want {
			t.Errorf("%s: status %d %s, want %d", c.name, status, body, c.want)
			continue
		}
		if c.want == http.StatusForbidden {
			var e forbiddenJSON
			if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
				t.Errorf("%s: body %q is not the JSON refusal", c.name, body)
			}
			if n := len(up.requests()); n != 0 {
				t.Errorf("%s: refused, yet the upstream saw %d requests", c.name, n)
			}
		}
	}
}

// forbiddenJSON is the refusal body.
type forbiddenJSON struct {
	Error   string `json:"error"`
	Session string `json:"session"`
}

// TestNonceStoreBoundedThroughGateway: the transport remembers resource
// server nonces per origin, and the origin is the Host header sent — by
// default the client's. A client varying Host on a catch-all site must not
// grow the store past its bound.
func TestNonceStoreBoundedThroughGateway(t *testing.T) {
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "dpop-bound-token", "token_type": "DPoP", "expires_in": 3600})
	}))
	t.Cleanup(as.Close)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("DPoP") == "" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("DPoP-Nonce", "nonce-for-"+r.Host)
	}))
	t.Cleanup(upstream.Close)
	name := "nonce-bound"
	tester := startConfig(t, globals(t.TempDir())+fmt.Sprintf(`:9080 {
	inject_token {
		session %s
		oauth2 %s/token {
			client_id gw
			client_secret s
		}
	}
	reverse_proxy %s {
		transport inject_token
	}
}
`, name, as.URL, strings.TrimPrefix(upstream.URL, "http://")))
	const hosts = dpop.MaxNonceOrigins + 100
	for i := range hosts {
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9080/x", nil)
		req.Host = fmt.Sprintf("h%d.rebind.example", i)
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	s, ok := lookupSession(name)
	if !ok {
		t.Fatal("no session")
	}
	if n := s.rsNonces.Len(); n > dpop.MaxNonceOrigins {
		t.Fatalf("%d origins remembered after %d distinct Host headers; bound is %d", n, hosts, dpop.MaxNonceOrigins)
	}
	last := &url.URL{Scheme: "http", Host: fmt.Sprintf("h%d.rebind.example", hosts-1)}
	if got := s.rsNonces.Get(last); got != "nonce-for-"+last.Host {
		t.Fatalf("latest origin's nonce = %q", got)
	}
}
