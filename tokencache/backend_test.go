package tokencache

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
)

// TestAttemptClass is the table of the rules every backend shares: only
// answers that prove the server did not act let a refresh token be
// presented again.
func TestAttemptClass(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    Attempt
		want Class
	}{
		{"never written", Attempt{Spends: true}, ClassRetryLater},
		{"written, no answer, spends", Attempt{Spends: true, Written: true}, ClassOutcomeUnknown},
		{"written, no answer, POST", Attempt{Written: true}, ClassOutcomeUnknown},
		{"written, no answer, repeatable", Attempt{Repeatable: true, Written: true}, ClassRetryLater},
		{"429 spends", Attempt{Spends: true, Written: true, Status: 429}, ClassRetryLater},
		{"503 Retry-After spends", Attempt{Spends: true, Written: true, Status: 503, RetryAfter: true}, ClassRetryLater},
		{"503 bare spends", Attempt{Spends: true, Written: true, Status: 503}, ClassOutcomeUnknown},
		{"500 spends", Attempt{Spends: true, Written: true, Status: 500}, ClassOutcomeUnknown},
		{"500 POST", Attempt{Written: true, Status: 500}, ClassRetryLater},
		{"400 proof spends", Attempt{Spends: true, Written: true, Status: 400, ProofRejected: true}, ClassRetryLater},
		{"401 proof spends", Attempt{Spends: true, Written: true, Status: 401, ProofRejected: true}, ClassRetryLater},
		{"403 proof spends", Attempt{Spends: true, Written: true, Status: 403, ProofRejected: true}, ClassOutcomeUnknown},
		{"proof beats verdict", Attempt{Spends: true, Written: true, Status: 400, ProofRejected: true, Verdict: ClassSessionDead}, ClassRetryLater},
		{"verdict", Attempt{Spends: true, Written: true, Status: 400, Verdict: ClassSessionDead}, ClassSessionDead},
		{"429 beats verdict", Attempt{Spends: true, Written: true, Status: 429, Verdict: ClassCredentialsRejected}, ClassRetryLater},
		{"400 spends", Attempt{Spends: true, Written: true, Status: 400}, ClassOutcomeUnknown},
		{"400 POST", Attempt{Written: true, Status: 400}, ClassDidNotAct},
		{"302 repeatable", Attempt{Repeatable: true, Written: true, Status: 302}, ClassDidNotAct},
		{"bad 2xx POST", Attempt{Written: true, Status: 200}, ClassOutcomeUnknown},
		{"bad 2xx repeatable", Attempt{Repeatable: true, Written: true, Status: 200}, ClassRetryLater},
	} {
		if got := tc.a.Class(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestErrorMatchesItsSentinelOnly: the engine reads a backend's class
// through errors.Is, so each class matches its own sentinel and no other.
func TestErrorMatchesItsSentinelOnly(t *testing.T) {
	sentinels := []error{ErrOutcomeUnknown, ErrSessionDead, ErrCredentialsRejected}
	for c := ClassRetryLater; c <= ClassCredentialsRejected; c++ {
		err := fmt.Errorf("wrapped: %w", &Failure{Class: c})
		for _, s := range sentinels {
			if got, want := errors.Is(err, s), c.Sentinel() == s; got != want {
				t.Errorf("%v matches %v: %v", c, s, got)
			}
		}
	}
}

// registryRuns names TestRegistry's backend anew on every run (-count).
var registryRuns atomic.Int64

func TestRegistry(t *testing.T) {
	name := fmt.Sprintf("test-registry-%d", registryRuns.Add(1))
	Register(name, func(json.RawMessage, Env) (Backend, error) { return nil, errors.New("built") })
	if _, err := NewBackend(name, nil, Env{}); err == nil || err.Error() != "built" {
		t.Fatalf("NewBackend = %v", err)
	}
	if _, err := NewBackend("nosuch", nil, Env{}); err == nil {
		t.Fatal("unknown backend built")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("second registration under one name did not panic")
		}
	}()
	Register(name, nil)
}
