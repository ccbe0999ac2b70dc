package injecttoken

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func init() {
	caddy.RegisterModule(Transport{})
}

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
	logger  *zap.Logger
	auth    *authHeader
	base    http.RoundTripper // what sends an attempt; the embedded HTTPTransport unless a benchmark sets one
	counted bool              // Provision added this transport to liveTransports
	// certThumb is the x5t#S256 of the client certificate presented
	// upstream ("" for none); certKnown is false when it is picked per
	// handshake (client_certificate_automate) and so cannot be checked.
	certThumb string
	certKnown bool
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
	t.logger, t.auth = ctx.Logger(), new(authHeader)
	if t.HTTPTransport == nil {
		t.HTTPTransport = new(reverseproxy.HTTPTransport)
	}
	if err := t.validate(); err != nil {
		return err
	}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	if err := t.checkBinding(ctx); err != nil {
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

// errTrace refuses TRACE: an upstream that reflects it would hand the
// injected token to the client.
var errTrace = errors.New("inject_token transport: TRACE is not forwarded with a token")

// maxAttempts bounds one exchange: the first attempt, one nonce retry, one
// retry with a proof re-dated on the upstream's clock and one retry with a
// fresh token.
const maxAttempts = 4

// RoundTrip owns the exchange with the upstream for one request: it takes
// the session's token as each attempt leaves (after a small body has been
// buffered, so a slow body never carries a token that expired meanwhile),
// presents it, and reads the answer: a DPoP nonce challenge is retried
// with the same token, a rejection invalidates the token and is retried
// once with a fresh one. Retries need a replayable body (none, or at most
// 64 KiB, which is buffered); otherwise the upstream's answer is returned.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodTrace {
		return nil, errTrace
	}
	c, err := t.credential(req)
	var refused *crossSiteRefusal
	if errors.As(err, &refused) {
		return refused.response(req), nil
	}
	if err != nil {
		return nil, err
	}
	// The scheme is only known once the wrapped transport has set it; the
	// proof must name the scheme actually used.
	t.HTTPTransport.SetScheme(req)
	if c.preset {
		// A per-subject token the handler presented: no session of this
		// transport's holds it.
		c.presented.Store(true)
		return t.roundTripper().RoundTrip(req)
	}
	if err := t.checkPresented(c); err != nil {
		return nil, err
	}
	if err := c.buffer(req); err != nil {
		return nil, err
	}
	nonceRetried, freshRetried, proofRetried, kind := false, false, false, proofFirst
	for range maxAttempts {
		tok, err := c.token(req.Context())
		if err != nil {
			return nil, err
		}
		resp, htu, err := t.attempt(req, c, tok, kind)
		if err != nil {
			return nil, err
		}
		if htu != nil {
			c.sess.rsNonces.Set(htu, resp.Header.Get("DPoP-Nonce"))
			c.sess.rsClocks.Observe(htu, resp.Header.Get("Date"), time.Now(), c.sess.tokenServerSkew() != 0)
		}
		switch classify(resp, tok) {
		case answerNonce:
			countUpstreamRejection(c.name, rejectionNonce)
			if nonceRetried || !c.full {
				return resp, nil
			}
			nonceRetried, kind = true, proofNonceRetry
		case answerProof:
			// Most likely iat off the upstream's clock, which its Date
			// has just taught: one retry with a proof dated anew, never
			// more (a proof it rejects for another reason stays rejected).
			if proofRetried || !c.full {
				return resp, nil
			}
			proofRetried = true
		case answerRejected:
			c.rejected(tok, t.logger)
			if freshRetried || !c.full {
				return resp, nil
			}
			fresh, err := c.token(req.Context())
			if err != nil || fresh.Value == tok.Value {
				return resp, nil // no fresh token: the upstream's answer stands
			}
			freshRetried, kind = true, proofFirst
			countRequest(c.name, resultRetried401)
		default:
			return resp, nil
		}
		discard(resp)
	}
	return nil, errors.New("inject_token transport: too many attempts") // unreachable
}

// attempt sends one copy of req (the RoundTripper contract forbids changing
// the caller's) presenting tok. It returns the htu a DPoP proof was signed
// for, so the caller can record the upstream's nonce for it.
func (t *Transport) attempt(req *http.Request, c *credential, tok *tokencache.Token, kind string) (*http.Response, *url.URL, error) {
	out := new(http.Request)
	*out = *req // the Trailer map stays shared: reverse_proxy fills it at EOF
	out.Header = req.Header.Clone()
	if c.body != nil || c.src != nil {
		out.Body, out.ContentLength = c.replay(req), req.ContentLength
		if c.full {
			out.ContentLength = int64(len(c.body))
			if req.ContentLength < 0 && len(req.Trailer) > 0 {
				out.ContentLength = -1 // trailers need chunked framing
			}
			out.GetBody = func() (io.ReadCloser, error) { return c.replay(req), nil }
		}
	}
	var htu *url.URL
	if isDPoP(tok) {
		htu = t.htu(req)
		if err := presentDPoP(out, tok, htu, &c.sess.rsNonces, c.sess.proofTime(htu), t.auth); err != nil {
			return nil, nil, fmt.Errorf("inject_token transport: session %q: %w", c.name, err)
		}
		c.sess.countProof(kind)
	} else {
		presentBearer(out.Header, tok, t.auth)
	}
	c.presented.Store(true)
	resp, err := t.roundTripper().RoundTrip(out)
	return resp, htu, err
}

// roundTripper is the transport requests leave through.
func (t *Transport) roundTripper() http.RoundTripper {
	if t.base != nil {
		return t.base
	}
	return t.HTTPTransport
}

// discard drains a little of a response that is being replaced by a retry,
// so its connection can be reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReplayBody))
	resp.Body.Close()
}

// buffer reads a body of at most maxReplayBody into c so that it can be
// sent more than once; a larger one streams (its first bytes are kept and
// sent before the rest). A reverse_proxy retry of the same request finds
// the body already read.
func (c *credential) buffer(req *http.Request) error {
	if req.Body == nil || req.Body == http.NoBody {
		c.src, c.body, c.full = nil, nil, true
		return nil
	}
	if c.src == req.Body {
		return nil // reverse_proxy is retrying this request (dial error)
	}
	c.src, c.body, c.full = req.Body, nil, false
	if req.ContentLength > maxReplayBody {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxReplayBody+1))
	if err != nil {
		return fmt.Errorf("inject_token transport: reading request body: %w", err)
	}
	c.body, c.full = body, len(body) <= maxReplayBody
	if c.full {
		dropCredentialNames(req.Trailer, nil) // they arrived with the body's end
	}
	return nil
}

// replay returns a reader of the request body for one attempt.
func (c *credential) replay(req *http.Request) io.ReadCloser {
	if c.full {
		return io.NopCloser(bytes.NewReader(c.body))
	}
	body := c.src
	if len(c.body) > 0 {
		body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(c.body), c.src), c.src}
		c.body = nil // the stream can be read only once
	}
	return &trailerStripper{ReadCloser: body, req: req}
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

// credential finds the request's credential: the one the handler set, or,
// in transport-only mode, the configured session's, kept in the request's
// variables for reverse_proxy's retries.
func (t *Transport) credential(req *http.Request) (*credential, error) {
	if c := credentialOf(req.Context()); c != nil {
		return c, nil
	}
	if t.Session == "" {
		return nil, errNoCredential
	}
	// No handler ran, so none refused a browser's cross-site request: the
	// same default refusal applies here (a transport has no allow list).
	if why := crossSite(req); why != "" {
		return nil, &crossSiteRefusal{session: t.Session, why: why}
	}
	s, ok := lookupSession(t.Session)
	if !ok {
		return nil, fmt.Errorf("inject_token transport: session %q is not configured by any inject_token handler", t.Session)
	}
	c := &credential{sess: s, name: t.Session}
	caddyhttp.SetVar(req.Context(), credVar, c)
	return c, nil
}

// crossSiteRefusal is a browser's cross-site request refused by a
// transport used without a handler.
type crossSiteRefusal struct{ session, why string }

func (e *crossSiteRefusal) Error() string { return forbiddenOf(e.session, e.why).Error }

// response is the handler's 403 answer, given as the upstream's: an error
// from a transport would reach the client as 502.
func (e *crossSiteRefusal) response(req *http.Request) *http.Response {
	body, _ := json.Marshal(forbiddenOf(e.session, e.why)) // plain strings always marshal
	return &http.Response{
		Status: "403 Forbidden", StatusCode: http.StatusForbidden, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: req,
	}
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
