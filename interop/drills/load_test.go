package drills

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// Load is paced and bounded: each node gets one request every loadEvery
// (one worker per node, so a hung node only delays its own requests) and
// the whole run stops after loadMax requests per node whatever happens.
const (
	loadEvery = 40 * time.Millisecond
	loadMax   = 6000
)

// result is one request's outcome.
type result struct {
	node       int
	start, end time.Time
	status     int  // 0 when the request itself failed
	retryAfter bool // a Retry-After header came with it
}

// load sends requests to every node until stop.
type load struct {
	c    *cluster
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	results []result
	paused  map[int]bool
}

func (c *cluster) startLoad() *load {
	l := &load{c: c, stop: make(chan struct{}), paused: make(map[int]bool)}
	for i := range c.nodes {
		l.wg.Add(1)
		go l.worker(i)
	}
	c.t.Cleanup(l.finish)
	return l
}

func (l *load) worker(i int) {
	defer l.wg.Done()
	tick := time.NewTicker(loadEvery)
	defer tick.Stop()
	for range loadMax {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		l.mu.Lock()
		skip := l.paused[i]
		l.mu.Unlock()
		if skip {
			continue
		}
		r := result{node: i, start: time.Now()}
		resp, err := httpClient.Get(l.c.nodes[i].url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			r.status = resp.StatusCode
			r.retryAfter = resp.Header.Get("Retry-After") != ""
		}
		r.end = time.Now()
		l.mu.Lock()
		l.results = append(l.results, r)
		l.mu.Unlock()
	}
}

// pause stops (or resumes) sending to node i, for a node that cannot
// answer because the drill stopped its process.
func (l *load) pause(i int, on bool) {
	l.mu.Lock()
	l.paused[i] = on
	l.mu.Unlock()
}

// finish stops the load and waits for requests in flight.
func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// snapshot returns the results so far.
func (l *load) snapshot() []result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.results...)
}

// tally counts results by outcome.
type tally struct {
	total, ok, failed int
	unavailable       int // 503 with Retry-After
	byStatus          map[int]int
}

func count(rs []result, keep func(result) bool) tally {
	t := tally{byStatus: make(map[int]int)}
	for _, r := range rs {
		if keep != nil && !keep(r) {
			continue
		}
		t.total++
		t.byStatus[r.status]++
		switch {
		case r.status == http.StatusOK:
			t.ok++
		case r.status == http.StatusServiceUnavailable && r.retryAfter:
			t.unavailable++
			t.failed++
		default:
			t.failed++
		}
	}
	return t
}
