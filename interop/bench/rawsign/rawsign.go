// Package rawsign is a Caddy handler for bench/run.sh only: it makes one
// bare signature per request (the same primitive a DPoP proof uses, with
// nothing around it) and passes the request on. A site with it in front of
// reverse_proxy measures "bare + raw signature" inside the gateway process,
// next to wrk and the upstream, where a signature costs far more than in a
// Go benchmark; the DPoP target is stated against that site.
//
// It is registered only by bench/cmd/caddy-bench, never by cmd/caddy.
package rawsign

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("bench_raw_sign", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		var m Handler
		err := m.UnmarshalCaddyfile(h.Dispenser)
		return &m, err
	})
}

// Handler signs a fixed 600-byte message per request (about the size of a
// proof's signing input) and calls the next handler.
type Handler struct {
	// Alg is ES256 or EdDSA.
	Alg string `json:"alg"`

	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
	msg []byte
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.bench_raw_sign", New: func() caddy.Module { return new(Handler) }}
}

// Provision makes the key.
func (h *Handler) Provision(caddy.Context) error {
	h.msg = make([]byte, 600)
	var err error
	switch h.Alg {
	case "ES256":
		h.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, h.ed, err = ed25519.GenerateKey(rand.Reader)
	default:
		err = fmt.Errorf("bench_raw_sign: alg must be ES256 or EdDSA, got %q", h.Alg)
	}
	return err
}

// ServeHTTP signs, as dpop's proof signing does, and goes on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.ec != nil {
		digest := sha256.Sum256(h.msg)
		if _, _, err := ecdsa.Sign(rand.Reader, h.ec, digest[:]); err != nil {
			return err
		}
	} else {
		_ = ed25519.Sign(h.ed, h.msg)
	}
	return next.ServeHTTP(w, r)
}

// UnmarshalCaddyfile reads `bench_raw_sign ES256|EdDSA`.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return d.ArgErr()
	}
	h.Alg = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
