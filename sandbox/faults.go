package sandbox

import (
	"io"
	"net/http"
	"strings"
)

// Fault is what FaultRefreshes makes the next refreshes suffer. The
// refresh is authenticated first (proof, token, reuse detection), so a
// fault never hides a client presenting a spent token.
type Fault struct {
	// Status is the status answered; 0 means 500.
	Status int
	// Code is the error code in the JSON envelope; "" answers the body a
	// load balancer would (plain text, no envelope) for 5xx, and
	// "internal" otherwise. The DPoP codes (invalid_dpop_proof,
	// missing_dpop_proof, dpop_key_mismatch, use_dpop_nonce) are answered
	// as the proof check would, before the token is looked at.
	Code string
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter string
	// AfterRotate makes the server act first: the refresh token is rotated
	// (the old one is spent) and the answer is then replaced by the fault,
	// as when a load balancer answers 502/504 for a token server that
	// already did its work. The client never learns the new token.
	AfterRotate bool
}

// FaultRefreshes makes the next n refreshes that pass authentication
// answer f instead of their result (n < 0: until FaultRefreshes(0, …)).
// Faults not AfterRotate leave the token unspent.
func (s *Sandbox) FaultRefreshes(n int, f Fault) {
	s.mu.Lock()
	s.faults, s.fault = n, f
	s.mu.Unlock()
}

// FailRefreshes makes the next n well-formed /refresh calls fail without
// rotating, the way an outage that says so does: 503 {"code":"internal"}
// with Retry-After: 0, an answer that proves the server did not act (a
// bare 500 would not: see FaultRefreshes for those). n < 0 fails until
// FailRefreshes(0).
func (s *Sandbox) FailRefreshes(n int) {
	s.FaultRefreshes(n, Fault{Status: http.StatusServiceUnavailable, Code: "internal", RetryAfter: "0"})
}

// SkipRotation makes the next n successful refreshes answer with a new
// access token but no X-Refresh-Token: the presented refresh token is not
// rotated and stays the one to use (n < 0: until SkipRotation(0)).
func (s *Sandbox) SkipRotation(n int) {
	locked(&s.mu, &s.skipRotation, n)
}

// takeFault consumes one injected fault, if any; callers hold mu.
func (s *Sandbox) takeFault() (Fault, bool) {
	if s.faults == 0 {
		return Fault{}, false
	}
	if s.faults > 0 {
		s.faults--
	}
	return s.fault, true
}

// takeSkipRotation consumes one SkipRotation; callers hold mu.
func (s *Sandbox) takeSkipRotation() bool {
	if s.skipRotation == 0 {
		return false
	}
	if s.skipRotation > 0 {
		s.skipRotation--
	}
	return true
}

// writeFault answers f.
func (s *Sandbox) writeFault(w http.ResponseWriter, f Fault) {
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.Code == "" && status >= 500 {
		// What a proxy in front of the service says: not an envelope.
		s.countRejection("injected_failure")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, strings.ToLower(http.StatusText(status))+"\n")
		return
	}
	code := f.Code
	if code == "" {
		code = "internal"
	}
	s.writeError(w, &apiError{status, code, "injected_failure", "injected failure (FaultRefreshes)"})
}

// Request is one request the sandbox received, as Requests reports it.
// Header is the request's header as sent, credentials included: it is for
// tests checking wire details and must not be logged.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	// ContentLength is the announced body length (-1 unknown).
	ContentLength int64
}

// maxRecorded bounds Requests' memory in a long-running sandbox.
const maxRecorded = 1000

// record keeps r for Requests, dropping the oldest beyond maxRecorded.
func (s *Sandbox) record(r *http.Request) {
	rec := Request{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
		Header: r.Header.Clone(), ContentLength: r.ContentLength}
	s.mu.Lock()
	if len(s.requests) == maxRecorded {
		s.requests = append(s.requests[:0], s.requests[1:]...)
	}
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
}

// Requests returns the requests received on sandbox routes so far, oldest
// first (at most the last 1000).
func (s *Sandbox) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}
