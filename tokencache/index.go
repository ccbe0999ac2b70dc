package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// The storage index of a template's run-time sessions: certmagic's List
// has no paging and a Redis SCAN walks every key, so listing, revoke-all
// and retention read an index instead of the storage tree. It is split in
// indexShards pages by the first byte of each session's keyed hash,
// inject_token/<template>/index/<00..ff>, each one JSON document:
//
//	{"format":1,"sessions":{"<hash>":{"k":"<key>","c":<created>,"u":<last used>}}}
//
// with times in Unix seconds. A page holds the raw key, so on a
// seal.Storage it is sealed like every value under inject_token/ (index
// pages are neither claims nor key files, the only keys left plain or
// treated as immutable). An entry is written when a session logs in for
// the first time in a Runtime (and for a stored session this Runtime
// finds unindexed), its last use at most once per indexUseGrain (by the
// housekeeper, never on a request), and removed by Erase and retention.
// A page is rewritten whole, under an in-process mutex and the storage
// lock of that page, so writers on several instances never lose each
// other's entries.
const (
	indexShards = 256
	indexDir    = "index"
	indexFormat = 1
)

// indexUseGrain is how stale the last use recorded in the index may be:
// a session's use is written when it is this much newer than the one
// stored.
const indexUseGrain = time.Hour

type indexEntry struct {
	Key     string `json:"k"`
	Created int64  `json:"c"`
	Used    int64  `json:"u"`
}

type indexPage struct {
	Format   int                   `json:"format"`
	Sessions map[string]indexEntry `json:"sessions"`
}

// index reads and writes a template's index pages.
type index struct {
	name    string // the template's name, made storage-safe
	storage func() certmagic.Storage
	timeout func() time.Duration // the storage lock's
	mu      [indexShards]sync.Mutex
}

func newIndex(r *Runtime) *index {
	return &index{
		name:    certmagic.StorageKeys.Safe(r.tpl().Name),
		storage: func() certmagic.Storage { return r.tpl().Storage },
		timeout: r.lockTimeout,
	}
}

// shardOf is the page of a session hash (its first byte).
func shardOf(hash string) (int, bool) {
	if !isHash(hash) {
		return 0, false
	}
	n, err := strconv.ParseUint(hash[:2], 16, 8)
	return int(n), err == nil
}

// isHash reports whether s is a session hash: 32 lower-case hex digits.
func isHash(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (x *index) pageKey(n int) string {
	return fmt.Sprintf("%s/%s/%s/%02x", StoragePrefix, x.name, indexDir, n)
}

func (x *index) lockName(n int) string {
	return fmt.Sprintf("%s_%s_%s_%02x", StoragePrefix, x.name, indexDir, n)
}

// load reads page n; a missing page is empty.
func (x *index) load(ctx context.Context, n int) (map[string]indexEntry, error) {
	data, err := x.storage().Load(ctx, x.pageKey(n))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]indexEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading session index page %02x: %w", n, err)
	}
	var p indexPage
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("session index page %s is unreadable: %s", x.pageKey(n), redactJSONError(err))
	}
	if p.Format > indexFormat {
		return nil, fmt.Errorf("%w (%s has format %d; this binary reads up to %d)", ErrNewerFormat, x.pageKey(n), p.Format, indexFormat)
	}
	if p.Sessions == nil {
		p.Sessions = map[string]indexEntry{}
	}
	return p.Sessions, nil
}

// update applies fn to page n under the page's locks and stores the page
// when fn reports a change. An unreadable page is left as it is: writing
// over it would drop every entry it holds.
func (x *index) update(ctx context.Context, n int, fn func(map[string]indexEntry) bool) error {
	x.mu[n].Lock()
	defer x.mu[n].Unlock()
	st := x.storage()
	lctx, cancel := context.WithTimeout(ctx, x.timeout())
	defer cancel()
	if err := st.Lock(lctx, x.lockName(n)); err != nil {
		return fmt.Errorf("locking session index page %02x: %w", n, err)
	}
	defer func() { _ = st.Unlock(context.WithoutCancel(ctx), x.lockName(n)) }()
	m, err := x.load(ctx, n)
	if err != nil {
		return err
	}
	if !fn(m) {
		return nil
	}
	if len(m) == 0 {
		if err := st.Delete(ctx, x.pageKey(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting empty session index page %02x: %w", n, err)
		}
		return nil
	}
	data, err := json.Marshal(indexPage{Format: indexFormat, Sessions: m})
	if err != nil {
		return err
	}
	if err := st.Store(ctx, x.pageKey(n), data); err != nil {
		return fmt.Errorf("storing session index page %02x: %w", n, err)
	}
	return nil
}

// remove drops hash's entry.
func (x *index) remove(ctx context.Context, hash string) error {
	n, ok := shardOf(hash)
	if !ok {
		return fmt.Errorf("not a session hash: %q", hash)
	}
	return x.update(ctx, n, func(m map[string]indexEntry) bool {
		if _, ok := m[hash]; !ok {
			return false
		}
		delete(m, hash)
		return true
	})
}

// indexUse writes the entries of es (resident sessions stored in
// storage) with their last use, one page write per page touched; an entry
// keeps the creation time it has. Each entry's indexed mark is set once
// its page is stored.
func (r *Runtime) indexUse(ctx context.Context, es []*entry) error {
	t := r.tpl()
	now := r.clock.Now()
	pages := map[int][]*entry{}
	for _, e := range es {
		if n, ok := shardOf(t.hash(e.key)); ok {
			pages[n] = append(pages[n], e)
		}
	}
	var errs []error
	for n, es := range pages {
		used := make([]int64, len(es))
		err := r.idx.update(ctx, n, func(m map[string]indexEntry) bool {
			for i, e := range es {
				used[i] = e.used.Load()
				h := t.hash(e.key)
				ie, ok := m[h]
				if !ok {
					// Made (or first seen) now: that counts as a use.
					ie = indexEntry{Key: e.key, Created: now.Unix(), Used: now.Unix()}
				}
				ie.Used = max(ie.Used, time.Unix(0, used[i]).Unix())
				m[h] = ie
			}
			return true
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, e := range es {
			e.indexed.Store(max(used[i], 1))
		}
	}
	return errors.Join(errs...)
}

// useStale reports whether e is a stored session whose index entry is
// missing (as far as this Runtime knows) or behind its use by
// indexUseGrain.
func (r *Runtime) useStale(e *entry) bool {
	if !isReady(e) || e.c == nil || e.c.current().rec.Generation == 0 {
		return false // never stored: nothing to list
	}
	ix := e.indexed.Load()
	return ix == 0 || e.used.Load()-ix >= int64(indexUseGrain)
}

// flushUses writes the last uses the index is behind on (housekeeping).
func (r *Runtime) flushUses(ctx context.Context) {
	r.mu.Lock()
	var stale []*entry
	for _, e := range r.m {
		if r.useStale(e) {
			stale = append(stale, e)
		}
	}
	r.mu.Unlock()
	if len(stale) > 0 {
		_ = r.indexUse(ctx, stale) // retried at the next tick
	}
}
