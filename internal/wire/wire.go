// Package wire is the HTTP exchange plumbing shared by the token-server
// clients (package prelude and package oauth): building one attempt of a
// request (with a fresh DPoP proof), sending it while noting whether it was
// fully written, reading the answer with a bounded body, the HTTP client
// that never follows a redirected POST, and turning what came back into
// safe error text and hints (Retry-After, a JWT's claims, the token
// cache's failure reason for a status or transport error).
//
// It knows nothing about either protocol: which status or error code means
// what, when to retry, and how the Date header corrects clocks stay with
// each client, because those differ.
package wire

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// CheckURL parses raw as a server endpoint that credentials will be sent
// to: an absolute http(s) URL with a host, without user info (credentials
// in the URL would end up in every transport error) or fragment, and
// without a query unless allowQuery. The error text is a bare predicate
// ("has no host", "must not have a query", …) for the caller to prefix.
func CheckURL(raw string, allowQuery bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil && !strings.Contains(raw, "://"), err == nil && u.Host == "" && u.Opaque != "":
		// The text never repeats raw: it may hold a resolved placeholder.
		return nil, errors.New("has no scheme: write http:// or https:// before the host")
	case err != nil:
		return nil, errors.New("does not parse")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme must be http or https, got %q", u.Scheme)
	case u.Host == "":
		return nil, errors.New("has no host")
	case u.User != nil:
		return nil, errors.New("must not contain user info")
	case !allowQuery && (u.RawQuery != "" || u.ForceQuery):
		return nil, errors.New("must not have a query")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return nil, errors.New("must not have a fragment")
	}
	return u, nil
}

// NoPostRedirects returns a copy of hc (or, when hc is nil, a client with
// the given overall timeout) whose redirect policy hands the first redirect
// of a non-GET request back as the response instead of following it: a
// redirected POST would either be re-sent as a GET or carry its credentials
// to another URL. GET redirects are followed as hc would (at most 10 when
// hc has no policy of its own).
func NoPostRedirects(hc *http.Client, timeout time.Duration) *http.Client {
	cp := http.Client{Timeout: timeout}
	if hc != nil {
		cp = *hc
	}
	next := cp.CheckRedirect
	cp.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		switch {
		case via[0].Method != http.MethodGet:
			return http.ErrUseLastResponse
		case next != nil:
			return next(req, via)
		case len(via) >= 10:
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &cp
}

// Reply is a received response with its body already read and closed.
type Reply struct {
	Status int
	Header http.Header
	// Body is the whole body, or nil when BodyErr is set.
	Body []byte
	// BodyErr is the error reading the body, ErrTooLarge for one over the
	// limit. The status and headers are still valid.
	BodyErr error
	// SentAt is the local time just before the request was sent; ReceivedAt
	// the local time its response headers had arrived.
	SentAt, ReceivedAt time.Time
	// Date is the response's Date header, zero when absent or unparseable.
	Date time.Time
}

// Do sends req with hc and reads the response body, at most limit bytes.
// observe, when non-nil, sees the response before its body is read (e.g.
// dpop.NonceStore.Observe).
//
// When hc fails, Do returns the error unchanged and written reports whether
// the request had been fully written (httptrace WroteRequest) before the
// failure: if not, the server cannot have acted on it; if so, it may have.
// written is sticky: a later failed write does not unsend the request. On
// success written is true.
func Do(hc *http.Client, req *http.Request, limit int64, observe func(*http.Response)) (rep *Reply, written bool, err error) {
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				wrote.Store(true)
			}
		},
	}))
	sentAt := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, wrote.Load(), err
	}
	defer resp.Body.Close()
	rep = &Reply{Status: resp.StatusCode, Header: resp.Header, SentAt: sentAt, ReceivedAt: time.Now()}
	if date, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		rep.Date = date
	}
	if observe != nil {
		observe(resp)
	}
	rep.Body, rep.BodyErr = readBounded(resp.Body, limit)
	return rep, true, nil
}

// ErrTooLarge is Reply.BodyErr for a body over the limit. Both clients
// call their limit option MaxResponseBytes.
var ErrTooLarge = errors.New("response body exceeds MaxResponseBytes")

// readBounded reads at most limit bytes; one byte more is ErrTooLarge, so a
// huge or endless body never gets buffered.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	switch {
	case err != nil:
		return nil, err
	case int64(len(b)) > limit:
		return nil, ErrTooLarge
	}
	return b, nil
}

// MaxTextRunes bounds server text copied into errors (and so into logs).
const MaxTextRunes = 200

// RetryHint is the server's Retry-After hint for r (see RetryAfter): only
// a 429 or 503 carries one; any other status yields 0.
func (r *Reply) RetryHint(localNow time.Time, limit time.Duration) time.Duration {
	if r.Status != http.StatusTooManyRequests && r.Status != http.StatusServiceUnavailable {
		return 0
	}
	return RetryAfter(r.Header, localNow, limit)
}

// RFC 9449 error codes about the DPoP proof or nonce. A server checks the
// proof before it looks at the grant, so these answers prove it did not act.
const (
	CodeUseDPoPNonce     = "use_dpop_nonce"
	CodeInvalidDPoPProof = "invalid_dpop_proof"
	CodeMissingDPoPProof = "missing_dpop_proof"
)

// ProofCode reports whether code is one of the DPoP proof or nonce codes.
func ProofCode(code string) bool {
	return code == CodeUseDPoPNonce || code == CodeInvalidDPoPProof || code == CodeMissingDPoPProof
}

// FailureReason is the tokencache.Reason* label of a backend failure: a
// nonce or proof answer, then the class's verdict, else what the status and
// transport cause say.
func FailureReason(f *tokencache.Failure, cause error) string {
	switch {
	case f.Code == CodeUseDPoPNonce:
		return tokencache.ReasonNonce
	case ProofCode(f.Code):
		return tokencache.ReasonDPoPRejected
	case f.Class == tokencache.ClassCredentialsRejected:
		return tokencache.ReasonInvalidClient
	case f.Class == tokencache.ClassSessionDead:
		return tokencache.ReasonInvalidGrant
	}
	return Reason(f.Status, cause)
}

// Reason is the tokencache.Reason* label for a failure that the protocol
// has no more specific word for: by status (429, 5xx, a 2xx that could not
// be used) or, with no response (status 0), by the transport error cause:
// a timeout, else a connection failure. Anything else, and a nil cause
// (refused before sending), is "other".
func Reason(status int, cause error) string {
	var ne net.Error
	switch {
	case status == http.StatusTooManyRequests:
		return tokencache.ReasonRateLimited
	case status >= 500:
		return tokencache.ReasonStatus5xx
	case status >= 200 && status < 300:
		return tokencache.ReasonMalformedResponse
	case status != 0 || cause == nil:
		return tokencache.ReasonOther
	case errors.Is(cause, context.DeadlineExceeded) || (errors.As(cause, &ne) && ne.Timeout()):
		return tokencache.ReasonTimeout
	}
	return tokencache.ReasonConnect
}

// HasRetryAfter reports whether h carries a Retry-After header in either
// form RFC 9110 allows (delay-seconds or an HTTP-date): a 503 with one is
// a server saying it did not act and when to come back.
func HasRetryAfter(h http.Header) bool {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if _, err := strconv.ParseUint(v, 10, 64); err == nil {
		return true
	}
	_, err := http.ParseTime(v)
	return err == nil
}

// RetryAfter reads a Retry-After header as delay-seconds or an HTTP-date.
// An HTTP-date is measured against the server's own Date header when
// present (else localNow), so local clock skew does not distort it. The
// result is capped at limit, so a garbage value cannot park a caller for
// years or overflow a Duration; absent, negative or unparseable values and
// dates in the past yield 0.
func RetryAfter(h http.Header, localNow time.Time, limit time.Duration) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		if secs > int64(limit/time.Second) {
			return limit
		}
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		ref := localNow
		if date, err := http.ParseTime(h.Get("Date")); err == nil {
			ref = date
		}
		d = at.Sub(ref)
	}
	return min(max(d, 0), limit)
}

// JWTClaims decodes the payload of a compact JWS (three dot-separated
// parts) into claims, WITHOUT verifying anything: it is for scheduling
// (reading exp to know when to refresh), never for trusting a token. It
// reports whether the payload was base64url JSON that unmarshalled into
// claims.
func JWTClaims(token string, claims any) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	return json.Unmarshal(payload, claims) == nil
}

// JWTExp reads the exp claim of a JWT without verifying it: it only
// schedules a refresh or shortens a lifetime, and is never trusted for
// anything else. exp must be a JSON number (prelude's jwtExpiry also takes
// strings, as Prelude's API once sent them) and is truncated to the second.
func JWTExp(token string) (time.Time, bool) {
	var claims struct {
		Exp float64 `json:"exp"`
	}
	if !JWTClaims(token, &claims) || !(claims.Exp > 0 && claims.Exp < 1e11) {
		return time.Time{}, false
	}
	return time.Unix(int64(claims.Exp), 0), true
}

// ErrorText is the text of a client's error, formatted by String as
// "<Pkg>: <Op>: HTTP <Status> <Code>: <Texts…> (retry after <Retry>)
// (<Kind>)", leaving out a zero Status, an empty Code, empty Texts and a
// zero Retry. Every part must already be scrubbed.
type ErrorText struct {
	Pkg, Op string
	Status  int
	Code    string
	Texts   []string
	Retry   time.Duration
	Kind    string
}

func (t ErrorText) String() string {
	var b strings.Builder
	b.WriteString(t.Pkg + ": " + t.Op)
	if t.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", t.Status)
	}
	if t.Code != "" {
		b.WriteString(" " + t.Code)
	}
	for _, s := range t.Texts {
		if s != "" {
			b.WriteString(": " + s)
		}
	}
	if t.Retry > 0 {
		fmt.Fprintf(&b, " (retry after %s)", t.Retry)
	}
	fmt.Fprintf(&b, " (%s)", t.Kind)
	return b.String()
}
