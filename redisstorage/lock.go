package redisstorage

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// leaseTimes are a Storage's lock timings.
type leaseTimes struct {
	ttl, renew, poll time.Duration
}

// lease is a lock this process holds and the goroutine renewing it.
type lease struct {
	token string
	stop  context.CancelFunc
	done  chan struct{}
}

// renewScript extends KEYS[1]'s lease to ARGV[2] ms if it still holds this
// holder's token ARGV[1]; releaseScript deletes it on the same condition.
// Neither touches a lease that expired and was taken by someone else.
var (
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
`)
)

// owner is "<hostname>:<pid>", recorded in every lease this process takes.
var owner = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}()

func (s *Storage) lockKey(name string) string { return s.key(path.Join("locks", name)) }

// Lock takes the lease on name (SET NX PX with a random token), retrying
// every poll interval until it is free or ctx ends, and renews it until
// Unlock. A lease is only as good as its holder's liveness: one paused
// longer than the lease loses it without knowing. The token engine does
// not rely on the lock alone (its writes are conditional).
func (s *Storage) Lock(ctx context.Context, name string) error {
	key := s.lockKey(name)
	var b [16]byte
	_, _ = rand.Read(b[:])
	// The random token, then who holds it, as redislock writes a lease
	// (22 characters, then its metadata): an operator, or the drills, can
	// see which instance holds a lock.
	token := base64.RawURLEncoding.EncodeToString(b[:]) + owner
	for {
		ok, err := s.obtain(ctx, key, token)
		if err != nil {
			return fmt.Errorf("redis storage: locking %s: %w", name, err)
		}
		if ok {
			s.hold(key, token)
			return nil
		}
		t := time.NewTimer(s.lease.poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// obtain takes the lease on key for token if it is free. A busy lease
// holding token is ours: go-redis resends a command whose reply was lost,
// and the first SET applied.
func (s *Storage) obtain(ctx context.Context, key, token string) (bool, error) {
	ok, err := s.conn.client.SetNX(ctx, key, token, s.lease.ttl).Result()
	if err != nil || ok {
		return ok, err
	}
	v, err := s.conn.client.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil // released meanwhile: the next poll takes it
	}
	return v == token, err
}

// hold renews the lease every renew interval until Unlock, the pool's
// close, or the lease turns out to be lost. A failed renewal is retried
// at the next tick: the lease may still be valid.
func (s *Storage) hold(key, token string) {
	ctx, stop := context.WithCancel(context.Background())
	l := &lease{token: token, stop: stop, done: make(chan struct{})}
	s.conn.mu.Lock()
	if old := s.conn.held[key]; old != nil {
		// A lease this process lost to expiry and took again: the old
		// renewer would only fail.
		old.stop()
	}
	s.conn.held[key] = l
	s.conn.mu.Unlock()
	log := s.conn.logger
	go func() {
		defer close(l.done)
		t := time.NewTicker(s.lease.renew)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			n, err := renewScript.Run(ctx, s.conn.client, []string{key}, token, s.lease.ttl.Milliseconds()).Int64()
			switch {
			case ctx.Err() != nil || errors.Is(err, redis.ErrClosed):
				return
			case err != nil:
				log.Warn("renewing lock lease; retrying", zap.String("key", key), zap.Error(err))
			case n == 0:
				log.Warn("lock lease lost while held", zap.String("key", key))
				return
			}
		}
	}()
}

// Unlock stops renewing the lease on name and releases it if it is still
// this holder's. A lease that expired (and may be someone else's now) is
// left alone, and is not an error: there is nothing left to release.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	key := s.lockKey(name)
	s.conn.mu.Lock()
	l := s.conn.held[key]
	delete(s.conn.held, key)
	s.conn.mu.Unlock()
	if l == nil {
		return nil
	}
	l.stop()
	<-l.done
	if ctx.Err() != nil {
		// Caddy may unlock on a cancelled context (shutdown, reload):
		// release all the same rather than hold others off for a lease.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
	}
	if err := releaseScript.Run(ctx, s.conn.client, []string{key}, l.token).Err(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("redis storage: unlocking %s: %w", name, err)
	}
	return nil
}
