// Package ring is a fixed-size ring of the latest values, safe for
// concurrent use: what a long-lived record of events needs so that it can
// never grow.
package ring

import "sync"

// Ring keeps the last n values added.
type Ring[T any] struct {
	mu   sync.Mutex
	buf  []T
	next int  // where the next value goes
	full bool // buf has wrapped
}

// New returns a ring that keeps the last n values (n ≥ 1).
func New[T any](n int) *Ring[T] {
	return &Ring[T]{buf: make([]T, max(n, 1))}
}

// Add records v, dropping the oldest value when the ring is full.
func (r *Ring[T]) Add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
}

// All returns the values kept, oldest first.
func (r *Ring[T]) All() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]T(nil), r.buf[:r.next]...)
	}
	return append(append(make([]T, 0, len(r.buf)), r.buf[r.next:]...), r.buf[:r.next]...)
}
