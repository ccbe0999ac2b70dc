package wire

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Request describes one attempt at a request to a token server. Build it
// anew for every attempt: each carries a fresh DPoP proof.
type Request struct {
	Method string
	URL    *url.URL
	// Body is sent when non-nil, with ContentType when that is non-empty.
	Body        []byte
	ContentType string
	// Header holds the caller's own headers (credentials). Accept,
	// User-Agent, Content-Type and DPoP are set over them.
	Header    http.Header
	UserAgent string
	// Key, when non-nil, signs a DPoP proof (RFC 9449) over Method and the
	// exact URL, with the newest nonce Nonces holds for its origin (none
	// when Nonces is nil) and ProofTime as iat (the caller's clock corrected
	// to the server's).
	Key       *dpop.Key
	Nonces    *dpop.NonceStore
	ProofTime time.Time
}

// Build returns the *http.Request for r; it asks for JSON. An error means
// nothing was sent.
func (r *Request) Build(ctx context.Context) (*http.Request, error) {
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URL.String(), body)
	if err != nil {
		return nil, err
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", r.UserAgent)
	if r.Body != nil && r.ContentType != "" {
		req.Header.Set("Content-Type", r.ContentType)
	}
	if r.Key != nil {
		var nonce string
		if r.Nonces != nil {
			nonce = r.Nonces.Get(r.URL)
		}
		proof, err := r.Key.ProofForURL(r.Method, r.URL, dpop.ProofOptions{Nonce: nonce, Now: r.ProofTime})
		if err != nil {
			return nil, err
		}
		req.Header.Set("DPoP", proof)
	}
	return req, nil
}
