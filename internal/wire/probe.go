package wire

import (
	"context"
	"errors"
	"net/http"
	"net/url"
)

// probeLimit bounds the body of a probe's answer, which is not used.
const probeLimit = 64 << 10

// ProbeDate sends a request (HEAD or GET, without credentials, spending
// nothing) to u for the server's Date header: how a client that has had no
// answer yet learns the server's clock. The reply's Date is never zero.
func ProbeDate(ctx context.Context, hc *http.Client, method string, u *url.URL, userAgent string) (*Reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	rep, _, err := Do(hc, req, probeLimit, nil)
	if err != nil {
		return nil, err
	}
	if rep.Date.IsZero() {
		return nil, errors.New("the server's answer has no Date header")
	}
	return rep, nil
}
