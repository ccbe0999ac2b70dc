package tokencache

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"
)

// scheduler drives the refreshes of a Runtime's sessions: one goroutine
// and one timer heap, not a refresher per session. A session is planned
// when its next wake may have changed (the cache's notify hook: an
// install, a failure, a finished flight, a use after idling); the plan is
// Cache.nextWake, the same decision a named session's loop makes, with a
// session not used within the UseWindow leaving its refresh to its next
// use. Due sessions start the cache's single flight, as the loop does.
//
// At most cap flights the scheduler started run at once; sessions due
// beyond that stay at the top of the heap until one ends. A flight a
// caller started, or one the scheduler only joined, is not counted: a
// request is never held back by the cap.
//
// Locks: a cache calls poke with its c.mu held, so the scheduler never
// holds s.mu while it calls into a cache.
type scheduler struct {
	clock Clock
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	h       entryHeap
	dirty   []*entry
	cap     int // MaxRefreshing
	running int // flights started by the scheduler, not yet ended
}

// schedState is an entry's place in the scheduler.
type schedState struct {
	// planned: in the heap, waiting to be planned or a flight it started
	// still running; a use of an unplanned session pokes it. Cleared
	// before a plan reads the last use, so that a use racing the plan is
	// either seen by it or pokes again.
	planned atomic.Bool
	// Guarded by scheduler.mu.
	at    time.Time
	index int  // in the heap; -1 when not
	dirty bool // in scheduler.dirty
	gone  bool // evicted: never planned again
}

func newScheduler(clock Clock, limit int) *scheduler {
	s := &scheduler{clock: clock, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), cap: limit}
	go s.run()
	return s
}

// setCap changes MaxRefreshing (Update).
func (s *scheduler) setCap(n int) {
	s.mu.Lock()
	s.cap = n
	s.mu.Unlock()
	s.signal()
}

func (s *scheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// poke asks for e to be planned again. It never blocks.
func (s *scheduler) poke(e *entry) {
	e.sched.planned.Store(true)
	s.mu.Lock()
	if !e.sched.dirty && !e.sched.gone {
		e.sched.dirty = true
		s.dirty = append(s.dirty, e)
	}
	s.mu.Unlock()
	s.signal()
}

// remove takes an evicted session out for good.
func (s *scheduler) remove(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.sched.gone = true
	if e.sched.index >= 0 && e.sched.index < len(s.h) && s.h[e.sched.index] == e {
		heap.Remove(&s.h, e.sched.index)
	}
}

func (s *scheduler) close() {
	close(s.stop)
	<-s.done
}

func (s *scheduler) run() {
	defer close(s.done)
	timer := s.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = nil
		for _, e := range dirty {
			e.sched.dirty = false
		}
		s.mu.Unlock()
		for _, e := range dirty {
			s.plan(e)
		}
		for _, e := range s.due() {
			s.start(e)
		}
		timer.Stop()
		s.mu.Lock()
		if len(s.h) > 0 && s.running < s.cap {
			timer.Reset(max(s.h[0].sched.at.Sub(s.clock.Now()), 0))
		}
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-timer.C():
		}
	}
}

// plan puts e in the heap at its next wake, or takes it out.
func (s *scheduler) plan(e *entry) {
	e.sched.planned.Store(false)
	if e.c.ctx.Err() != nil {
		return // closed
	}
	at, ok := e.c.nextWake()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.sched.gone || e.sched.dirty {
		return // evicted, or planned again soon
	}
	in := e.sched.index >= 0 && e.sched.index < len(s.h) && s.h[e.sched.index] == e
	switch {
	case !ok && in:
		heap.Remove(&s.h, e.sched.index)
	case !ok:
	case in:
		e.sched.at = at
		heap.Fix(&s.h, e.sched.index)
	default:
		e.sched.at = at
		heap.Push(&s.h, e)
	}
	if ok {
		e.sched.planned.Store(true)
	}
}

// start starts e's flight, as the loop does; its end pokes e again. A
// flight it starts (rather than joins) counts against the cap until it
// ends.
func (s *scheduler) start(e *entry) {
	c := e.c
	c.mu.Lock()
	joined := c.flight != nil && c.flight.epoch == c.epoch
	f := c.startFlightLocked()
	c.mu.Unlock()
	if joined {
		return
	}
	s.mu.Lock()
	s.running++
	s.mu.Unlock()
	go func() {
		<-f.done
		s.mu.Lock()
		s.running--
		s.mu.Unlock()
		s.signal()
	}()
}

// due pops the sessions whose time has come, as many as the cap leaves
// room for. They stay planned: the end of the flight each starts plans it
// again.
func (s *scheduler) due() []*entry {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*entry
	for len(s.h) > 0 && s.running+len(out) < s.cap && !s.h[0].sched.at.After(now) {
		out = append(out, heap.Pop(&s.h).(*entry))
	}
	return out
}

// entryHeap orders entries by their planned time.
type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].sched.at.Before(h[j].sched.at) }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].sched.index, h[j].sched.index = i, j
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.sched.index = len(*h)
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.sched.index = -1
	*h = old[:len(old)-1]
	return e
}
