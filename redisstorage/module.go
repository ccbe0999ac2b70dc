package redisstorage

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Module{})
}

// Defaults, the same as the common Caddy Redis storage module's.
const (
	DefaultAddress     = "127.0.0.1:6379"
	DefaultKeyPrefix   = "caddy"
	DefaultTimeout     = 5 * time.Second
	DefaultLockTTL     = 5 * time.Second
	DefaultLockRefresh = 3 * time.Second
	DefaultLockPoll    = time.Second
)

// Module is the caddy.storage.inject_token_redis storage module: Caddy's
// storage (certificates, inject_token sessions) on one Redis database.
type Module struct {
	// Address is the Redis server's host:port. Default 127.0.0.1:6379.
	Address string `json:"address,omitempty"`
	// Username authenticates with Redis ACLs (AUTH username password).
	// Default: none.
	Username string `json:"username,omitempty"`
	// Password authenticates with the server. Placeholders such as
	// {env.REDIS_PASSWORD} or {file./run/secrets/redis} are resolved when
	// the config loads, so the password need not be in the config.
	Password string `json:"password,omitempty"`
	// DB is the Redis database number. Default 0.
	DB int `json:"db,omitempty"`
	// TLS connects over TLS, verifying the server's certificate against
	// the system's trusted roots.
	TLS bool `json:"tls,omitempty"`
	// KeyPrefix is prepended to every key, so several applications (or
	// clusters) can share one database. Default "caddy", as the common
	// Caddy Redis module, whose keys this module can then read and share.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Timeout bounds dialling and each read or write. Default 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// LockTTL is a lock's lease: a lock whose holder stops renewing it
	// (a crash, a pause) is free after this long. Default 5s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`
	// LockRefresh is how often a held lock's lease is renewed; shorter
	// than LockTTL. Default 3s.
	LockRefresh caddy.Duration `json:"lock_refresh,omitempty"`
	// LockPoll is how often a busy lock is tried again. Default 1s.
	LockPoll caddy.Duration `json:"lock_poll,omitempty"`

	conn    *conn
	storage *Storage
}

// CaddyModule returns the Caddy module information.
func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.inject_token_redis",
		New: func() caddy.Module { return new(Module) },
	}
}

// Provision resolves placeholders, checks the settings and takes the
// shared client for them. It does no I/O: a config loads while Redis is
// down, and the first storage call reports the outage.
func (m *Module) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	id := connID{DB: m.DB, TLS: m.TLS, Timeout: time.Duration(m.Timeout)}
	var err error
	if id.Address, err = repl.ReplaceOrErr(cmp(m.Address, DefaultAddress), true, true); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if id.Password, err = repl.ReplaceOrErr(m.Password, true, true); err != nil {
		return fmt.Errorf("password: %w", err)
	}
	if id.Username, err = repl.ReplaceOrErr(m.Username, true, true); err != nil {
		return fmt.Errorf("username: %w", err)
	}
	if id.Timeout <= 0 {
		id.Timeout = DefaultTimeout
	}
	if m.DB < 0 {
		return fmt.Errorf("db %d: must be 0 or more", m.DB)
	}
	prefix := cmp(m.KeyPrefix, DefaultKeyPrefix)
	if strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("key_prefix %q: must not start with /", prefix)
	}
	lt := leaseTimes{ttl: time.Duration(m.LockTTL), renew: time.Duration(m.LockRefresh), poll: time.Duration(m.LockPoll)}
	if lt.ttl <= 0 {
		lt.ttl = DefaultLockTTL
	}
	if lt.renew <= 0 {
		lt.renew = min(DefaultLockRefresh, lt.ttl*3/5)
	}
	if lt.renew >= lt.ttl {
		return fmt.Errorf("lock_refresh %v must be shorter than lock_ttl %v", lt.renew, lt.ttl)
	}
	if lt.poll <= 0 {
		lt.poll = DefaultLockPoll
	}
	if m.conn, err = acquire(id, ctx.Logger()); err != nil {
		return err
	}
	m.storage = &Storage{conn: m.conn, prefix: prefix, lease: lt}
	return nil
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// CertMagicStorage returns the storage; every call shares the config's
// client.
func (m *Module) CertMagicStorage() (certmagic.Storage, error) {
	if m.storage == nil {
		return nil, errors.New("inject_token_redis: not provisioned")
	}
	return m.storage, nil
}

// Cleanup lets go of the shared client; the last config using it closes it.
func (m *Module) Cleanup() error {
	if m.conn == nil {
		return nil
	}
	return release(m.conn.id)
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens. Syntax:
//
//	storage inject_token_redis {
//		address      <host:port>
//		username     <name>
//		password     <password or placeholder>
//		db           <number>
//		tls
//		key_prefix   <prefix>
//		timeout      <duration>
//		lock_ttl     <duration>
//		lock_refresh <duration>
//		lock_poll    <duration>
//	}
func (m *Module) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		return d.Errf("unexpected argument %q: settings go in a block", d.Val())
	}
	strs := map[string]*string{"address": &m.Address, "username": &m.Username, "password": &m.Password, "key_prefix": &m.KeyPrefix}
	durations := map[string]*caddy.Duration{"timeout": &m.Timeout, "lock_ttl": &m.LockTTL, "lock_refresh": &m.LockRefresh, "lock_poll": &m.LockPoll}
	for d.NextBlock(0) {
		sub := d.Val()
		if sub == "tls" {
			if d.NextArg() {
				return d.Errf("tls takes no argument, got %q", d.Val())
			}
			m.TLS = true
			continue
		}
		var arg string
		if !d.Args(&arg) || d.NextArg() {
			return d.Errf("%s takes exactly one argument", sub)
		}
		if p, ok := strs[sub]; ok {
			*p = arg
			continue
		}
		if p, ok := durations[sub]; ok {
			v, err := caddy.ParseDuration(arg)
			if err != nil || v <= 0 {
				return d.Errf("%s: want a positive duration such as 5s, got %q", sub, arg)
			}
			*p = caddy.Duration(v)
			continue
		}
		if sub != "db" {
			return d.Errf("unknown option %q (want address, username, password, db, tls, key_prefix, timeout, lock_ttl, lock_refresh or lock_poll)", sub)
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return d.Errf("db: want a database number (0, 1, ...), got %q", arg)
		}
		m.DB = n
	}
	return nil
}

// Interface guards.
var (
	_ caddy.StorageConverter = (*Module)(nil)
	_ caddy.Provisioner      = (*Module)(nil)
	_ caddy.CleanerUpper     = (*Module)(nil)
	_ caddyfile.Unmarshaler  = (*Module)(nil)
)
