package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestCA is a certificate authority made for one test (RFC 8705 tests):
// it issues client and server certificates for 127.0.0.1.
type TestCA struct {
	// PEM is the CA certificate, for trust settings.
	PEM []byte
	// Pool holds the CA certificate.
	Pool *x509.CertPool

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// KeyPair is a certificate with its key.
type KeyPair struct {
	CertPEM, KeyPEM []byte
	TLS             tls.Certificate
	// Thumbprint is the certificate's x5t#S256 (RFC 8705 §3.1).
	Thumbprint string
}

var serial atomic.Int64

// NewTestCA makes a CA valid for an hour.
func NewTestCA(t testing.TB) *TestCA {
	t.Helper()
	ca := &TestCA{key: newECKey(t)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "interop test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ca.key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	if ca.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	ca.PEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	ca.Pool = x509.NewCertPool()
	ca.Pool.AddCert(ca.cert)
	return ca
}

// Issue returns a certificate for subject CN=cn signed by the CA, usable
// as a TLS client and as a server for 127.0.0.1.
func (ca *TestCA) Issue(t testing.TB, cn string) *KeyPair {
	t.Helper()
	return newKeyPair(t, cn, ca.cert, ca.key)
}

// SelfSigned returns a self-signed certificate for CN=cn
// (self_signed_tls_client_auth).
func SelfSigned(t testing.TB, cn string) *KeyPair {
	t.Helper()
	return newKeyPair(t, cn, nil, nil)
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newKeyPair(t testing.TB, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *KeyPair {
	key := newECKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	kp := &KeyPair{
		CertPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
		Thumbprint: certThumbprint(der),
	}
	if kp.TLS, err = tls.X509KeyPair(kp.CertPEM, kp.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return kp
}

// WriteFiles writes the certificate and key (0600) to dir as
// <name>-cert.pem and <name>-key.pem and returns their paths.
func (k *KeyPair) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+"-cert.pem"), filepath.Join(dir, name+"-key.pem")
	for f, b := range map[string][]byte{certFile: k.CertPEM, keyFile: k.KeyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// certThumbprint is the base64url SHA-256 of a DER certificate.
func certThumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// StartMTLSFront starts a TLS-terminating proxy to p on a 127.0.0.1 port,
// with a server certificate from ca, and returns its https base URL
// (token endpoint: <url>/token). It asks every client for a certificate
// (any, so self-signed ones reach the provider) and passes it on as
// oidc-provider's mTLS configuration in server.js expects: URL-escaped PEM
// in X-Client-Cert, and X-Client-Cert-Verified: SUCCESS when it chains to
// ca. Headers of those names sent by the client are dropped.
func StartMTLSFront(t testing.TB, p *Provider, ca *TestCA) string {
	t.Helper()
	target, err := url.Parse(p.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Header.Del("X-Client-Cert")
		r.Out.Header.Del("X-Client-Cert-Verified")
		if r.In.TLS == nil || len(r.In.TLS.PeerCertificates) == 0 {
			return
		}
		leaf := r.In.TLS.PeerCertificates[0]
		r.Out.Header.Set("X-Client-Cert", url.PathEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}))))
		opts := x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Intermediates: x509.NewCertPool()}
		for _, c := range r.In.TLS.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := leaf.Verify(opts); err == nil {
			r.Out.Header.Set("X-Client-Cert-Verified", "SUCCESS")
		}
	}}
	srv := httptest.NewUnstartedServer(proxy)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1").TLS}, ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// StartTLSResourceServer is StartResourceServer over TLS, with a server
// certificate from ca: it asks clients for a certificate (any), which a
// certificate-bound token's cnf x5t#S256 must match.
func StartTLSResourceServer(t testing.TB, opts ResourceServerOptions, ca *TestCA) *ResourceServer {
	t.Helper()
	if opts.Scheme == "" {
		opts.Scheme = "https"
	}
	rs := NewResourceServer(opts)
	srv := httptest.NewUnstartedServer(rs)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1").TLS}, ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	rs.URL = srv.URL
	return rs
}

// certificateOf is the x5t#S256 of the client certificate r came with, or
// "".
func certificateOf(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return certThumbprint(r.TLS.PeerCertificates[0].Raw)
}
