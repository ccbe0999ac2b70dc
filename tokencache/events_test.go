package tokencache_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// recorder collects the events a cache reports.
type recorder struct {
	mu     sync.Mutex
	events []tokencache.Event
}

func (r *recorder) observe(e tokencache.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) find(match func(tokencache.Event) bool) (tokencache.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if match(e) {
			return e, true
		}
	}
	return tokencache.Event{}, false
}

// The events metrics are built from: every attempt with its outcome and
// reason, lock waits, storage errors by operation, state changes.
func TestEventsForMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var rec recorder
	flaky := &scriptedStorage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
	c := e.cache(func(cfg *tokencache.Config) { cfg.Storage, cfg.Lazy, cfg.Observe = flaky, true, rec.observe })
	e.login(c)
	tok := mustToken(t, c)
	e.clk.Advance(time.Until(tok.Expiry) / 2)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.gate.fail(true)
	_ = c.Refresh(context.Background())
	e.gate.fail(false)
	flaky.set(true, true, true)
	_ = c.Refresh(context.Background())

	want := map[string]func(tokencache.Event) bool{
		"state active": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventState && ev.State == tokencache.StateActive
		},
		"login attempt": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventAttempt && ev.Outcome == tokencache.OutcomeLoggedIn
		},
		"refresh with lead": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventAttempt && ev.Outcome == tokencache.OutcomeRefreshed && ev.Lead > 0
		},
		"transient with a reason": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventAttempt && ev.Outcome == tokencache.OutcomeTransient && ev.Reason != ""
		},
		"storage failure attempt": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventAttempt && ev.Reason == tokencache.ReasonStorage
		},
		"store error": func(ev tokencache.Event) bool {
			return ev.Kind == tokencache.EventStorageError && ev.Op == "store"
		},
		"lock wait": func(ev tokencache.Event) bool { return ev.Kind == tokencache.EventLockWait },
	}
	for name, match := range want {
		if _, ok := rec.find(match); !ok {
			t.Errorf("no %s event", name)
		}
	}
}
