package redisstorage

import (
	"crypto/tls"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// conns holds one *conn per connection settings, counted by the configs
// that use it: a reload provisions the new config (reusing the client)
// before the old one is cleaned up, so the client and the leases it holds
// outlive reloads, and it closes when the last config using it goes.
var conns = caddy.NewUsagePool()

// connID is what makes two configs share a client: the connection
// settings, not the key prefix or lock timings.
type connID struct {
	Address  string
	Username string
	Password string
	DB       int
	TLS      bool
	Timeout  time.Duration
}

// conn is a client and the leases held through it.
type conn struct {
	id     connID
	client *redis.Client
	logger *zap.Logger

	mu   sync.Mutex
	held map[string]*lease // by lock key
}

func newConn(id connID, logger *zap.Logger) *conn {
	opts := &redis.Options{
		Addr:         id.Address,
		Username:     id.Username,
		Password:     id.Password,
		DB:           id.DB,
		DialTimeout:  id.Timeout,
		ReadTimeout:  id.Timeout,
		WriteTimeout: id.Timeout,
		// go-redis would send CLIENT SETINFO on each new connection; it
		// only costs a round trip.
		DisableIdentity: true,
	}
	if id.TLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &conn{id: id, client: redis.NewClient(opts), logger: logger, held: make(map[string]*lease)}
}

// Destruct stops renewing the leases still held (they expire on their
// own) and closes the client; the pool calls it after the last release.
func (c *conn) Destruct() error {
	c.mu.Lock()
	held := c.held
	c.held = make(map[string]*lease)
	c.mu.Unlock()
	for _, l := range held {
		l.stop()
		<-l.done
	}
	return c.client.Close()
}

// acquire returns the shared conn for id, counting one more user.
func acquire(id connID, logger *zap.Logger) (*conn, error) {
	v, _, err := conns.LoadOrNew(id, func() (caddy.Destructor, error) {
		return newConn(id, logger), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*conn), nil
}

// release counts one user less, closing the conn after the last.
func release(id connID) error {
	_, err := conns.Delete(id)
	return err
}
