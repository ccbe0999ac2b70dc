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
	"os"
	"path/filepath"
	"strings"
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
