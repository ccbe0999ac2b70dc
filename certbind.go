package injecttoken

import (
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// certBound is a backend that presents a TLS client certificate to its
// authorization server, which may bind the access tokens to it (RFC 8705
// §3, cnf x5t#S256): the upstream then accepts them only over TLS with
// that same certificate.
type certBound interface {
	// BoundCertificate is the certificate's x5t#S256, or "" for none.
	BoundCertificate() string
}

// boundCertificate is the x5t#S256 the session's tokens may be bound to,
// or "".
func (s *settings) boundCertificate() string {
	if b, ok := s.backend.(certBound); ok {
		return b.BoundCertificate()
	}
	return ""
}

// x5tS256 is the RFC 8705 §3.1 thumbprint of a DER certificate.
func x5tS256(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// ownCertificate is the x5t#S256 of the client certificate the wrapped
// http transport presents (tls_client_auth), "" for none, and whether it
// is known at load (a certificate from client_certificate_automate is
// picked per handshake).
func (t *Transport) ownCertificate() (string, bool) {
	tr := t.HTTPTransport.Transport
	if tr == nil || tr.TLSClientConfig == nil {
		return "", true
	}
	tc := tr.TLSClientConfig
	if len(tc.Certificates) == 0 || len(tc.Certificates[0].Certificate) == 0 {
		return "", tc.GetClientCertificate == nil
	}
	return x5tS256(tc.Certificates[0].Certificate[0]), true
}

// checkBinding refuses a transport that would present a session's
// certificate-bound tokens without the certificate they are bound to: the
// sessions of the inject_token handlers that run before it (in the routes
// of the subroutes enclosing it, as a Caddyfile site is one), and the one
// its session option names when that is already configured.
func (t *Transport) checkBinding(ctx caddy.Context) error {
	own, known := t.ownCertificate()
	t.certThumb, t.certKnown = own, known
	if !known {
		return nil
	}
	check := func(name, bound string) error {
		if bound == "" || bound == own {
			return nil
		}
		if own == "" {
			return fmt.Errorf("inject_token transport: session %q presents a TLS client certificate to its authorization server, which may bind tokens to it (RFC 8705), but this transport presents none: add 'tls_client_auth <cert_file> <key_file>' with the same certificate as the session's oauth2 client_certificate", name)
		}
		return fmt.Errorf("inject_token transport: session %q's tokens may be bound to its oauth2 client_certificate (x5t#S256 %s), but this transport's tls_client_auth certificate is another one (x5t#S256 %s): the upstream would reject them; use the same certificate in both", name, bound, own)
	}
	owner := configOf(ctx)
	for _, name := range enclosingSessions(ctx) {
		if s, ok := lookupSession(name); ok {
			if set := s.settingsOf(owner); set != nil {
				if err := check(name, set.boundCertificate()); err != nil {
					return err
				}
			}
		}
	}
	if t.Session != "" {
		if s, ok := lookupSession(t.Session); ok {
			if set := s.settingsOf(owner); set != nil {
				return check(t.Session, set.boundCertificate())
			}
		}
	}
	return nil
}

// enclosingSessions names the sessions of the inject_token handlers in the
// routes of the subroutes enclosing ctx's module (a Caddyfile site is
// one): provisioned ones, and, in the route being provisioned (whose
// handlers are loaded as a list), the ones still only in its raw JSON.
func enclosingSessions(ctx caddy.Context) []string {
	var names []string
	for _, m := range ctx.Modules() {
		sr, ok := m.(*caddyhttp.Subroute)
		if !ok {
			continue
		}
		for _, r := range sr.Routes {
			for _, h := range r.Handlers {
				if it, ok := h.(*Handler); ok {
					names = append(names, it.Session)
				}
			}
			for _, raw := range r.HandlersRaw {
				var h struct {
					Handler string `json:"handler"`
					Session string `json:"session"`
				}
				if json.Unmarshal(raw, &h) == nil && h.Handler == "inject_token" {
					names = append(names, cmp.Or(h.Session, DefaultSession))
				}
			}
		}
	}
	return names
}

// checkPresented is the same check for one request's session, for what
// the load-time check cannot see (a session configured after this
// transport, a reload that changed the session's certificate).
func (t *Transport) checkPresented(c *credential) error {
	if !t.certKnown {
		return nil
	}
	if bound := c.sess.settings().boundCertificate(); bound != "" && bound != t.certThumb {
		return fmt.Errorf("inject_token transport: session %q's tokens may be bound to a TLS client certificate this transport does not present (tls_client_auth): not sent", c.name)
	}
	return nil
}
