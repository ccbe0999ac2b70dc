package prelude

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

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

var _ tokencache.ServerClock = Backend{}
