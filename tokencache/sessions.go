package tokencache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"go.uber.org/zap"
)

// ErrUnknownSession is returned for a key that has no session in storage.
var ErrUnknownSession = errors.New("tokencache: no such session")

// housekeepEvery is the housekeeper's tick: idle eviction, last uses
// written to the index, and one index page of the retention sweep.
const housekeepEvery = time.Minute

// housekeep runs until Close: every tick it evicts sessions idle for
// IdleTimeout, writes last uses the index is behind on, and sweeps one
// index page for retention, so a whole sweep takes indexShards ticks
// (about four hours) and no tick does much.
func (r *Runtime) housekeep() {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-r.stop
		cancel()
	}()
	timer := r.clock.NewTimer(housekeepEvery)
	defer timer.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-timer.C():
		}
		r.evictIdle()
		r.flushUses(ctx)
		if r.tpl().Retention > 0 {
			if _, err := r.sweep(ctx, r.sweepAt); err != nil && ctx.Err() == nil {
				r.logger().Warn("retention sweep of one index page; retried on the next round",
					zap.String("template", r.tpl().Name), zap.Error(err))
			}
			r.sweepAt = (r.sweepAt + 1) % indexShards
		}
		timer.Reset(housekeepEvery)
	}
}

func (r *Runtime) logger() *zap.Logger {
	if l := r.tpl().Logger; l != nil {
		return l
	}
	return nopLogger
}

// Sweep runs the retention sweep over the whole index now (the
// housekeeper does one page a minute): every session not used within
// Retention is revoked at the token server and erased. It returns how
// many were erased. With Retention 0 it does nothing.
func (r *Runtime) Sweep(ctx context.Context) (int, error) {
	var (
		total int
		errs  []error
	)
	for n := range indexShards {
		k, err := r.sweep(ctx, n)
		total += k
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// sweep erases the sessions of index page n idle longer than Retention.
// A session is idle when neither the index nor this Runtime has seen it
// used since the cutoff; erase checks again after revoking.
func (r *Runtime) sweep(ctx context.Context, n int) (int, error) {
	ret := r.tpl().Retention
	if ret <= 0 {
		return 0, nil
	}
	m, err := r.idx.load(ctx, n)
	if err != nil {
		return 0, err
	}
	cutoff := r.clock.Now().Add(-ret)
	var (
		done int
		errs []error
	)
	for _, ie := range m {
		if !time.Unix(ie.Used, 0).Before(cutoff) || ctx.Err() != nil {
			continue
		}
		if e := r.resident(ie.Key); e != nil && e.used.Load() >= cutoff.UnixNano() {
			continue
		}
		switch err := r.erase(ctx, ie.Key, cutoff); {
		case err == nil:
			done++
		case !errors.Is(err, errInUse):
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// errInUse stops a retention erase of a session used meanwhile.
var errInUse = errors.New("session used meanwhile; kept")

// Erase revokes key's session at the token server and then removes every
// trace of it: its record, DPoP key, write claims and index entry. If the
// token server cannot be reached nothing is removed (retry). A session
// logged in again while it is erased is not removed either (an error says
// so). ErrUnknownSession when there is nothing to erase.
func (r *Runtime) Erase(ctx context.Context, key string) error {
	return r.erase(ctx, key, time.Time{})
}

// erase is Erase; with idleBefore set (retention) a session used since
// then is kept (errInUse).
func (r *Runtime) erase(ctx context.Context, key string, idleBefore time.Time) error {
	t := r.tpl()
	hash, st := t.hash(key), r.store(key)
	rec, err := st.load(ctx)
	if err != nil && !transient(err) {
		rec, err = &record{State: StateLoggedOut, Generation: 1}, nil // unreadable: nothing to revoke with
	}
	if err != nil {
		return err
	}
	if rec.Generation > 0 {
		e, fresh, err := r.hold(key)
		if err != nil {
			return err
		}
		if !idleBefore.IsZero() && e.used.Load() >= idleBefore.UnixNano() {
			r.letGo(e, fresh)
			return errInUse
		}
		if err := e.c.Logout(ctx); err != nil {
			r.letGo(e, fresh)
			return fmt.Errorf("erasing session: %w", err)
		}
		r.letGo(e, true)
		if err := r.deleteSession(ctx, st); err != nil {
			return err
		}
	}
	// The entry goes last: a session whose deletion failed stays listed,
	// so the next sweep (or Erase) finds it.
	if err := r.idx.remove(ctx, hash); err != nil {
		return err
	}
	if rec.Generation == 0 {
		return ErrUnknownSession
	}
	return nil
}

// deleteSession deletes the session's directory, under its storage lock,
// unless it was logged in again meanwhile.
func (r *Runtime) deleteSession(ctx context.Context, st store) error {
	s := st.s
	lctx, cancel := context.WithTimeout(ctx, r.lockTimeout())
	defer cancel()
	if err := s.Lock(lctx, st.lockName()); err != nil {
		return fmt.Errorf("erasing session: locking: %w", err)
	}
	defer func() { _ = s.Unlock(context.WithoutCancel(ctx), st.lockName()) }()
	rec, err := st.load(ctx)
	if err == nil && rec.State == StateActive {
		return errors.New("erasing session: it was logged in again meanwhile; kept")
	}
	// Delete removes a directory with everything below it (the
	// certmagic.Storage contract): record, keys, claims.
	if err := s.Delete(ctx, st.dir()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("erasing session: %w", err)
	}
	return nil
}

// store is key's session storage layout, for reading it without loading
// the session.
func (r *Runtime) store(key string) store {
	t := r.tpl()
	sub := t.sub(key)
	return store{s: t.Storage, name: sub, now: r.clock.Now, sub: sub, keys: t.KeySource}
}

// hold returns key's resident entry, loading it (without counting a use)
// if needed; fresh says it was loaded for this call.
func (r *Runtime) hold(key string) (e *entry, fresh bool, err error) {
	if e := r.resident(key); e != nil {
		return e, false, nil
	}
	e, err = r.entry(key)
	if err != nil {
		return nil, false, err
	}
	return e, true, nil
}

// letGo evicts e when evict is set (an entry loaded only for an
// operator's call, or a session erased).
func (r *Runtime) letGo(e *entry, evict bool) {
	if !evict {
		return
	}
	r.drop(e)
	r.sched.remove(e)
	e.c.Close()
}

// Revoke logs key's session out: it is revoked at the token server and
// stored logged out (automatic login off), and stays listed. If the token
// server cannot be reached the session is kept (retry).
// ErrUnknownSession when key has no session in storage.
func (r *Runtime) Revoke(ctx context.Context, key string) error {
	if e := r.resident(key); e != nil {
		return e.c.Logout(ctx)
	}
	rec, err := r.store(key).load(ctx)
	if err != nil {
		return err
	}
	if rec.Generation == 0 {
		return ErrUnknownSession
	}
	e, fresh, err := r.hold(key)
	if err != nil {
		return err
	}
	defer r.letGo(e, fresh)
	return e.c.Logout(ctx)
}

// RevokeAll revokes every active session in the index (see Revoke) and
// returns how many it revoked. It goes on past a failure and reports the
// failures together.
func (r *Runtime) RevokeAll(ctx context.Context) (int, error) {
	var (
		n    int
		errs []error
	)
	for p := range indexShards {
		m, err := r.idx.load(ctx, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ie := range m {
			if ctx.Err() != nil {
				return n, ctx.Err()
			}
			if info := r.info(ctx, ie.Key, ie); info.State != StateActive {
				continue
			}
			if err := r.Revoke(ctx, ie.Key); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// Lookup reports key's session; false when it has no stored record and
// no index entry.
func (r *Runtime) Lookup(ctx context.Context, key string) (SessionInfo, bool, error) {
	t := r.tpl()
	hash := t.hash(key)
	n, _ := shardOf(hash)
	m, err := r.idx.load(ctx, n)
	if err != nil {
		return SessionInfo{}, false, err
	}
	ie, indexed := m[hash]
	ie.Key = key
	info := r.info(ctx, key, ie)
	if !indexed && info.State == "" {
		return SessionInfo{}, false, nil
	}
	if info.State == "" {
		info.State = StateLoggedOut // indexed, record gone
	}
	return info, true, nil
}

// List returns up to limit sessions (default 100, at most 1000) in the
// order of their keyed hashes, starting after cursor ("" for the first
// page), and the cursor of the next page ("" after the last). The cursor
// is the last hash returned: its first byte names the index page and the
// rest the position in it. A session stored for the whole listing is
// returned exactly once whatever is added or deleted meanwhile; one added
// or deleted during the listing may or may not be. Each page reads the
// index pages it walks and, for sessions not held in memory, their
// records.
func (r *Runtime) List(ctx context.Context, cursor string, limit int) ([]SessionInfo, string, error) {
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	start := 0
	if cursor != "" {
		n, ok := shardOf(cursor)
		if !ok {
			return nil, "", fmt.Errorf("tokencache: malformed cursor %q", cursor)
		}
		start = n
	}
	var page []SessionInfo
	for n := start; n < indexShards; n++ {
		m, err := r.idx.load(ctx, n)
		if err != nil {
			return nil, "", err
		}
		hashes := make([]string, 0, len(m))
		for h := range m {
			if h > cursor {
				hashes = append(hashes, h)
			}
		}
		slices.Sort(hashes)
		for _, h := range hashes {
			info := r.info(ctx, m[h].Key, m[h])
			if info.State == "" {
				info.State = StateLoggedOut
			}
			page = append(page, info)
			if len(page) == limit {
				return page, h, nil
			}
		}
	}
	return page, "", nil
}

// info is what ie and key's session tell: state, expiry and subject from
// its stored record (what every instance sees; a resident session holds
// the same or, when another instance acted, older), its last use also
// from memory when it is resident. State is "" when there is no record.
func (r *Runtime) info(ctx context.Context, key string, ie indexEntry) SessionInfo {
	info := SessionInfo{Key: key}
	if ie.Created > 0 {
		info.Created = time.Unix(ie.Created, 0)
	}
	if ie.Used > 0 {
		info.LastUsed = time.Unix(ie.Used, 0)
	}
	rec, err := r.store(key).load(ctx)
	switch {
	case err != nil:
		info.State = "unreadable"
	case rec.Generation > 0:
		info.State = rec.State
		if rec.AccessToken != "" {
			info.Expires = rec.Expiry
			_, claims := decodeJWT(rec.AccessToken)
			info.Sub, _ = claims["sub"].(string)
		}
	}
	if e := r.resident(key); e != nil {
		if u := e.used.Load(); u > 0 && time.Unix(0, u).After(info.LastUsed) {
			info.LastUsed = time.Unix(0, u)
		}
		if st := e.c.stateOf(e.c.current()); st == StateLoginFailed && info.State == StateLoggedOut {
			info.State = st
		}
	}
	return info
}
