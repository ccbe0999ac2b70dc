package redisstore

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Module{})
}

// Module is the caddy.storage.redis_test storage module. Its ID says what
// it is for: only interop/cmd/caddy-redis links it, and its name stays
// clear of the real module's caddy.storage.redis.
type Module struct {
	// Address is the Redis server's host:port. Required.
	Address string `json:"address,omitempty"`
	// KeyPrefix is prepended to every key. Default "caddy".
	KeyPrefix string `json:"key_prefix,omitempty"`
	// LockTTL is the lease length of a lock. Default 5s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`
	// LockRefresh is how often a held lease is renewed. Default 3s.
	LockRefresh caddy.Duration `json:"lock_refresh,omitempty"`
	// LockPoll is how often a busy lock is retried. Default 1s.
	LockPoll caddy.Duration `json:"lock_poll,omitempty"`
	// Timeout bounds dialling and each read or write. Default 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.redis_test",
		New: func() caddy.Module { return new(Module) },
	}
}

// CertMagicStorage returns a new Storage for these settings. Caddy asks
// for one per config load; none is closed, which leaks a connection pool
// per reload: acceptable for the tests this exists for.
func (m *Module) CertMagicStorage() (certmagic.Storage, error) {
	return New(Options{
		Addr:        m.Address,
		KeyPrefix:   m.KeyPrefix,
		LockTTL:     time.Duration(m.LockTTL),
		LockRefresh: time.Duration(m.LockRefresh),
		LockPoll:    time.Duration(m.LockPoll),
		Timeout:     time.Duration(m.Timeout),
		Logger:      caddy.Log().Named("redisstore"),
	})
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens. Syntax:
//
//	storage redis_test {
//		address      <host:port>
//		key_prefix   <prefix>
//		lock_ttl     <duration>
//		lock_refresh <duration>
//		lock_poll    <duration>
//		timeout      <duration>
//	}
func (m *Module) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		return d.ArgErr()
	}
	durations := map[string]*caddy.Duration{
		"lock_ttl": &m.LockTTL, "lock_refresh": &m.LockRefresh, "lock_poll": &m.LockPoll, "timeout": &m.Timeout,
	}
	for d.NextBlock(0) {
		sub := d.Val()
		var arg string
		if !d.Args(&arg) || d.NextArg() {
			return d.Errf("%s takes exactly one argument", sub)
		}
		switch sub {
		case "address":
			m.Address = arg
		case "key_prefix":
			m.KeyPrefix = arg
		default:
			p, ok := durations[sub]
			if !ok {
				return d.Errf("unknown option %q (want address, key_prefix, lock_ttl, lock_refresh, lock_poll or timeout)", sub)
			}
			v, err := caddy.ParseDuration(arg)
			if err != nil {
				return d.Errf("%s: %v", sub, err)
			}
			*p = caddy.Duration(v)
		}
	}
	if m.Address == "" {
		return d.Err("address is required")
	}
	return nil
}

// Interface guards.
var (
	_ caddy.StorageConverter = (*Module)(nil)
	_ caddyfile.Unmarshaler  = (*Module)(nil)
)
