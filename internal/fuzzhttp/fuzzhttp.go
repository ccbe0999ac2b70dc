// Package fuzzhttp turns fuzz input into the answer of a hostile server, so
// the token-server clients' response decoding can be fuzzed through their
// public API without a listener. It is imported by tests only.
package fuzzhttp

import (
	"bytes"
	"io"
	"net/http"
	"strings"
)

// Server answers every request with one fuzzed response. Status is clamped
// to 100-999 (what net/http could deliver); Header holds "Name: value"
// lines.
type Server struct {
	Status int
	Header string
	Body   []byte
}

// Client returns an *http.Client whose every request gets s's response.
func (s Server) Client() *http.Client { return &http.Client{Transport: s} }

// RoundTrip drains the request, as a server would, and answers.
func (s Server) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	h := http.Header{}
	for _, line := range strings.Split(s.Header, "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && name != "" {
			h.Add(name, strings.TrimSpace(value))
		}
	}
	status := s.Status%900 + 100
	if status < 100 {
		status += 900
	}
	return &http.Response{
		Status: http.StatusText(status), StatusCode: status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(s.Body)), ContentLength: -1, Request: req,
	}, nil
}

var _ http.RoundTripper = Server{}
