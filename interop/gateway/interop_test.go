package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	// The module under test registers inject_token with Caddy.
	_ "github.com/tokenwarden/caddy-inject-token"
	"github.com/tokenwarden/caddy-inject-token/cli"
	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
)

// These tests put a real Caddy with inject_token (oauth2 backend) and the
// inject_token transport in front of resource servers that verify DPoP
// exactly as RFC 9449 asks, with tokens from panva's oidc-provider.

const itSecret = "gateway-secret-0123456789abcdef"

// oauthGateway is a Caddy config with an oauth2 session and a
// reverse_proxy to upstreams through the inject_token transport.
type oauthGateway struct {
	storage, session, issuer string
	dpop                     string // dpop subdirective value, "" for default
	grant                    string // oauth2 grant, "" for client_credentials
	upstreams                []string
	transport                bool
	requireRSNonce           bool
}

func (g oauthGateway) String() string {
	return gatewaytest.Globals(g.storage) + g.site("http://localhost:9080")
}

// site is the gateway's site block at addr.
func (g oauthGateway) site(addr string) string {
	dpop := ""
	if g.dpop != "" {
		dpop = "dpop " + g.dpop
	}
	transport := ""
	if g.transport {
		transport = "transport inject_token"
	}
	grant := "scope api:read"
	if g.grant != "" {
		// A refresh token keeps the scopes it was granted with.
		grant = "grant " + g.grant
	}
	hosts := make([]string, len(g.upstreams))
	for i, u := range g.upstreams {
		hosts[i] = strings.TrimPrefix(u, "http://")
	}
	return fmt.Sprintf(`%s {
	inject_token {
		session %s
		oauth2 %s {
			client_id gateway
			client_secret {env.IT_CLIENT_SECRET}
			resource %s
			%s
		}
		%s
	}
	rewrite * /api{uri}
	reverse_proxy %s {
		lb_policy round_robin
		%s
	}
}
`, addr, g.session, g.issuer, interop.DefaultResource, grant, dpop, strings.Join(hosts, " "), transport)
}

func startOAuthGateway(t *testing.T, g oauthGateway) *caddytest.Tester {
	t.Helper()
	return startOAuthGatewayConfig(t, g.String())
}

func startOAuthGatewayConfig(t *testing.T, cfg string) *caddytest.Tester {
	t.Helper()
	t.Setenv("IT_CLIENT_SECRET", itSecret)
	return gatewaytest.StartConfig(t, cfg)
}

// rsAnswer is what interop.ResourceServer echoes for an accepted request.
type rsAnswer struct {
	HTU      string              `json:"htu"`
	Method   string              `json:"method"`
	Path     string              `json:"path"`
	ClientID string              `json:"client_id"`
	Headers  map[string][]string `json:"headers"`
}

func getRS(t *testing.T, tester *caddytest.Tester, method, path, body string, hdr ...string) (int, rsAnswer) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	status, _, out := gatewaytest.Do(t, tester.Client, method, "http://localhost:9080"+path, b, hdr...)
	var a rsAnswer
	if status == http.StatusOK {
		if err := json.Unmarshal(out, &a); err != nil {
			t.Fatalf("resource server answer: %v: %s", err, out)
		}
	}
	return status, a
}

func rsOptions(p *interop.Provider) interop.ResourceServerOptions {
	return interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer, Audience: interop.DefaultResource}
}

// singleUpstream starts a provider, one resource server (adjusted by rsMod)
// and the gateway g in front of it.
func singleUpstream(t *testing.T, serverNonce bool, rsMod func(*interop.ResourceServerOptions), g oauthGateway) (*interop.Provider, *interop.ResourceServer, *caddytest.Tester) {
	t.Helper()
	p := provider(t, serverNonce)
	opts := rsOptions(p)
	if rsMod != nil {
		rsMod(&opts)
	}
	rs := interop.StartResourceServer(t, opts)
	g.storage, g.issuer, g.upstreams = t.TempDir(), p.Issuer, []string{rs.URL}
	return p, rs, startOAuthGateway(t, g)
}

func requireRSNonce(o *interop.ResourceServerOptions) { o.RequireNonce = true }

func provider(t *testing.T, requireNonce bool) *interop.Provider {
	return interop.StartOIDCProvider(t, interop.ProviderOptions{
		RequireNonce: requireNonce,
		Clients:      []interop.Client{{ID: "gateway", Secret: itSecret}},
	})
}

// TestDPoPThroughTransport: client_credentials with DPoP, a path rewrite and
// two upstreams. Each resource server checks htu against its own view of
// the request (scheme, Host it received, path), so a proof signed for the
// dial address, the client-facing path or a reused jti would be refused.
func TestDPoPThroughTransport(t *testing.T) {
	for _, nonce := range []bool{false, true} {
		t.Run(fmt.Sprintf("server nonce %v", nonce), func(t *testing.T) {
			p := provider(t, nonce)
			rs1 := interop.StartResourceServer(t, rsOptions(p))
			rs2 := interop.StartResourceServer(t, rsOptions(p))
			tester := startOAuthGateway(t, oauthGateway{
				storage: t.TempDir(), session: fmt.Sprintf("dpop-nonce-%v", nonce), issuer: p.Issuer,
				upstreams: []string{rs1.URL, rs2.URL}, transport: true,
			})
			for i := range 6 {
				status, a := getRS(t, tester, http.MethodGet, fmt.Sprintf("/items/%d?q=x", i), "",
					"Authorization", "Bearer client-supplied", "DPoP", "client-proof")
				if status != http.StatusOK {
					t.Fatalf("request %d: status %d; rs1 %v rs2 %v", i, status, rs1.Stats(), rs2.Stats())
				}
				if a.Path != fmt.Sprintf("/api/items/%d", i) || a.HTU != "http://localhost:9080"+a.Path || a.ClientID != "gateway" {
					t.Fatalf("upstream saw %+v", a)
				}
				if a.Headers["Authorization"][0] != "DPoP" {
					t.Fatalf("Authorization scheme upstream = %v", a.Headers["Authorization"])
				}
			}
			s1, s2 := rs1.Stats(), rs2.Stats()
			if s1[interop.ReasonAccepted] != 3 || s2[interop.ReasonAccepted] != 3 {
				t.Fatalf("accepted: rs1 %v, rs2 %v (want 3 each: round robin)", s1, s2)
			}
			for _, s := range []map[string]int64{s1, s2} {
				for reason, n := range s {
					if reason != interop.ReasonAccepted && n > 0 {
						t.Errorf("resource server rejected %d requests: %s", n, reason)
					}
				}
			}
		})
	}
}

// TestResourceServerNonce: the upstream demands DPoP nonces (401
// WWW-Authenticate: DPoP error="use_dpop_nonce"); a bodiless request is
// retried by the transport, one with a small body by the handler, and the
// nonce is then remembered so later requests need no retry.
func TestResourceServerNonce(t *testing.T) {
	// Metrics are process-wide: a fresh session name keeps counts exact
	// under -count.
	name := fmt.Sprintf("rs-nonce-%d", time.Now().UnixNano())
	_, rs, tester := singleUpstream(t, false, requireRSNonce, oauthGateway{session: name, transport: true})
	if status, _ := getRS(t, tester, http.MethodGet, "/first", ""); status != http.StatusOK {
		t.Fatalf("GET: status %d, stats %v", status, rs.Stats())
	}
	if got := rs.Stats()[interop.ReasonNonceChallenge]; got != 1 {
		t.Fatalf("nonce challenges = %d, want 1", got)
	}
	if status, a := getRS(t, tester, http.MethodPost, "/second", `{"a":1}`); status != http.StatusOK || a.Method != http.MethodPost {
		t.Fatalf("POST: status %d, stats %v", status, rs.Stats())
	}
	if got := rs.Stats()[interop.ReasonNonceChallenge]; got != 1 {
		t.Fatalf("nonce challenges = %d after the nonce was learned, want still 1", got)
	}
	if got := rs.Stats()[interop.ReasonAccepted]; got != 2 {
		t.Fatalf("accepted = %d, want 2", got)
	}
	// GET: first proof + the transport's nonce retry; POST: the proof that
	// used the learned nonce. Every attempt had a proof of its own.
	_, _, metrics := gatewaytest.Do(t, http.DefaultClient, http.MethodGet, gatewaytest.AdminURL+"/metrics", nil)
	for _, want := range []string{
		`caddy_inject_token_dpop_proofs_total{kind="first",session="` + name + `"} 2`,
		`caddy_inject_token_dpop_proofs_total{kind="nonce_retry",session="` + name + `"} 1`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestBearerFromSameServer: with dpop off the same server issues Bearer
// tokens, injected as today (the transport is optional then).
func TestBearerFromSameServer(t *testing.T) {
	_, rs, tester := singleUpstream(t, false, func(o *interop.ResourceServerOptions) { o.AllowBearer = true },
		oauthGateway{session: "bearer", dpop: "off"})
	status, a := getRS(t, tester, http.MethodGet, "/x", "", "DPoP", "client-proof")
	if status != http.StatusOK || a.Headers["Authorization"][0] != "Bearer" || a.Headers["Dpop"] != nil {
		t.Fatalf("status %d, upstream saw %+v, stats %v", status, a, rs.Stats())
	}
}

// TestDPoPWithoutTransportFailsLoudly: a DPoP-bound token with no transport
// to sign proofs is refused at the gateway (502) instead of being sent
// upstream where it could only fail.
func TestDPoPWithoutTransportFailsLoudly(t *testing.T) {
	_, rs, tester := singleUpstream(t, false, nil, oauthGateway{session: "no-transport"})
	if status, _ := getRS(t, tester, http.MethodGet, "/x", ""); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	if n := len(rs.Stats()); n != 0 {
		t.Fatalf("the upstream was reached: %v", rs.Stats())
	}
}

// TestDPoPRouteWithoutTransport: when another site has the transport, a
// route without it does reach the upstream, with no token at all; its 401
// passes through and must not be taken as a rejected token (which would
// refresh on every request).
func TestDPoPRouteWithoutTransport(t *testing.T) {
	p := provider(t, false)
	rs := interop.StartResourceServer(t, rsOptions(p))
	g := oauthGateway{storage: t.TempDir(), session: "half-transport", issuer: p.Issuer,
		upstreams: []string{rs.URL}, transport: true}
	bare := g
	bare.transport = false
	tester := startOAuthGatewayConfig(t, g.String()+bare.site("http://localhost:9081"))
	if status, _, _ := gatewaytest.Do(t, tester.Client, http.MethodGet, "http://localhost:9081/x", nil); status != http.StatusUnauthorized {
		t.Fatalf("status %d, want the upstream's 401", status)
	}
	if st := rs.Stats(); st[interop.ReasonMissingToken] != 1 {
		t.Fatalf("resource server saw %v", st)
	}
	if status, _ := getRS(t, tester, http.MethodGet, "/y", ""); status != http.StatusOK {
		t.Fatalf("site with the transport: status %d", status)
	}
	_, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, gatewaytest.AdminURL+"/inject_token/sessions/half-transport", nil)
	if !bytes.Contains(body, []byte(`"refresh_count":0`)) {
		t.Fatalf("a 401 to an unsigned request refreshed the token: %s", body)
	}
}

// TestRefreshTokenGrantThroughCLI: an oauth2 session with grant
// refresh_token is logged in by handing it a refresh token with the CLI
// (read from the environment, never a flag); requests then carry DPoP-bound
// tokens, and a forced refresh rotates the refresh token without reuse.
func TestRefreshTokenGrantThroughCLI(t *testing.T) {
	p, rs, tester := singleUpstream(t, true, nil, oauthGateway{session: "rt-grant", grant: "refresh_token", transport: true})
	if status, _ := getRS(t, tester, http.MethodGet, "/before", ""); status != http.StatusServiceUnavailable {
		t.Fatalf("before login: status %d, want 503", status)
	}
	rt := p.MintRefreshToken(t, "gateway")
	t.Setenv(cli.RefreshTokenEnv, rt)
	var out bytes.Buffer
	if err := cli.Run(context.Background(), []string{"login", "rt-grant", "--refresh-token", "--address", "localhost:2999"}, strings.NewReader(""), &out); err != nil {
		t.Fatalf("cli login refresh-token: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), rt) {
		t.Fatal("the CLI printed the refresh token")
	}
	for i := range 2 {
		if status, a := getRS(t, tester, http.MethodGet, "/after", ""); status != http.StatusOK || a.Headers["Authorization"][0] != "DPoP" {
			t.Fatalf("request %d after login: status %d, stats %v", i, status, rs.Stats())
		}
		// Force a refresh between the requests: it spends the rotated
		// refresh token, never the one handed in.
		status, _, body := gatewaytest.Do(t, tester.Client, http.MethodPost, gatewaytest.AdminURL+"/inject_token/sessions/rt-grant/refresh", nil)
		if status != http.StatusOK || bytes.Contains(body, []byte(rt)) {
			t.Fatalf("admin refresh %d: %s", status, body)
		}
	}
	var st struct {
		Backend string `json:"backend"`
		State   string `json:"state"`
		Count   int    `json:"refresh_count"`
	}
	_, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, gatewaytest.AdminURL+"/inject_token/sessions/rt-grant", nil)
	if err := json.Unmarshal(body, &st); err != nil || st.Backend != "oauth2" || st.State != "active" || st.Count != 2 {
		t.Fatalf("status %s", body)
	}
}

// TestResourceServerNonceOnBody: the first request to a nonce-demanding
// upstream has a body, which the transport cannot replay; the handler,
// which buffered it, retries once with the same token and the learned nonce.
func TestResourceServerNonceOnBody(t *testing.T) {
	_, rs, tester := singleUpstream(t, false, requireRSNonce, oauthGateway{session: "rs-nonce-body", transport: true})
	status, a := getRS(t, tester, http.MethodPost, "/create", `{"name":"x"}`)
	if status != http.StatusOK || a.Method != http.MethodPost {
		t.Fatalf("POST: status %d, stats %v", status, rs.Stats())
	}
	st := rs.Stats()
	if st[interop.ReasonNonceChallenge] != 1 || st[interop.ReasonAccepted] != 1 || len(st) != 2 {
		t.Fatalf("resource server saw %v, want one nonce challenge then one accepted request", st)
	}
	// The nonce challenge is not a token rejection: no refresh happened.
	_, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, gatewaytest.AdminURL+"/inject_token/sessions/rs-nonce-body", nil)
	if !bytes.Contains(body, []byte(`"refresh_count":0`)) {
		t.Fatalf("status after a nonce challenge: %s", body)
	}
}

// TestStatusTableOAuth: an OAuth server's refusal follows the same rule as
// Prelude's: 422 with the server's code (here invalid_grant), not 503.
func TestStatusTableOAuth(t *testing.T) {
	p := provider(t, false)
	startOAuthGateway(t, oauthGateway{storage: t.TempDir(), session: "tbl-oauth", issuer: p.Issuer,
		grant: "refresh_token", upstreams: []string{"127.0.0.1:1"}})
	a := &gatewaytest.AdminClient{T: t}
	m := a.Call("POST", "/inject_token/sessions/tbl-oauth/login/refresh-token", `{"refresh_token":"not-a-real-token"}`, 422)
	if m["code"] != "invalid_grant" || !strings.Contains(m["error"].(string), "--refresh-token") {
		t.Errorf("refused refresh token: %v", m)
	}
	a.AssertNoSecrets("not-a-real-token")
}

// TestGatewayClockOffFromServers: the gateway's clock is 300 s behind both
// the token server (oidc-provider) and the resource server, which check
// every proof's iat on their own clocks. The token endpoint's first
// rejection teaches its clock (one retry, fresh proof); proofs upstream are
// dated on it and then on the resource server's own Date, so through
// three refreshes every upstream request is accepted at once.
func TestGatewayClockOffFromServers(t *testing.T) {
	const off = 300 * time.Second
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		ClockOffset: off,
		Clients:     []interop.Client{{ID: "gateway", Secret: itSecret}},
	})
	opts := rsOptions(p)
	opts.ClockOffset = off
	rs := interop.StartResourceServer(t, opts)
	tester := startOAuthGateway(t, oauthGateway{
		storage: t.TempDir(), session: "clock-off", issuer: p.Issuer,
		upstreams: []string{rs.URL}, transport: true,
	})
	a := &gatewaytest.AdminClient{T: t}
	var jkt any
	for round := range 4 {
		if round > 0 {
			a.Call("POST", "/inject_token/sessions/clock-off/refresh", "", http.StatusOK)
		}
		for i := range 3 {
			if status, _ := getRS(t, tester, http.MethodGet, fmt.Sprintf("/r%d/%d", round, i), ""); status != http.StatusOK {
				t.Fatalf("round %d request %d: status %d; resource server %v", round, i, status, rs.Stats())
			}
		}
		st := a.Call("GET", "/inject_token/sessions/clock-off", "", http.StatusOK)
		if st["state"] != "active" || (jkt != nil && st["dpop_jkt"] != jkt) {
			t.Fatalf("round %d: session %v", round, st)
		}
		jkt = st["dpop_jkt"]
	}
	stats := rs.Stats()
	if stats[interop.ReasonAccepted] != 12 {
		t.Fatalf("resource server accepted %d of 12: %v", stats[interop.ReasonAccepted], stats)
	}
	for reason, n := range stats {
		if reason != interop.ReasonAccepted && n > 0 {
			t.Errorf("resource server rejected %d requests: %s", n, reason)
		}
	}
}

// TestResourceServerClockLearned: only the resource server's clock is off
// (300 s ahead), so the token server teaches nothing. Its first refusal
// (invalid_dpop_proof, iat too old) carries its Date: the transport
// retries once with a proof dated on that clock, and every later proof to
// that origin is dated on it from the start.
func TestResourceServerClockLearned(t *testing.T) {
	_, rs, tester := singleUpstream(t, false, func(o *interop.ResourceServerOptions) { o.ClockOffset = 300 * time.Second },
		oauthGateway{session: "rs-clock", transport: true})
	for i := range 4 {
		if status, _ := getRS(t, tester, http.MethodGet, fmt.Sprintf("/c/%d", i), ""); status != http.StatusOK {
			t.Fatalf("request %d: status %d; resource server %v", i, status, rs.Stats())
		}
	}
	var rejected int64
	for reason, n := range rs.Stats() {
		if reason != interop.ReasonAccepted {
			rejected += n
		}
	}
	if rs.Stats()[interop.ReasonAccepted] != 4 || rejected != 1 {
		t.Fatalf("resource server %v: want 4 accepted after exactly one refused proof", rs.Stats())
	}
}
