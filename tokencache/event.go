package tokencache

import "time"

// EventKind says what an Event reports.
type EventKind int

const (
	// EventAttempt: one refresh, login, adoption or logout attempt ended
	// (Outcome, Reason, Duration, Lead).
	EventAttempt EventKind = iota + 1
	// EventLockWait: the engine waited Duration for the storage lock.
	EventLockWait
	// EventStorageError: a storage operation Op failed.
	EventStorageError
	// EventState: the session's state changed to State (active, logged_out,
	// login_failed, …); AutoLogin says whether automatic login is enabled.
	EventState
)

// Failure reasons reported in Event.Reason: a small fixed set, so they can
// be metric labels. Backends report theirs through ReasonError; the engine
// adds storage and lost_outcome.
const (
	ReasonTimeout      = "timeout"
	ReasonConnect      = "connect"
	ReasonStatus5xx    = "status_5xx"
	ReasonRateLimited  = "rate_limited"
	ReasonInvalidGrant = "invalid_grant"
	// ReasonTokenReused: the server saw a refresh token presented twice
	// and revoked the session (Prelude's token_reused). The engine never
	// presents a token twice, so another party holds the session's tokens
	// or storage was rolled back: an operator must look.
	ReasonTokenReused       = "token_reused"
	ReasonInvalidClient     = "invalid_client"
	ReasonDPoPRejected      = "dpop_rejected"
	ReasonNonce             = "nonce"
	ReasonMalformedResponse = "malformed_response"
	ReasonStorage           = "storage"
	ReasonLostOutcome       = "lost_outcome"
	ReasonRefreshExpired    = "refresh_expired"
	ReasonUnusableToken     = "unusable_token"
	ReasonOther             = "other"
)

// ReasonError is implemented by backend errors that know which of the
// Reason* constants explains them.
type ReasonError interface {
	error
	FailureReason() string
}

// Event is one thing the engine did, reported to Config.Observe for
// metrics. It never carries a token or key.
type Event struct {
	Kind EventKind
	// Outcome is one of the Outcome* constants (EventAttempt).
	Outcome string
	// Reason is one of the Reason* constants when the attempt failed.
	Reason string
	// Duration is the token server round trip of an attempt, including
	// nonce and skew retries (EventAttempt), or the time spent waiting for
	// the storage lock (EventLockWait).
	Duration time.Duration
	// Lead is how long before the previous access token's expiry a
	// successful refresh finished (EventAttempt with OutcomeRefreshed);
	// zero when there was no previous token.
	Lead time.Duration
	// Op names the storage operation that failed (EventStorageError):
	// load, store, lock, unlock, delete.
	Op string
	// State is the session's new state (EventState).
	State string
	// AutoLogin reports whether automatic login is enabled (EventState).
	AutoLogin bool
}
