package injecttoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/tokenwarden/caddy-inject-token/internal/gatewaytest"
)

// writeCert writes a self-signed client certificate for cn and its key to
// dir and returns their paths.
func writeCert(t *testing.T, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestCertificateBindingCheckedAtLoad: a session whose oauth2 backend has
// a client certificate may get tokens bound to it (RFC 8705), so the
// transport in front of its upstream must present that same certificate
// (tls_client_auth); a transport with none, or with another, fails at
// load and says which.
func TestCertificateBindingCheckedAtLoad(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := writeCert(t, dir, "a")
	certB, keyB := writeCert(t, dir, "b")
	config := func(transport string) string {
		return gatewaytest.Globals(t.TempDir()) + fmt.Sprintf(`http://localhost:9080 {
	inject_token {
		session mtls-load
		oauth2 https://127.0.0.1:1/token {
			client_id gw
			auth tls_client_auth
			client_certificate %s %s
		}
		dpop off
	}
	reverse_proxy https://127.0.0.1:1 {
		transport inject_token {
			%s
		}
	}
}
`, certA, keyA, transport)
	}
	caddytest.AssertLoadError(t, config(""), "caddyfile", "this transport presents none: add 'tls_client_auth")
	caddytest.AssertLoadError(t, config("tls_client_auth "+certB+" "+keyB), "caddyfile", "this transport's tls_client_auth certificate is another one")
	gatewaytest.StartConfig(t, config("tls_client_auth "+certA+" "+keyA))
}

// TestCaddyfileClientCertificate: client_certificate takes the
// certificate and its key; trusted_ca_cert one value.
func TestCaddyfileClientCertificate(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		oauth2 https://as.example/token {
			client_id c
			auth self_signed_tls_client_auth
			client_certificate /etc/gw/cert.pem {file./run/secrets/key.pem}
			trusted_ca_cert /etc/gw/ca.pem
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if o := h.OAuth2; o.Auth != "self_signed_tls_client_auth" || o.ClientCertificate != "/etc/gw/cert.pem" || o.ClientCertificateKey != "{file./run/secrets/key.pem}" || o.TrustedCACert != "/etc/gw/ca.pem" {
		t.Errorf("parsed %+v", o)
	}
	for _, tc := range []struct{ input, want string }{
		{"inject_token {\n oauth2 https://as.b {\n  client_id c\n  client_certificate /a.pem\n }\n}", "expected 'client_certificate <cert_file> <key_file>', at Testfile:4"},
		{"inject_token {\n oauth2 https://as.b {\n  client_id c\n  trusted_ca_cert\n }\n}", "oauth2 trusted_ca_cert: expected exactly one value, at Testfile:4"},
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error = %v, want %q", err, tc.want)
		}
	}
}

// TestCertificateBindingCheckedPerRequest: where the load-time check
// cannot see the session (a JSON config whose handler is not in a
// subroute), a request whose session's tokens may be bound to another
// certificate is refused by the transport and never reaches the upstream.
func TestCertificateBindingCheckedPerRequest(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := writeCert(t, dir, "a")
	certB, keyB := writeCert(t, dir, "b")
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"at-bound","token_type":"Bearer","expires_in":600}`))
	}))
	t.Cleanup(as.Close)
	var hits atomic.Int64
	upstream := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	t.Cleanup(upstream.Close)
	cfg := fmt.Sprintf(`{
	"admin": {"listen": "localhost:2999"},
	"storage": {"module": "file_system", "root": %q},
	"apps": {"http": {"http_port": 9080, "servers": {"srv0": {"listen": [":9080"], "routes": [{"handle": [
		{"handler": "inject_token", "session": "mtls-req", "dpop": "off",
		 "oauth2": {"endpoint": %q, "client_id": "gw", "auth": "tls_client_auth", "client_certificate": %q, "client_certificate_key": %q}},
		{"handler": "reverse_proxy", "upstreams": [{"dial": %q}],
		 "transport": {"protocol": "inject_token", "tls": {"insecure_skip_verify": true, "client_certificate_file": %q, "client_certificate_key_file": %q}}}
	]}]}}}}
}`, t.TempDir(), as.URL+"/token", certA, keyA, strings.TrimPrefix(upstream.URL, "https://"), certB, keyB)
	tester := caddytest.NewTester(t)
	tester.InitServer(cfg, "json")
	t.Cleanup(func() { tester.InitServer(`{"admin": {"listen": "localhost:2999"}}`, "json") })
	if status, _, _ := do(t, tester.Client, http.MethodGet, "http://localhost:9080/", nil); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the upstream was reached %d times with a token bound to another certificate", n)
	}
}
