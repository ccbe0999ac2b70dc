package injecttoken

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// credVar is the request variable through which the inject_token handler
// hands the chosen session's token to the transport.
const credVar = "inject_token.credential"

// credential is one request's token, with what the transport needs to sign
// DPoP proofs for it. Signed records that a transport presented it, so the
// handler can tell a route that forgot the transport.
type credential struct {
	session string
	tok     *tokencache.Token // carries its DPoP key
	nonces  *dpop.NonceStore  // resource-server nonces, per origin
	signed  atomic.Bool
}

// String keeps the token out of anything that prints the credential, such
// as a {http.vars.*} placeholder or a debug log of request variables.
func (c *credential) String() string {
	return "inject_token credential (session " + c.session + ", " + c.tok.Type + ")"
}

// GoString is like String.
func (c *credential) GoString() string { return c.String() }

// liveTransports counts provisioned inject_token transports, so the handler
// can refuse a DPoP-bound token when no transport could sign for it.
var liveTransports atomic.Int64

// Transport is a reverse_proxy transport that presents the session's token
// to the upstream, signing a fresh DPoP proof for every attempt when the
// token is DPoP-bound. It wraps Caddy's http transport and accepts all of
// its options (TLS included).
//
// Only a transport sees the request exactly as the upstream receives it:
// after every rewrite, the upstream choice and on each retry. So the proof's
// htm and htu are those of that request — the scheme actually used, the Host
// header actually sent (lowercased, default port dropped) and the path as
// sent — with ath of the token and a new jti and iat each attempt. Nonces a
// resource server sends (DPoP-Nonce) are remembered per origin; a 401 with
// WWW-Authenticate: DPoP error="use_dpop_nonce" is retried once when the
// request has no body (bodies up to 64 KiB are replayed by the handler).
//
// With inject_token in the same route it needs no arguments: it serves the
// session the handler picked. Bearer tokens pass through unchanged.
type Transport struct {
	// Session names the session to use when no inject_token handler ran
	// for the request. Normally empty.
	Session string `json:"session,omitempty"`

	// Origin, when set (e.g. "https://api.example.com"), replaces the
	// scheme and host of htu: for resource servers that know themselves by
	// a public name other than the Host header they receive. The path stays
	// the one sent.
	Origin string `json:"origin,omitempty"`

	*reverseproxy.HTTPTransport

	origin  *url.URL
	counted bool // Provision added this transport to liveTransports
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.inject_token",
		New: func() caddy.Module { return &Transport{HTTPTransport: new(reverseproxy.HTTPTransport)} },
	}
}

// Provision sets up the wrapped http transport.
func (t *Transport) Provision(ctx caddy.Context) error {
	if t.HTTPTransport == nil {
		t.HTTPTransport = new(reverseproxy.HTTPTransport)
	}
	if err := t.validate(); err != nil {
		return err
	}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	liveTransports.Add(1)
	t.counted = true
	return nil
}

// validate checks the transport's own options and parses origin; it needs
// no context, so the Caddyfile fuzz test can run it.
func (t *Transport) validate() error {
	if t.Origin != "" {
		u, err := url.Parse(t.Origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("origin must be scheme://host[:port] with no path, got %q", t.Origin)
		}
		t.origin = u
	}
	if t.Session != "" && !validSessionName(t.Session) {
		return fmt.Errorf("invalid session name %q: %s", t.Session, sessionNameHint)
	}
	return nil
}

// Cleanup releases the wrapped transport. Caddy also calls it after a
// failed Provision, which never counted the transport.
func (t *Transport) Cleanup() error {
	if t.counted {
		t.counted = false
		liveTransports.Add(-1)
	}
	if t.HTTPTransport == nil {
		return nil
	}
	return t.HTTPTransport.Cleanup()
}

// errNoCredential is returned when neither a handler nor the session option
// provided a token; reverse_proxy turns it into 502.
var errNoCredential = errors.New("inject_token transport: no token for this request (put inject_token before reverse_proxy, or set the transport's session)")

// RoundTrip signs and sends one attempt.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	cred, err := t.credential(req)
	if err != nil {
		return nil, err
	}
	// The scheme is only known once the wrapped transport has set it; the
	// proof must name the scheme actually used.
	t.HTTPTransport.SetScheme(req)
	if !strings.EqualFold(cred.tok.Type, "DPoP") {
		cred.signed.Store(true)
		out := req.Clone(req.Context())
		out.Header.Set("Authorization", "Bearer "+cred.tok.Value)
		return t.HTTPTransport.RoundTrip(out)
	}
	if cred.tok.Key == nil {
		return nil, fmt.Errorf("inject_token transport: session %q has a DPoP-bound token but no DPoP key", cred.session)
	}
	resp, err := t.attempt(req, cred, "first")
	if err != nil || !nonceChallenge(resp) || !bodiless(req) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return t.attempt(req, cred, "nonce_retry")
}

// attempt signs a fresh proof for req as it will be sent and sends a copy
// (the RoundTripper contract forbids changing the caller's request).
func (t *Transport) attempt(req *http.Request, cred *credential, kind string) (*http.Response, error) {
	htu := t.htu(req)
	proof, err := cred.tok.Key.ProofForURL(req.Method, htu, dpop.ProofOptions{
		AccessToken: cred.tok.Value,
		Nonce:       cred.nonces.Get(htu),
	})
	if err != nil {
		return nil, fmt.Errorf("inject_token transport: signing DPoP proof: %w", err)
	}
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "DPoP "+cred.tok.Value)
	out.Header.Set("DPoP", proof)
	cred.signed.Store(true)
	countProof(cred.session, kind)
	resp, err := t.HTTPTransport.RoundTrip(out)
	if resp != nil {
		cred.nonces.Set(htu, resp.Header.Get("DPoP-Nonce"))
	}
	return resp, err
}

// htu is the URL the resource server will reconstruct: the scheme used,
// the Host header sent (or the configured origin), and the path as sent.
// The query is left out (RFC 9449); NormalizeHTU lowercases and drops
// default ports, which also evens out reverse_proxy's retry quirk where the
// first attempt carries ":80" and a retry does not.
func (t *Transport) htu(req *http.Request) *url.URL {
	u := &url.URL{Scheme: req.URL.Scheme, Host: req.Host, Path: req.URL.Path, RawPath: req.URL.RawPath}
	if u.Host == "" {
		u.Host = req.URL.Host
	}
	if t.origin != nil {
		u.Scheme, u.Host = t.origin.Scheme, t.origin.Host
	}
	return u
}

// credential finds the token for req: the one the handler chose, or the
// configured session's.
func (t *Transport) credential(req *http.Request) (*credential, error) {
	if c, ok := caddyhttp.GetVar(req.Context(), credVar).(*credential); ok && c != nil {
		return c, nil
	}
	if t.Session == "" {
		return nil, errNoCredential
	}
	s, ok := lookupSession(t.Session)
	if !ok {
		return nil, fmt.Errorf("inject_token transport: session %q is not configured by any inject_token handler", t.Session)
	}
	tok, err := s.cache().Token(req.Context())
	if err != nil {
		return nil, err
	}
	return &credential{session: t.Session, tok: tok, nonces: &s.rsNonces}, nil
}

// nonceChallenge reports whether resp asks for a (new) DPoP nonce.
func nonceChallenge(resp *http.Response) bool {
	return resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("DPoP-Nonce") != "" && nonceChallenged(resp.Header)
}

// nonceChallenged reports whether any WWW-Authenticate challenge in h is a
// DPoP use_dpop_nonce one (servers may send several challenges).
func nonceChallenged(h http.Header) bool {
	for _, v := range h.Values("WWW-Authenticate") {
		if strings.Contains(v, "use_dpop_nonce") {
			return true
		}
	}
	return false
}

// bodiless reports whether req can be sent again as is.
func bodiless(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody
}

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport inject_token {
//		session <name>        # only without an inject_token handler
//		origin  <scheme://host[:port]>
//		<any http transport option>
//	}
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume transport name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *string
		switch d.Val() {
		case "session":
			dst = &t.Session
		case "origin":
			dst = &t.Origin
		default:
			continue // an http transport option, handled below
		}
		if *dst != "" {
			return d.Errf("%s already specified", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*dst = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		d.DeleteN(2)
	}
	d.Reset()
	if t.HTTPTransport == nil {
		t.HTTPTransport = new(reverseproxy.HTTPTransport)
	}
	return t.HTTPTransport.UnmarshalCaddyfile(d)
}

// Interface guards
var (
	_ caddy.Provisioner         = (*Transport)(nil)
	_ caddy.CleanerUpper        = (*Transport)(nil)
	_ http.RoundTripper         = (*Transport)(nil)
	_ reverseproxy.TLSTransport = (*Transport)(nil)
	_ caddyfile.Unmarshaler     = (*Transport)(nil)
)
