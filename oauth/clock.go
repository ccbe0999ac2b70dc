package oauth

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// ServerSkew implements tokencache.ServerClock: Skew as the latest answer's
// Date showed it or, before any answer, as a HEAD request to the token
// endpoint shows it.
func (c *Client) ServerSkew(ctx context.Context) (time.Duration, error) {
	if c.dated.Load() {
		return c.Skew(), nil
	}
	r, err := wire.ProbeDate(ctx, c.hc, http.MethodHead, c.endpoint, c.cfg.UserAgent)
	if err != nil {
		return 0, fmt.Errorf("oauth: reading the token server's clock: %w", err)
	}
	return c.observeDate(r), nil
}

var _ tokencache.ServerClock = (*Client)(nil)
