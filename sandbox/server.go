package sandbox

import (
	"net/http/httptest"
	"testing"
)

// Server is a Sandbox listening on 127.0.0.1 for the length of a test.
type Server struct {
	*Sandbox
	// URL is the base URL, http://127.0.0.1:port, with no trailing slash.
	URL string
}

// NewServer starts a Sandbox on a free 127.0.0.1 port and closes it when tb
// and its subtests finish.
func NewServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	sb, err := New(opts)
	if err != nil {
		tb.Fatalf("sandbox: %v", err)
	}
	hs := httptest.NewServer(sb)
	tb.Cleanup(hs.Close)
	return &Server{Sandbox: sb, URL: hs.URL}
}
