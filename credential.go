package injecttoken

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// This file is the contract between the inject_token handler and the
// inject_token transport, the one place both sides read:
//
//   - what travels with a request: a *credential in the request variable
//     credVar, naming the session (never a token: the transport takes the
//     token itself, per attempt, after the body has arrived);
//   - which client headers are credentials and how they are removed
//     (headers, the names a client lists in Connection, trailers);
//   - how a token is presented (Bearer, or DPoP with a proof);
//   - how an upstream answer is classified (ok, nonce challenge, rejection)
//     and what a rejection costs (one unit of the session's 401 budget per
//     rejected token, never for an attempt that carried no token).
//
// The transport owns the exchange: present, sign, send, classify, retry on
// a nonce challenge, invalidate and retry once on a rejection. The handler
// only presents a Bearer token itself on routes whose reverse_proxy has no
// inject_token transport, and there it only learns of a 401 (no retry).

// credVar is the request variable through which the handler hands the
// request's credential to the transport.
const credVar = "inject_token.credential"

// maxReplayBody is the largest request body the transport buffers so that
// a request can be sent again (nonce challenge, rejected token).
const maxReplayBody = 64 << 10

// credential is what one request carries from the handler to the
// transport: the session whose token to present. It holds no token, so it
// cannot leak one, and the transport always presents the token current at
// the moment each attempt leaves.
type credential struct {
	sess *session
	name string

	// rt and key, when rt is set, are the run-time session of the
	// template sess stands for: its token is rt's for key, and sess holds
	// only what the template's sessions share (nonces, clocks, budget).
	rt  *tokencache.Runtime
	key string

	// preset: the handler presented a per-subject token (token_exchange
	// subject_header) itself; the transport sends the request as it is
	// and sess is nil.
	preset bool

	// presented is set by the transport when an attempt left with the
	// token: the handler then knows the exchange was the transport's.
	presented atomic.Bool

	// The request body as the transport buffered it, kept so that a
	// reverse_proxy retry (after a dial error) of the same request sends
	// it again; src is the body it was read from. Attempts are sequential.
	src  io.ReadCloser
	body []byte
	full bool // body is all of src (replayable)

	// The handler's status-capturing writer, in the same allocation.
	w statusWriter
}

// String keeps anything that prints the credential (a {http.vars.*}
// placeholder, a debug log of request variables) free of secrets.
func (c *credential) String() string {
	return "inject_token credential (session " + c.name + ")"
}

// GoString is like String.
func (c *credential) GoString() string { return c.String() }

// token is the token to present now: the named session's, or the
// run-time session's.
func (c *credential) token(ctx context.Context) (*tokencache.Token, error) {
	if c.rt != nil {
		return c.rt.Token(ctx, c.key)
	}
	return c.sess.cache().Token(ctx)
}

// invalidate makes the session replace token at its next use.
func (c *credential) invalidate(token string) {
	if c.rt == nil {
		c.sess.cache().Invalidate(token)
		return
	}
	if tc, err := c.rt.Session(c.key); err == nil {
		tc.Invalidate(token)
	}
}

// credentialOf returns the credential the handler set for req, or nil.
func credentialOf(ctx context.Context) *credential {
	c, _ := caddyhttp.GetVar(ctx, credVar).(*credential)
	return c
}

// liveTransports counts provisioned inject_token transports, so the
// handler can refuse a DPoP-bound token when no transport could sign for
// it rather than send the request where it can only fail.
var liveTransports atomic.Int64

// isDPoP reports whether tok must be presented with a DPoP proof.
func isDPoP(tok *tokencache.Token) bool { return strings.EqualFold(tok.Type, "DPoP") }

// clientCredentialHeaders are the request headers a client may never
// choose: the gateway sets them.
var clientCredentialHeaders = []string{"Authorization", "DPoP"}

// stripClientCredentials removes the client's credentials (and the extra
// names) from h, and those names from its Connection header: a client that
// lists "Authorization" there would make reverse_proxy drop the injected
// header as hop-by-hop.
func stripClientCredentials(h http.Header, extra []string) {
	for _, name := range clientCredentialHeaders {
		h.Del(name)
	}
	for _, name := range extra {
		h.Del(name)
	}
	dropConnectionNames(h, extra)
}

// dropConnectionNames removes from h's Connection header the credential
// names and the extra ones, keeping its other tokens (Upgrade for a
// WebSocket): a header the gateway sets must not be one the client can
// have reverse_proxy drop as hop-by-hop after it was set.
func dropConnectionNames(h http.Header, extra []string) {
	conn := h["Connection"]
	if len(conn) == 0 {
		return
	}
	kept := conn[:0:0]
	for _, v := range conn {
		var b strings.Builder
		for tok := range strings.SplitSeq(v, ",") {
			tok = textproto.TrimString(tok)
			if tok == "" || isCredentialName(tok, extra) {
				continue
			}
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tok)
		}
		if b.Len() > 0 {
			kept = append(kept, b.String())
		}
	}
	if len(kept) == 0 {
		h.Del("Connection")
		return
	}
	h["Connection"] = kept
}

func isCredentialName(name string, extra []string) bool {
	for _, n := range clientCredentialHeaders {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	for _, n := range extra {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// mayHaveTrailers reports whether r's body can end with trailers: only a
// body of unknown length (chunked, or HTTP/2) or one with declared trailers.
func mayHaveTrailers(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && (r.ContentLength < 0 || r.Trailer != nil)
}

// trailerStripper removes credential names from the trailers of req when
// its body reaches EOF, which is when net/http (or reverse_proxy, for its
// copy) fills them in, and before anyone forwards them.
type trailerStripper struct {
	io.ReadCloser
	req   *http.Request
	extra []string
}

func (b *trailerStripper) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		dropCredentialNames(b.req.Trailer, b.extra)
	}
	return n, err
}

// dropCredentialNames deletes the credential names (and extra) from h.
func dropCredentialNames(h http.Header, extra []string) {
	for name := range h {
		if isCredentialName(name, extra) {
			delete(h, name)
		}
	}
}

// stripTrailers makes sure the credential names never travel as trailers
// of r. It changes r.Body, so call it on a request the caller owns.
func stripTrailers(r *http.Request, extra []string) {
	if !mayHaveTrailers(r) {
		return
	}
	dropCredentialNames(r.Trailer, extra)
	r.Body = &trailerStripper{ReadCloser: r.Body, req: r, extra: extra}
}

// answer is how an upstream's response is classified.
type answer int

const (
	answerOK       answer = iota // anything but a challenge of the credential
	answerNonce                  // 401 asking for a (new) DPoP nonce: same token, new proof
	answerRejected               // 401: the token was refused
	answerProof                  // 401 invalid_dpop_proof: same token, a proof dated anew
)

// classify tells what resp says about the credential presented with tok.
func classify(resp *http.Response, tok *tokencache.Token) answer {
	if resp.StatusCode != http.StatusUnauthorized {
		return answerOK
	}
	if isDPoP(tok) && resp.Header.Get("DPoP-Nonce") != "" && nonceChallenged(resp.Header) {
		return answerNonce
	}
	if isDPoP(tok) && challenged(resp.Header, "invalid_dpop_proof") {
		return answerProof
	}
	return answerRejected
}

// nonceChallenged reports whether any WWW-Authenticate challenge in h is a
// DPoP use_dpop_nonce one (servers may send several challenges).
func nonceChallenged(h http.Header) bool { return challenged(h, "use_dpop_nonce") }

// challenged reports whether any WWW-Authenticate challenge in h names
// error code.
func challenged(h http.Header, code string) bool {
	for _, v := range h.Values("WWW-Authenticate") {
		if strings.Contains(v, code) {
			return true
		}
	}
	return false
}

// dpopHeader is "DPoP" in the canonical form net/http keys headers by.
var dpopHeader = http.CanonicalHeaderKey("DPoP")

// presentBearer sets tok, a Bearer token, as the Authorization of h.
func presentBearer(h http.Header, tok *tokencache.Token, cache *authHeader) {
	h.Set("Authorization", cache.value(tok))
	h.Del("DPoP")
}

// authHeader remembers the Authorization value of the last token it was
// asked for: the same token serves many requests, and building the value
// each time is an allocation (of the token's size) per request.
type authHeader struct{ last atomic.Pointer[authValue] }

type authValue struct {
	tok   *tokencache.Token
	value string
}

func (b *authHeader) value(tok *tokencache.Token) string {
	scheme := "Bearer "
	if isDPoP(tok) {
		scheme = "DPoP "
	}
	if b == nil {
		return scheme + tok.Value
	}
	if v := b.last.Load(); v != nil && v.tok == tok {
		return v.value
	}
	v := &authValue{tok: tok, value: scheme + tok.Value}
	b.last.Store(v)
	return v.value
}

// presentDPoP sets the credential headers of out, an attempt's own copy of
// the request: tok as a DPoP Authorization and a fresh proof for htu.
func presentDPoP(out *http.Request, tok *tokencache.Token, htu *url.URL, nonces *dpop.NonceStore, now time.Time, cache *authHeader) error {
	if tok.Key == nil {
		return errors.New("the token is DPoP-bound but the session has no DPoP key")
	}
	proof, err := tok.Key.ProofForURL(out.Method, htu, dpop.ProofOptions{
		AccessToken: tok.Value,
		Nonce:       nonces.Get(htu),
		Now:         now,
	})
	if err != nil {
		return fmt.Errorf("signing DPoP proof: %w", err)
	}
	out.Header.Set("Authorization", cache.value(tok))
	// The canonical form of "DPoP", set directly: Set would canonicalise
	// (and allocate) the name on every request.
	out.Header[dpopHeader] = []string{proof}
	return nil
}

// rejected records that the upstream refused tok, which an attempt carried:
// the token is invalidated so the next Token() refreshes. A burst of
// rejections of one token spends one unit of the session's 401 budget: the
// first claims the token, the rest find it claimed.
func (c *credential) rejected(tok *tokencache.Token, logger *zap.Logger) {
	s := c.sess
	countUpstreamRejection(c.name, rejectionToken)
	prev := s.rejectedTok.Load()
	if prev == tok || !s.rejectedTok.CompareAndSwap(prev, tok) {
		return // this token's rejection is already being dealt with
	}
	if !s.rejects.Allow() {
		s.rejectedTok.CompareAndSwap(tok, prev) // a later 401 may try again
		countUpstreamRejection(c.name, rejectionRateLimited)
		if n := s.limitedLog.event(time.Now(), rejectRefreshEvery); n > 0 {
			logger.Warn("upstream keeps rejecting fresh tokens; not refreshing for these 401s (one line per interval)",
				zap.String("session", c.name), zap.Int("count", n), zap.Duration("interval", rejectRefreshEvery))
		}
		return
	}
	c.invalidate(tok.Value)
	if ce := logger.Check(zapcore.DebugLevel, "upstream rejected token; invalidated"); ce != nil {
		ce.Write(zap.String("session", c.name), zap.String("sid", tok.SessionID))
	}
}

// statusWriter passes a response through and remembers whether it was a
// 401, for routes where the handler presented the token itself.
type statusWriter struct {
	caddyhttp.ResponseWriterWrapper
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write implies 200 when no status was written.
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}
