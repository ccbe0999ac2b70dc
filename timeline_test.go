package injecttoken

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
)

// TestTimelineRecordsTokenEvents: the timeline route lists the session's
// login and refreshes, oldest first, each success with the expiry of the
// token it left, and a refused refresh as failed; a reload keeps them (the
// ring belongs to the named session, not to one config).
func TestTimelineRecordsTokenEvents(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	a, _ := passwordGateway(t, srv, "tl")
	a.Call("POST", "/inject_token/sessions/tl/refresh", "", http.StatusOK)
	srv.FailRefreshes(1)
	a.Call("POST", "/inject_token/sessions/tl/refresh", "", http.StatusServiceUnavailable)

	_, _, body := do(t, http.DefaultClient, http.MethodGet, adminURL+"/inject_token/sessions/tl/timeline", nil)
	var tl adminapi.Timeline
	if err := json.Unmarshal(body, &tl); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	var kinds []string
	for i, ev := range tl.Events {
		kinds = append(kinds, ev.Kind)
		if ev.At.Before(tl.From) || ev.At.After(tl.Now) || i > 0 && ev.At.Before(tl.Events[i-1].At) {
			t.Errorf("event %d at %v: outside [%v, %v] or out of order", i, ev.At, tl.From, tl.Now)
		}
		if (ev.Kind == adminapi.EventFailed) != (ev.ExpiresAt == nil) {
			t.Errorf("event %d (%s): expires_at %v", i, ev.Kind, ev.ExpiresAt)
		}
		if ev.ExpiresAt != nil && !ev.ExpiresAt.After(ev.At) {
			t.Errorf("event %d (%s): token expires %v, before the event", i, ev.Kind, ev.ExpiresAt)
		}
	}
	// The engine may retry the failed refresh in the background by now.
	want := []string{adminapi.EventIssued, adminapi.EventRefreshed, adminapi.EventFailed}
	if len(kinds) < len(want) || !slices.Equal(kinds[:3], want) {
		t.Fatalf("timeline kinds %v, want %v (%s)", kinds, want, body)
	}
	if tl.Now.Sub(tl.From) != time.Hour || tl.Session != "tl" {
		t.Errorf("timeline %q spans %v", tl.Session, tl.Now.Sub(tl.From))
	}
}
