package gateway_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
	"github.com/tokenwarden/caddy-inject-token/interop"
)

// TestJWTBearerThroughGateway: two oauth2 sessions with grant jwt_bearer
// against oidc-provider, one presenting a projected service-account token
// from assertion_file, one signing its assertion with client_key; each
// logs itself in and its token reaches a verifying upstream.
func TestJWTBearerThroughGateway(t *testing.T) {
	const cluster = "https://k8s.test"
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	clusterKey, clientKey := newKey(), newKey()
	jwks := func(k *ecdsa.PrivateKey) *jose.JSONWebKeySet {
		return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
	}
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		JWTBearerIssuers: map[string]*jose.JSONWebKeySet{cluster: jwks(clusterKey)},
		Clients: []interop.Client{
			{ID: "wl", Secret: itSecret, GrantTypes: []string{interop.JWTBearer}},
			{ID: "signed", AuthMethod: "private_key_jwt", JWKS: jwks(clientKey), GrantTypes: []string{interop.JWTBearer}},
		},
	})
	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer,
		Audience: interop.DefaultResource, AllowBearer: true})

	dir := t.TempDir()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: clusterKey}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]any{"iss": cluster, "sub": "system:serviceaccount:apps:legacy", "aud": p.TokenEndpoint,
		"exp": time.Now().Add(time.Hour).Unix(), "jti": "projected-1"})
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	assertion, _ := jws.CompactSerialize()
	tokenFile := filepath.Join(dir, "token")
	kd, _ := x509.MarshalPKCS8PrivateKey(clientKey)
	keyFile := filepath.Join(dir, "client-key.pem")
	for f, b := range map[string][]byte{tokenFile: []byte(assertion), keyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	site := func(addr, session, client string) string {
		return fmt.Sprintf(`%s {
	inject_token {
		session %s
		oauth2 %s {
			grant jwt_bearer
			scope api:read
			resource %s
			%s
		}
		dpop off
	}
	reverse_proxy %s
}
`, addr, session, p.TokenEndpoint, interop.DefaultResource, client, strings.TrimPrefix(rs.URL, "http://"))
	}
	t.Setenv("IT_CLIENT_SECRET", itSecret)
	tester := gatewaytest.StartConfig(t, gatewaytest.Globals(t.TempDir())+
		site("http://localhost:9080", "jb-file", "client_id wl\n\t\t\tclient_secret {env.IT_CLIENT_SECRET}\n\t\t\tassertion_file "+tokenFile)+
		site("http://localhost:9081", "jb-signed", "client_id signed\n\t\t\tclient_key {file."+keyFile+"}"))
	for _, tc := range []struct{ url, client string }{
		{"http://localhost:9080/a", "wl"},
		{"http://localhost:9081/b", "signed"},
	} {
		var status int
		var body []byte
		// The session logs itself in at start; the first request may find
		// it still doing so (503), never anything else.
		gatewaytest.WaitWithin(t, "session logged in", 10*time.Second, func() bool {
			status, _, body = gatewaytest.Do(t, tester.Client, http.MethodGet, tc.url, nil)
			return status != http.StatusServiceUnavailable
		})
		var a struct {
			ClientID string `json:"client_id"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &a) != nil || a.ClientID != tc.client {
			t.Fatalf("%s: %d %s; resource server %v\n%s", tc.url, status, body, rs.Stats(), p.Logs())
		}
	}
	if st := rs.Stats(); st[interop.ReasonAccepted] != 2 || len(st) != 1 {
		t.Fatalf("resource server saw %v", st)
	}
}
