package gateway_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
)

// TestMutualTLSBoundTokenUpstream: the oauth2 backend authenticates to
// oidc-provider with its client certificate (tls_client_auth, RFC 8705
// §2) and gets tokens bound to it (cnf x5t#S256); reverse_proxy presents
// the same certificate (tls_client_auth in the inject_token transport), so
// a resource server that checks the binding accepts every request.
func TestMutualTLSBoundTokenUpstream(t *testing.T) {
	ca := interop.NewTestCA(t)
	kp := ca.Issue(t, "gateway")
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{
		{ID: "mtls", AuthMethod: "tls_client_auth", TLSSubjectDN: "CN=gateway", CertificateBound: true},
	}})
	front := interop.StartMTLSFront(t, p, ca)
	rs := interop.StartTLSResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer,
		Audience: interop.DefaultResource, AllowBearer: true}, ca)
	dir := t.TempDir()
	certFile, keyFile := kp.WriteFiles(t, dir, "gateway")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tester := gatewaytest.StartConfig(t, gatewaytest.Globals(t.TempDir())+fmt.Sprintf(`http://localhost:9080 {
	inject_token {
		session mtls-gw
		oauth2 %s/token {
			client_id mtls
			auth tls_client_auth
			client_certificate %s %s
			trusted_ca_cert %s
			scope api:read
			resource %s
		}
		dpop off
	}
	reverse_proxy %s {
		transport inject_token {
			tls_client_auth %s %s
			tls_trust_pool file %s
		}
	}
}
`, front, certFile, keyFile, caFile, interop.DefaultResource, rs.URL, certFile, keyFile, caFile))
	for i := range 3 {
		status, _, body := gatewaytest.Do(t, tester.Client, http.MethodGet, fmt.Sprintf("http://localhost:9080/items/%d", i), nil,
			"Authorization", "Bearer client-supplied")
		if status != http.StatusOK || !strings.Contains(string(body), `"client_id":"mtls"`) {
			t.Fatalf("request %d: %d %s; resource server %v\n%s", i, status, body, rs.Stats(), p.Logs())
		}
	}
	if st := rs.Stats(); st[interop.ReasonAccepted] != 3 || len(st) != 1 {
		t.Fatalf("resource server saw %v, want 3 accepted and nothing else", st)
	}
}
