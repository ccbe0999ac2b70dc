package oauth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
)

// mtlsClient returns hc (nil: a new client) with a transport that presents
// cfg's client certificate and trusts cfg's roots, or hc unchanged when
// cfg has neither. It also returns the certificate's x5t#S256 ("" without
// one). Errors never include key material.
func mtlsClient(cfg *Config) (*http.Client, string, error) {
	cert, err := clientCertificate(cfg)
	if err != nil {
		return nil, "", err
	}
	if cert == nil && len(cfg.RootCAPEM) == 0 {
		return cfg.HTTPClient, "", nil
	}
	hc := &http.Client{Timeout: DefaultTimeout}
	if cfg.HTTPClient != nil {
		cp := *cfg.HTTPClient
		hc = &cp
	}
	var tr *http.Transport
	switch base := hc.Transport.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		tr = base.Clone()
	default:
		return nil, "", fmt.Errorf("oauth: a client certificate or RootCAPEM needs HTTPClient.Transport to be an *http.Transport, not %T", base)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if tr.TLSClientConfig != nil {
		tc = tr.TLSClientConfig.Clone()
	}
	if len(cfg.RootCAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.RootCAPEM) {
			return nil, "", errors.New("oauth: RootCAPEM holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	thumb := ""
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
		thumb = CertificateThumbprint(cert.Leaf)
	}
	tr.TLSClientConfig = tc
	hc.Transport = tr
	return hc, thumb, nil
}

// clientCertificate is cfg's client certificate with its Leaf parsed, or
// nil when none is configured.
func clientCertificate(cfg *Config) (*tls.Certificate, error) {
	if cfg.ClientCertificate != nil {
		cert := *cfg.ClientCertificate
		if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
			return nil, errors.New("oauth: ClientCertificate needs a certificate and its private key")
		}
		if cert.Leaf == nil {
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				return nil, fmt.Errorf("oauth: ClientCertificate does not parse: %v", err)
			}
			cert.Leaf = leaf
		}
		return &cert, nil
	}
	switch {
	case len(cfg.ClientCertPEM) == 0 && len(cfg.ClientCertKeyPEM) == 0:
		return nil, nil
	case len(cfg.ClientCertKeyPEM) == 0:
		return nil, errors.New("oauth: ClientCertPEM needs ClientCertKeyPEM (the certificate's private key)")
	case len(cfg.ClientCertPEM) == 0:
		return nil, errors.New("oauth: ClientCertKeyPEM needs ClientCertPEM (the certificate)")
	}
	// tls.X509KeyPair's errors name what is wrong ("private key does not
	// match public key", "failed to find any PEM data"), never the key.
	cert, err := tls.X509KeyPair(cfg.ClientCertPEM, cfg.ClientCertKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("oauth: client certificate: %v", err)
	}
	return &cert, nil
}

// CertificateThumbprint is the RFC 8705 §3.1 x5t#S256 of cert: the
// base64url SHA-256 of its DER encoding, as an authorization server puts
// it in a bound token's cnf claim.
func CertificateThumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// BoundCertificate returns the x5t#S256 of the client certificate this
// client presents to the authorization server, or "" without one. A server
// that binds access tokens to it (RFC 8705 §3) accepts them upstream only
// over TLS with that same certificate; the gateway's transport checks that
// it presents it.
func (c *Client) BoundCertificate() string { return c.certThumb }
