package oauthinterop_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestInteropMutualTLS: RFC 8705 against oidc-provider behind a
// TLS-terminating front. tls_client_auth (a certificate from the test CA,
// matched by subject) and self_signed_tls_client_auth (a registered
// self-signed certificate) authenticate the client with no other
// credential; the access tokens are bound to the certificate (cnf
// x5t#S256 = BoundCertificate) and a verifying resource server accepts
// them only over TLS with that certificate.
func TestInteropMutualTLS(t *testing.T) {
	t.Parallel()
	ca := interop.NewTestCA(t)
	pki, self, stranger := ca.Issue(t, "gateway"), interop.SelfSigned(t, "gateway-self"), ca.Issue(t, "stranger")
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{
		{ID: "mtls", AuthMethod: "tls_client_auth", TLSSubjectDN: "CN=gateway", CertificateBound: true},
		{ID: "mtls-self", AuthMethod: "self_signed_tls_client_auth", CertificateBound: true,
			JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: self.TLS.Leaf.PublicKey, Certificates: []*x509.Certificate{self.TLS.Leaf}, Use: "sig"}}}},
	}})
	front := interop.StartMTLSFront(t, p, ca)
	rs := interop.StartTLSResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer,
		Audience: interop.DefaultResource, AllowBearer: true}, ca)
	call := func(token string, cert *interop.KeyPair) int {
		tc := &tls.Config{RootCAs: ca.Pool}
		if cert != nil {
			tc.Certificates = []tls.Certificate{cert.TLS}
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		req, _ := http.NewRequest(http.MethodGet, rs.URL+"/x", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		id, auth string
		kp       *interop.KeyPair
	}{{"mtls", oauth.AuthTLSClient, pki}, {"mtls-self", oauth.AuthSelfSignedTLSClient, self}} {
		t.Run(tc.auth, func(t *testing.T) {
			c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: front + "/token", ClientID: tc.id, Auth: tc.auth,

				Scopes: []string{"api:read"}, Resource: interop.DefaultResource}, ClientCertPEM: tc.kp.CertPEM, ClientCertKeyPEM: tc.kp.KeyPEM, RootCAPEM: ca.PEM,
			})
			g, err := c.Token(context.Background(), nil, "")
			if err != nil {
				t.Fatalf("%v\n%s", err, p.Logs())
			}
			cnf, _ := oauthtest.Claims(t, g.AccessToken)["cnf"].(map[string]any)
			if g.TokenType != "Bearer" || cnf["x5t#S256"] != tc.kp.Thumbprint || c.BoundCertificate() != tc.kp.Thumbprint {
				t.Fatalf("token %s, cnf %v; want Bearer bound to %s", g.TokenType, cnf, tc.kp.Thumbprint)
			}
			before := rs.Stats()[interop.ReasonCertificate]
			if s := call(g.AccessToken, tc.kp); s != http.StatusOK {
				t.Fatalf("with the bound certificate: %d, stats %v", s, rs.Stats())
			}
			if s := call(g.AccessToken, nil); s != http.StatusUnauthorized {
				t.Errorf("without a certificate: %d", s)
			}
			if s := call(g.AccessToken, stranger); s != http.StatusUnauthorized {
				t.Errorf("with another certificate: %d", s)
			}
			if got := rs.Stats()[interop.ReasonCertificate] - before; got != 2 {
				t.Errorf("%d certificate rejections, want 2", got)
			}
		})
	}
	// The provider checks the certificate: one from the CA with another
	// subject, or a self-signed one for a tls_client_auth client, is
	// invalid_client.
	for name, kp := range map[string]*interop.KeyPair{"other subject": stranger, "self-signed": self} {
		t.Run("rejected "+name, func(t *testing.T) {
			c := oauthtest.NewClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: front + "/token", ClientID: "mtls", Auth: oauth.AuthTLSClient,
				Resource: interop.DefaultResource}, ClientCertPEM: kp.CertPEM, ClientCertKeyPEM: kp.KeyPEM, RootCAPEM: ca.PEM})
			_, err := c.Token(context.Background(), nil, "")
			if e := asError(t, err, oauth.KindConfig, string(kp.KeyPEM)); e.Code != "invalid_client" {
				b, _ := json.Marshal(e)
				t.Errorf("code = %q (%s), want invalid_client", e.Code, b)
			}
		})
	}
}
