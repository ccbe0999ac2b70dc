package sandbox

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// apiError is a refusal: the status and code the client sees, and the
// reason label Stats.Rejections counts it under (finer than code, so tests
// can tell which rule fired).
type apiError struct {
	status  int
	code    string
	reason  string
	message string
}

// apiErr is the common case of an error whose reason is its code.
func apiErr(status int, code, msg string) *apiError {
	return &apiError{status, code, code, msg}
}

func errBadRequest(msg string) *apiError {
	return apiErr(http.StatusBadRequest, "bad_request", msg)
}

func errInternal(err error) *apiError {
	return apiErr(http.StatusInternalServerError, "internal", err.Error())
}

func errUnauthorized(reason, msg string) *apiError {
	return &apiError{http.StatusUnauthorized, "unauthorized", reason, msg}
}

func errNotFound(msg string) *apiError {
	return apiErr(http.StatusNotFound, "not_found", msg)
}

func (s *Sandbox) writeError(w http.ResponseWriter, e *apiError) {
	s.countRejection(e.reason)
	writeJSON(w, e.status, map[string]string{"code": e.code, "message": e.message, "type": errorType(e.status)})
}

// errorType is the envelope's "type", the error's category by status, as
// in the API reference's example {"code":"bad_request","type":"bad_request"}.
func errorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "unauthorized"
	case status == http.StatusForbidden:
		return "forbidden"
	case status == http.StatusNotFound:
		return "not_found"
	case status == http.StatusConflict:
		return "conflict"
	case status == http.StatusTooManyRequests:
		return "rate_limited"
	case status >= 500:
		return "internal"
	}
	return "bad_request"
}

func (s *Sandbox) countRejection(reason string) {
	s.mu.Lock()
	s.rejections[reason]++
	s.mu.Unlock()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// Responses carry tokens; nothing between client and sandbox may keep them.
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decodeJSON reads a strict JSON object into v: JSON content type, no
// unknown fields, nothing after the object. With optional set an empty body
// is accepted and leaves v alone, since clients differ on whether a
// bodiless POST sends nothing or "{}".
func decodeJSON(r *http.Request, v any, optional bool) *apiError {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &apiError{http.StatusRequestEntityTooLarge, "bad_request", "body_too_large", "request body too large"}
		}
		return errBadRequest("reading body: " + err.Error())
	}
	if len(body) == 0 && optional {
		return nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return errBadRequest("Content-Type must be application/json")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errBadRequest("invalid JSON body: " + err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return errBadRequest("trailing data after JSON body")
	}
	return nil
}

// singleHeader returns the one value of header name. Repeated credential
// headers are refused rather than guessed between.
func singleHeader(r *http.Request, name string) (value string, present bool, err *apiError) {
	vals := r.Header.Values(name)
	switch len(vals) {
	case 0:
		return "", false, nil
	case 1:
		return vals[0], true, nil
	default:
		return "", true, errBadRequest("more than one " + name + " header")
	}
}

// requestURL is the URL the client addressed, as DPoP's htu must name it:
// the scheme the connection used, the Host header and the escaped path.
func requestURL(r *http.Request) *url.URL {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return &url.URL{Scheme: scheme, Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath}
}

// baseURL is the issuer for tokens minted on r.
func baseURL(r *http.Request) string {
	u := requestURL(r)
	return u.Scheme + "://" + u.Host
}

// randomToken returns 256 random bits for bearer secrets.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// randomID returns 80 random bits in lowercase base32 for readable ids.
func randomID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// normalizeIdentifier makes email lookups case-insensitive.
func normalizeIdentifier(v string) string {
	return strings.ToLower(strings.TrimSpace(v))
}
