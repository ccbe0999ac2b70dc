package oauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// selfSigned returns a self-signed certificate for cn and its key, as PEM.
func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

// TestMutualTLSClientAuth: with tls_client_auth the certificate is
// presented in the handshake and the form carries client_id and no other
// credential; the server's own certificate is trusted through RootCAPEM
// only.
func TestMutualTLSClientAuth(t *testing.T) {
	certPEM, keyPEM := selfSigned(t, "gateway")
	srvCert, srvKey := selfSigned(t, "as")
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		seen = append(seen, oauth.CertificateThumbprint(r.TLS.PeerCertificates[0])+" "+r.PostForm.Encode()+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "Bearer", "expires_in": 60})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	for _, auth := range []string{"", oauth.AuthTLSClient, oauth.AuthSelfSignedTLSClient} {
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: srv.URL + "/token", ClientID: "gw", Auth: auth},
			ClientCertPEM: certPEM, ClientCertKeyPEM: keyPEM, RootCAPEM: srvCert})
		if _, err := c.Token(context.Background(), nil, ""); err != nil {
			t.Fatalf("auth %q: %v", auth, err)
		}
		mu.Lock()
		got := seen[len(seen)-1]
		mu.Unlock()
		if want := c.BoundCertificate() + " client_id=gw&grant_type=client_credentials "; got != want {
			t.Errorf("auth %q: server saw %q, want %q", auth, got, want)
		}
	}
	block, _ := pem.Decode(certPEM)
	leaf, _ := x509.ParseCertificate(block.Bytes)
	if c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: srv.URL + "/token", ClientID: "gw"}, ClientCertPEM: certPEM, ClientCertKeyPEM: keyPEM}); c.BoundCertificate() != oauth.CertificateThumbprint(leaf) {
		t.Error("BoundCertificate is not the certificate's x5t#S256")
	}
	// Without RootCAPEM the server's self-signed certificate is not trusted.
	c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: srv.URL + "/token", ClientID: "gw"}, ClientCertPEM: certPEM, ClientCertKeyPEM: keyPEM})
	if _, err := c.Token(context.Background(), nil, ""); err == nil {
		t.Error("an untrusted server certificate was accepted")
	}
}

// TestMutualTLSLoadErrors: a certificate without its key, a key of another
// certificate, or tls_client_auth without a certificate fail in New, and
// the message never carries the key.
func TestMutualTLSLoadErrors(t *testing.T) {
	certPEM, keyPEM := selfSigned(t, "gateway")
	_, otherKey := selfSigned(t, "other")
	for name, cfg := range map[string]oauth.Config{
		"cert without key":         {ClientCertPEM: certPEM},
		"key without cert":         {ClientCertKeyPEM: keyPEM},
		"key of another cert":      {ClientCertPEM: certPEM, ClientCertKeyPEM: otherKey},
		"not PEM":                  {ClientCertPEM: []byte("junk"), ClientCertKeyPEM: keyPEM},
		"tls_client_auth, no cert": {Settings: oauth.Settings{Auth: oauth.AuthTLSClient}},
		"self_signed, no cert":     {Settings: oauth.Settings{Auth: oauth.AuthSelfSignedTLSClient}},
		"tls_client_auth + secret": {Settings: oauth.Settings{Auth: oauth.AuthTLSClient, ClientSecret: secretBasic}, ClientCertPEM: certPEM, ClientCertKeyPEM: keyPEM},
		"bad root CA":              {RootCAPEM: []byte("junk")},
	} {
		cfg.Endpoint, cfg.ClientID = "https://as.example/token", "gw"
		_, err := oauth.New(cfg)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), secretBasic) {
			t.Errorf("%s: error quotes a secret: %v", name, err)
		}
	}
}
