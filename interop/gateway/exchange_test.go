package gateway_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/exchange"
	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
)

// exchangeGateway is a Caddy config whose inject_token session gets its
// tokens by token exchange (block: the subject options) and proxies to
// upstream.
func exchangeGateway(storage, issuer, upstream, block, extra string) string {
	return gatewaytest.Globals(storage) + fmt.Sprintf(`http://localhost:9080 {
	inject_token {
		session exchange
		token_exchange %s {
			client_id gateway
			client_secret {env.IT_CLIENT_SECRET}
			resource %s
			%s
		}
		%s
	}
	reverse_proxy %s {
		transport inject_token
	}
}
`, issuer, interop.DefaultResource, block, extra, strings.TrimPrefix(upstream, "http://"))
}

func startExchangeProvider(t *testing.T, si *interop.SubjectIssuer) *interop.Provider {
	return interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients:     []interop.Client{{ID: "gateway", Secret: itSecret, GrantTypes: []string{exchange.GrantType}}},
		SubjectJWKS: si.JWKS, SubjectAudience: interop.SubjectAudience,
	})
}

// rsSub is the part of interop.ResourceServer's answer these tests read.
type rsSub struct {
	Sub     string              `json:"sub"`
	Headers map[string][]string `json:"headers"`
}

// TestInteropGatewayExchangePerRequestSubject: each request's user token
// (X-User-Token) is verified, exchanged at oidc-provider, and the upstream
// accepts the exchanged token as that user's; the user's own token never
// reaches the upstream, and junk gets 401 without an exchange.
func TestInteropGatewayExchangePerRequestSubject(t *testing.T) {
	si := interop.NewSubjectIssuer(t)
	p := startExchangeProvider(t, si)
	opts := rsOptions(p)
	opts.AllowBearer = true
	rs := interop.StartResourceServer(t, opts)
	tester := startOAuthGatewayConfig(t, exchangeGateway(t.TempDir(), p.Issuer, rs.URL, fmt.Sprintf(`subject_header X-User-Token
			verify jwks %s
			verify audience %s`, si.URL, interop.SubjectAudience), "dpop off"))
	users := []string{"alice", "bob", "carol"}
	tokens := map[string]string{}
	for _, u := range users {
		tokens[u] = si.Token(t, u)
	}
	for range 3 {
		for _, u := range users {
			status, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, "http://localhost:9080/orders", nil, "X-User-Token", "Bearer "+tokens[u])
			var a rsSub
			if status != http.StatusOK || json.Unmarshal(body, &a) != nil {
				t.Fatalf("%s: status %d: %s", u, status, body)
			}
			if a.Sub != u {
				t.Fatalf("%s's request reached the upstream as %q", u, a.Sub)
			}
			if _, leaked := a.Headers["X-User-Token"]; leaked {
				t.Fatal("the user's own token reached the upstream")
			}
		}
	}
	status, _, _ := gatewaytest.Do(t, tester.Client, http.MethodGet, "http://localhost:9080/orders", nil, "X-User-Token", "junk")
	if status != http.StatusUnauthorized {
		t.Fatalf("junk subject: status %d, want 401", status)
	}
	if got := rs.Stats()[interop.ReasonAccepted]; got != 9 {
		t.Fatalf("upstream accepted %d requests, want 9", got)
	}
}

// TestInteropGatewayExchangeSubjectFile: a projected service-account token
// in a file is exchanged by the session itself for a DPoP-bound token,
// which the transport presents with a proof to a verifying upstream.
func TestInteropGatewayExchangeSubjectFile(t *testing.T) {
	si := interop.NewSubjectIssuer(t)
	p := startExchangeProvider(t, si)
	rs := interop.StartResourceServer(t, rsOptions(p))
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(si.Token(t, "system:serviceaccount:shop:gateway")), 0o600); err != nil {
		t.Fatal(err)
	}
	tester := startOAuthGatewayConfig(t, exchangeGateway(t.TempDir(), p.Issuer, rs.URL, "subject_file "+file, ""))
	status, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, "http://localhost:9080/orders", nil)
	var a rsSub
	if status != http.StatusOK || json.Unmarshal(body, &a) != nil {
		t.Fatalf("status %d: %s", status, body)
	}
	if a.Sub != "system:serviceaccount:shop:gateway" {
		t.Fatalf("upstream saw sub %q", a.Sub)
	}
}

// TestInteropGatewayExchange401DropsThatSubjectOnly: an upstream 401 to
// one subject's token makes its next request exchange again, while the
// other subject keeps its token.
func TestInteropGatewayExchange401DropsThatSubjectOnly(t *testing.T) {
	si := interop.NewSubjectIssuer(t)
	p := startExchangeProvider(t, si)
	var mu sync.Mutex
	seen := map[string]map[string]bool{} // sub → tokens presented
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		var c struct {
			Sub string `json:"sub"`
		}
		parts := strings.Split(tok, ".")
		if len(parts) == 3 {
			b, _ := base64.RawURLEncoding.DecodeString(parts[1])
			_ = json.Unmarshal(b, &c)
		}
		mu.Lock()
		if seen[c.Sub] == nil {
			seen[c.Sub] = map[string]bool{}
		}
		seen[c.Sub][tok] = true
		mu.Unlock()
		if c.Sub == "bob" {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(upstream.Close)
	tester := startOAuthGatewayConfig(t, exchangeGateway(t.TempDir(), p.Issuer, upstream.URL, fmt.Sprintf(`subject_header Authorization
			verify jwks %s
			verify audience %s`, si.URL, interop.SubjectAudience), "dpop off"))
	alice, bob := si.Token(t, "alice"), si.Token(t, "bob")
	for range 3 {
		for _, s := range []string{alice, bob} {
			gatewaytest.Do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil, "Authorization", "Bearer "+s)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen["alice"]) != 1 || len(seen["bob"]) != 3 {
		t.Fatalf("distinct tokens presented: alice %d (want 1: kept), bob %d (want 3: a new one after each 401)", len(seen["alice"]), len(seen["bob"]))
	}
}
