// Package sandboxtest runs the Prelude sandbox for the length of a test.
// It is apart from package sandbox so that production builds, which link
// the sandbox for the demo, never link package testing.
package sandboxtest

import (
	"net/http/httptest"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/sandbox"
)

// Server is a Sandbox listening on 127.0.0.1 for the length of a test.
type Server struct {
	*sandbox.Sandbox
	// URL is the base URL, http://127.0.0.1:port, with no trailing slash.
	URL string
}

// NewServer starts a Sandbox on a free 127.0.0.1 port and closes it when tb
// and its subtests finish.
func NewServer(tb testing.TB, opts sandbox.Options) *Server {
	tb.Helper()
	sb, err := sandbox.New(opts)
	if err != nil {
		tb.Fatalf("sandbox: %v", err)
	}
	hs := httptest.NewServer(sb)
	tb.Cleanup(hs.Close)
	return &Server{Sandbox: sb, URL: hs.URL}
}
