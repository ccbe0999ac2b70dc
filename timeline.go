package injecttoken

import (
	"context"
	"time"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The dashboard's timeline: each configured session keeps its latest token
// events in a small ring (session.timeline), fed by the engine's Observe
// hook, and GET .../timeline returns those of the last hour.

// timelineSize bounds the events kept per session: an hour of refreshes
// every minute or so, plus failures, stays well below it.
const timelineSize = 128

// timelineKinds maps the engine's attempt outcomes to timeline kinds;
// outcomes not listed (a logout) are not drawn.
var timelineKinds = map[string]string{
	tokencache.OutcomeLoggedIn:  adminapi.EventIssued,
	tokencache.OutcomeRefreshed: adminapi.EventRefreshed,
	tokencache.OutcomeAdopted:   adminapi.EventAdopted,
	tokencache.OutcomeTransient: adminapi.EventFailed,
	tokencache.OutcomeDead:      adminapi.EventFailed,
	tokencache.OutcomeUnknown:   adminapi.EventFailed,
	tokencache.OutcomeLoginFail: adminapi.EventFailed,
}

// observer is the session's tokencache Observe hook: metrics, then the
// timeline.
func (s *session) observer() func(tokencache.Event) {
	metrics := observeRefresh(s.name)
	return func(e tokencache.Event) {
		metrics(e)
		if e.Kind == tokencache.EventAttempt {
			s.record(e.Outcome, time.Now())
		}
	}
}

// record adds an attempt's outcome to the timeline. A success carries the
// expiry of the token it left: the engine reports the event after it has
// published that token, outside its locks.
func (s *session) record(outcome string, at time.Time) {
	kind, ok := timelineKinds[outcome]
	if !ok {
		return
	}
	ev := adminapi.TimelineEvent{At: at.UTC(), Kind: kind}
	if c := s.tc.Load(); c != nil && kind != adminapi.EventFailed {
		ev.ExpiresAt = c.Status().ExpiresAt
	}
	s.timeline.Add(ev)
}

func handleTimeline(_ context.Context, c opCall) (any, error) {
	now := time.Now().UTC()
	from := now.Add(-adminapi.TimelineWindow)
	out := adminapi.Timeline{Session: c.s.name, From: from, Now: now, Events: []adminapi.TimelineEvent{}}
	for _, ev := range c.s.timeline.All() {
		if !ev.At.Before(from) {
			out.Events = append(out.Events, ev)
		}
	}
	return out, nil
}
