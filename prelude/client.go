package prelude

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Defaults applied by New for zero Options fields.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = 1 << 20
	DefaultUserAgent        = "caddy-inject-token-prelude/1"
)

// headerSDKUserAgent identifies the client library to the server, as the
// official SDKs do with their own name ("Prelude/0.6.0 … (Web)").
const headerSDKUserAgent = "X-SDK-User-Agent"

// headerDeviceID carries the session's device id (tokencache.DeviceID).
const headerDeviceID = "X-Device-Id"

// modulePath is this module's path, looked up in the build info for the
// version sdkUserAgent reports.
const modulePath = "github.com/tokenwarden/caddy-inject-token"

// sdkUserAgent is this module's own name and version, sent in
// X-SDK-User-Agent on every request: it never claims to be an official
// SDK, so the server can tell a gateway's traffic apart.
var sdkUserAgent = "caddy-inject-token/" + moduleVersion() + " (Go; prelude)"

// moduleVersion is this module's version from the build info: "devel" in
// tests and builds from a work tree.
func moduleVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := bi.Main.Version
	if bi.Main.Path != modulePath {
		v = ""
		for _, d := range bi.Deps {
			if d.Path == modulePath {
				v = d.Version
			}
		}
	}
	if v == "" || v == "(devel)" {
		return "devel"
	}
	return v
}

// Options configure a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends the requests. nil means a client with a 10 s overall
	// timeout. Whatever client is given, New uses a copy that never follows
	// a redirect of a non-GET request: a redirected POST would either be
	// re-sent as a GET or re-sent with its refresh token to another URL.
	HTTPClient *http.Client
	// UserAgent is sent on every request; "" means DefaultUserAgent.
	UserAgent string
	// Nonces remembers DPoP nonces per origin. Share one store between
	// clients (and restarts, if persisted) so the first proof after a
	// restart does not cost a use_dpop_nonce round trip. nil means a new
	// store owned by this client.
	Nonces *dpop.NonceStore
	// MaxResponseBytes bounds every response body read; a longer body is an
	// error. ≤ 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64
}

// Client talks to one Prelude Auth frontend (one app). It is safe for
// concurrent use; it holds no session state except DPoP nonces and the
// last observed server clock skew, both of which are per server rather than
// per session.
type Client struct {
	base    *url.URL // path without trailing slash
	hc      *http.Client
	ua      string
	nonces  *dpop.NonceStore
	maxBody int64
	skew    atomic.Int64 // latest clockSkew, ns; dates DPoP proofs on the server's clock
	dated   atomic.Bool  // skew was measured (an answer had a Date)
}

// New returns a client for the frontend API at baseURL, e.g.
// "https://<app>.session.prelude.dev" or a custom domain. baseURL must be an
// absolute http(s) URL without query, fragment or user info; a path prefix
// and a trailing slash are allowed.
func New(baseURL string, opts Options) (*Client, error) {
	u, err := wire.CheckURL(baseURL, false)
	if err != nil {
		return nil, errors.New("prelude: base URL " + err.Error())
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")

	c := &Client{
		base:    u,
		hc:      wire.NoPostRedirects(opts.HTTPClient, DefaultTimeout),
		ua:      opts.UserAgent,
		nonces:  opts.Nonces,
		maxBody: opts.MaxResponseBytes,
	}
	if c.ua == "" {
		c.ua = DefaultUserAgent
	}
	if c.nonces == nil {
		c.nonces = new(dpop.NonceStore)
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	return c, nil
}

// call describes one API request.
type call struct {
	op     string
	method string
	path   string      // below the base URL, e.g. "/v1/session/refresh"
	query  string      // raw, already encoded, in the order the SDK sends it
	body   any         // JSON-encoded when non-nil
	key    *dpop.Key   // when set, a DPoP proof is attached
	header http.Header // credentials: X-Refresh-Token, Authorization, …
	// spends is true for a refresh: the request presents a single-use
	// token, so only answers that prove the server did not act are
	// transient (see Kind).
	spends bool
	// hc, when set, replaces the client's HTTP client (an OTP login's
	// cookie-keeping copy).
	hc *http.Client
	// secrets are scrubbed from any server text copied into errors.
	secrets []string
}

// reply is a received response with its body read (bounded).
type reply struct {
	*wire.Reply
	skew time.Duration // localNow − serverNow (see clockSkew); 0 if unknown
}

// fail builds an Error for c; cause may be nil.
func (c *call) fail(kind Kind, status int, cause error) *Error {
	e := &Error{Failure: tokencache.Failure{Class: kind.Class(), Status: status}, Op: c.op, Kind: kind, err: cause}
	if cause != nil {
		e.detail = wire.Scrub(cause.Error(), c.secrets)
	}
	return e
}

// refuse is the error for arguments rejected before anything is sent.
func (c *call) refuse(msg string) *Error {
	return c.fail(KindCaller, 0, errors.New(msg))
}

// lost is the Kind for a request that reached the server without a usable
// answer (status: the 2xx whose body failed, or 0).
func (c *call) lost(status int) Kind {
	return c.kind(tokencache.Attempt{Written: true, Status: status}, 0)
}

// malformed is the error for a 2xx response whose content cannot be used.
// The server accepted the request, so whatever it changed (a rotated refresh
// token, a new session) may have happened.
func (c *call) malformed(rep *reply, what string) *Error {
	return c.fail(c.lost(rep.Status), rep.Status, errors.New("malformed response: "+what))
}

// do sends c and returns the 2xx reply or an *Error. A DPoP-signed request
// is re-sent with a fresh proof at most once for each of two reasons the
// server gives before acting on it:
//   - use_dpop_nonce with a DPoP-Nonce header: the new proof carries it
//     (the official SDKs do the same);
//   - invalid_dpop_proof while the response's Date shows a clock skew
//     different from the one the proof's iat was corrected by: the new
//     proof is dated on the server's clock. The web SDK does not do this
//     (its proofs use the browser's clock); this module does because a
//     gateway's clock may jump, and a proof rejection proves the server did
//     not spend the token, so resending costs nothing.
//
// Either rejection left after its retry is KindTransient: the token cache
// tries again later with a fresh proof.
func (cl *Client) do(ctx context.Context, c *call) (*reply, error) {
	var payload []byte
	if c.body != nil {
		var err error
		if payload, err = json.Marshal(c.body); err != nil {
			return nil, c.fail(KindCaller, 0, err)
		}
	}
	u := cl.endpoint(c.path, c.query)
	var nonceRetried, skewRetried bool
	for {
		skew := time.Duration(cl.skew.Load())
		rep, err := cl.send(ctx, c, u, payload, skew)
		if err != nil {
			return nil, err
		}
		if rep.Status >= 200 && rep.Status < 300 {
			return rep, nil
		}
		var code, msg, typ string
		if rep.BodyErr == nil {
			code, msg, typ = envelope(rep.Body)
		}
		if c.key != nil {
			switch {
			case code == wire.CodeUseDPoPNonce && !nonceRetried && rep.Header.Get("DPoP-Nonce") != "":
				nonceRetried = true // send stored the nonce; the new proof uses it
				continue
			case code == wire.CodeInvalidDPoPProof && !skewRetried && time.Duration(cl.skew.Load()) != skew:
				skewRetried = true
				continue
			}
		}
		e := c.fail(c.classify(rep.Status, code, wire.HasRetryAfter(rep.Header)), rep.Status, nil)
		e.Code = wire.Scrub(code, c.secrets)
		e.Type = wire.Scrub(typ, c.secrets)
		e.Message = wire.Scrub(msg, c.secrets)
		e.RetryDelay = rep.RetryHint(time.Now(), maxRetryAfter)
		return nil, e
	}
}

// endpoint returns the absolute URL for path below the base URL.
func (cl *Client) endpoint(path, query string) *url.URL {
	u := *cl.base
	u.Path += path
	if u.RawPath != "" {
		u.RawPath += path // path is plain ASCII: its escaped form is itself
	}
	u.RawQuery = query
	return &u
}

// send performs one HTTP exchange. Errors are classified by whether the
// request was fully written (see wire.Do): before that the server cannot
// have acted on it.
// skew (localNow − serverNow) dates the DPoP proof on the server's clock.
func (cl *Client) send(ctx context.Context, c *call, u *url.URL, payload []byte, skew time.Duration) (*reply, error) {
	// With c.key, a fresh proof (new jti) per attempt, over the exact URL
	// sent, with the newest nonce for this origin and iat on the server's
	// clock.
	header := c.header.Clone()
	if header == nil {
		header = http.Header{}
	}
	header.Set(headerSDKUserAgent, sdkUserAgent)
	if id := tokencache.DeviceID(ctx); id != "" {
		// The session's own random id (Prelude Auth SDKs ≥ 0.5 send their
		// install's on every request); absent when no session is behind
		// the call.
		header.Set(headerDeviceID, id)
	}
	if c.method == http.MethodPost && payload == nil {
		// The SDK labels its bodiless POSTs (refresh, revoke, me/revoke)
		// as JSON too; a strict server may insist.
		header.Set("Content-Type", "application/json")
	}
	req, err := (&wire.Request{
		Method: c.method, URL: u, Body: payload, ContentType: "application/json",
		Header: header, UserAgent: cl.ua,
		Key: c.key, Nonces: cl.nonces, ProofTime: time.Now().Add(-skew),
	}).Build(ctx)
	if err != nil {
		return nil, c.fail(KindCaller, 0, err)
	}
	hc := cl.hc
	if c.hc != nil {
		hc = c.hc
	}
	r, written, err := wire.Do(hc, req, cl.maxBody, cl.nonces.Observe)
	if err != nil {
		return nil, c.fail(c.kind(tokencache.Attempt{Written: written}, 0), 0, err)
	}
	rep := &reply{Reply: r}
	if !r.Date.IsZero() {
		rep.skew = cl.observe(r)
	}
	return rep, nil
}

// ServerSkew implements tokencache.ServerClock: the skew the latest
// answer's Date showed (see clockSkew) or, before any answer, the one a
// GET of the frontend's public keys (/.well-known/jwks.json) shows.
func (cl *Client) ServerSkew(ctx context.Context) (time.Duration, error) {
	if cl.dated.Load() {
		return time.Duration(cl.skew.Load()), nil
	}
	r, err := wire.ProbeDate(ctx, cl.hc, http.MethodGet, cl.base.JoinPath(".well-known", "jwks.json"), cl.ua)
	if err != nil {
		return 0, fmt.Errorf("prelude: reading the token server's clock: %w", err)
	}
	return cl.observe(r), nil
}

// observe records the skew r's Date shows and returns it.
func (cl *Client) observe(r *wire.Reply) time.Duration {
	skew := clockSkew(r.ReceivedAt, r.Date)
	cl.skew.Store(int64(skew))
	cl.dated.Store(true)
	return skew
}

// clockSkew estimates localNow − serverNow from a response's Date header.
// Date is truncated to the second, so when it was generated the server's
// clock read somewhere in [date, date+1s): the estimate uses the middle of
// that window, which makes agreeing clocks come out within ±0.5 s (plus
// transit time). Estimates under 1 s are reported as 0: they are below what
// the header can resolve, and correcting by them would only add noise.
// (oauth's observeDate does not centre on the window; the two estimates are
// deliberately left separate, see there.)
func clockSkew(localNow, date time.Time) time.Duration {
	skew := localNow.Sub(date.Add(500 * time.Millisecond))
	if skew.Abs() < time.Second {
		return 0
	}
	return skew
}

// decode unmarshals a 2xx JSON object into the struct v, matching member
// names exactly as the SDKs do (wire.UnmarshalExact).
func (c *call) decode(rep *reply, v any) error {
	if rep.BodyErr != nil {
		return c.fail(c.lost(rep.Status), rep.Status, rep.BodyErr)
	}
	if err := wire.UnmarshalExact(rep.Body, v); err != nil {
		return c.malformed(rep, "body is not the expected JSON")
	}
	return nil
}
