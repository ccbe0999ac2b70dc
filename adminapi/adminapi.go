// Package adminapi holds the wire types of the inject_token admin API: the
// routes under /inject_token/ on Caddy's admin endpoint, also served by
// the inject_token_dashboard handler. The server (package injecttoken) and
// its client (package cli) both use these types, so the contract is
// written once.
//
// Every answer is JSON. Every field is always present: a value that is not
// known is null (times, maps), "" (strings) or 0, never missing.
package adminapi

import (
	"net/url"
	"time"
)

// Prefix is where the routes live on the admin endpoint.
const Prefix = "/inject_token/"

// SessionsPath is the collection of sessions.
const SessionsPath = "/inject_token/sessions"

// SessionPath returns the path of one session's route: suffix is "" for
// its status, or one of the Route* constants.
func SessionPath(name, suffix string) string {
	return SessionsPath + "/" + url.PathEscape(name) + suffix
}

// Routes below a session, appended to SessionPath.
const (
	RouteRefresh      = "/refresh"             // POST: refresh now → Status
	RouteLogout       = "/logout"              // POST: end the session → Status
	RouteLogin        = "/login"               // POST: log in with the configured credentials → Status
	RouteOTPStart     = "/login/otp"           // POST OTPStart → OTPStarted (prelude)
	RouteOTPCheck     = "/login/otp/check"     // POST OTPCheck → Status (prelude)
	RoutePassword     = "/login/password"      // POST PasswordLogin → Status (prelude)
	RouteRefreshToken = "/login/refresh-token" // POST RefreshTokenLogin → Status (oauth2)
	RouteList         = "/list"                // GET ?limit=&offset= → DeviceList (prelude)
	RouteRevoke       = "/revoke"              // POST Revoke → RevokeResult (prelude)
	RouteTimeline     = "/timeline"            // GET → Timeline
)

// Status is one session: its state, the user and token it holds (decoded
// header and claims, never the token itself), its refresh bookkeeping and
// its DPoP key's public thumbprint. It never holds a token, a refresh
// token or a private key.
type Status struct {
	// Backend is "prelude" or "oauth2"; BaseURL the server it talks to.
	Backend string `json:"backend"`
	BaseURL string `json:"base_url"`
	// ConfiguredLogin reports whether the session has credentials in its
	// configuration (oauth2 client_credentials, or a Prelude login
	// password): RouteLogin logs it in again after an operator's logout.
	ConfiguredLogin bool `json:"configured_login"`
	// OTPPending reports a one-time-code login waiting for its code.
	OTPPending bool `json:"otp_pending"`
	// OTPFlow is the one-time-code flow of the latest OTP login started:
	// "login_otp" (current) or "otp" (documented fallback); "" before any.
	OTPFlow string `json:"otp_flow"`
	// Engine is what the token engine reports; its fields appear at the
	// top level of the JSON object.
	Engine
}

// Engine is what the token engine knows about a session, secret-free:
// package tokencache reports it (tokencache.Status is this type), so its
// fields are declared once, here, with the documentation the API's users
// read.
type Engine struct {
	// Session is the session's name (the `session` subdirective).
	Session string `json:"session"`
	// State is "active" or "logged_out" (or another engine state); Reason
	// says why it is not active.
	State  string `json:"state"`
	Reason string `json:"reason"`
	// AutoLogin reports whether the session logs itself in again when it
	// ends (configured login, not disabled by an operator's logout).
	AutoLogin bool `json:"auto_login"`
	// Subject and SessionID are the token's sub and sid claims.
	Subject   string `json:"sub"`
	SessionID string `json:"sid"`
	// Scopes are the token's scopes, if it names any ([] otherwise).
	Scopes []string `json:"scopes"`
	// TokenType is "Bearer" or "DPoP".
	TokenType string `json:"token_type"`
	// ExpiresAt is the access token's expiry; SecondsLeft the whole
	// seconds until then (0 when expired or absent).
	ExpiresAt   *time.Time `json:"expires_at"`
	SecondsLeft int64      `json:"seconds_left"`
	// NextRefresh is when the next attempt is due: the scheduled refresh,
	// or the end of the backoff while a retry is scheduled.
	NextRefresh *time.Time `json:"next_refresh"`
	// LastRefresh is when the last refresh or login attempt of this
	// process ended, LastOutcome how ("refreshed", "adopted", "failed", …).
	LastRefresh *time.Time `json:"last_refresh"`
	LastOutcome string     `json:"last_outcome"`
	// RefreshCount, AdoptCount and WaitCount count this process's
	// refreshes, adoptions of another instance's refresh, and callers that
	// waited for a token.
	RefreshCount int64 `json:"refresh_count"`
	AdoptCount   int64 `json:"adopt_count"`
	WaitCount    int64 `json:"wait_count"`
	// LastError is the last failure's text ("" after a success).
	LastError string `json:"last_error"`
	// KeyThumbprint is the DPoP key's RFC 7638 thumbprint (jkt) and
	// KeyAlgorithm its algorithm.
	KeyThumbprint string `json:"dpop_jkt"`
	KeyAlgorithm  string `json:"dpop_alg"`
	// TokenHeader and TokenClaims are the access token's decoded JOSE
	// header and claims (null when the token is not a JWT).
	TokenHeader map[string]any `json:"token_header"`
	TokenClaims map[string]any `json:"token_claims"`
}

// Timeline is a session's token events over the last hour (TimelineWindow),
// oldest first, from a small ring kept per configured session: a busy
// session shows its latest events only.
type Timeline struct {
	Session string `json:"session"`
	// From and Now bound the window the events fall in.
	From   time.Time       `json:"from"`
	Now    time.Time       `json:"now"`
	Events []TimelineEvent `json:"events"`
}

// TimelineWindow is how far back a Timeline reaches.
const TimelineWindow = time.Hour

// TimelineEvent is one thing that happened to the session's token.
type TimelineEvent struct {
	At time.Time `json:"at"`
	// Kind is one of the Event* constants.
	Kind string `json:"kind"`
	// ExpiresAt is the expiry of the token the session holds after the
	// event; null after a failure.
	ExpiresAt *time.Time `json:"expires_at"`
}

// Timeline event kinds.
const (
	EventIssued    = "issued"    // a login gave the session a new token
	EventRefreshed = "refreshed" // this instance refreshed the token
	EventAdopted   = "adopted"   // another instance had refreshed; its token was taken
	EventFailed    = "failed"    // a refresh or login failed
)

// SessionList answers GET /inject_token/sessions.
type SessionList struct {
	Sessions []Status `json:"sessions"`
}

// OTPStart asks for a one-time code; exactly one field is set.
type OTPStart struct {
	PhoneNumber  string `json:"phone_number,omitempty"`
	EmailAddress string `json:"email_address,omitempty"`
}

// OTPStarted answers OTPStart: Status is "code_sent".
type OTPStarted struct {
	Status string `json:"status"`
	// OTPFlow is the flow the server accepted: "login_otp" (current) or
	// "otp" (documented fallback).
	OTPFlow string `json:"otp_flow"`
}

// OTPCheck finishes the one-time-code login in progress.
type OTPCheck struct {
	Code string `json:"code"`
}

// PasswordLogin logs in with an email address and password.
type PasswordLogin struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// RefreshTokenLogin starts an oauth2 refresh_token session from a refresh
// token obtained elsewhere.
type RefreshTokenLogin struct {
	RefreshToken string `json:"refresh_token"`
}

// Revoke targets.
const (
	TargetAll     = "all"
	TargetOthers  = "others"
	TargetMine    = "mine"
	TargetSession = "session"
)

// Revoke ends server-side sessions of the logged-in user: Target is one of
// the Target* constants; SessionID names the session for TargetSession.
type Revoke struct {
	Target    string `json:"target"`
	SessionID string `json:"session_id,omitempty"`
}

// RevokeResult answers Revoke. LocalCleared reports that this gateway's
// own session was among the revoked ones and was cleared locally.
type RevokeResult struct {
	Target       string `json:"target"`
	LocalCleared bool   `json:"local_cleared"`
}

// Device is one server-side session of the logged-in user; Current marks
// the one this gateway holds.
type Device struct {
	ID          string `json:"id"`
	DeviceType  string `json:"device_type"`
	DeviceModel string `json:"device_model"`
	OSVersion   string `json:"os_version"`
	CountryCode string `json:"country_code"`
	CreatedAt   string `json:"created_at"`
	LastSeenAt  string `json:"last_seen_at"`
	ExpiresAt   string `json:"expires_at"`
	Current     bool   `json:"current"`
}

// DeviceList is a page of Devices.
type DeviceList struct {
	Sessions []Device `json:"sessions"`
	Total    int      `json:"total"`
	Limit    int      `json:"limit"`
	Offset   int      `json:"offset"`
}

// CodeHeader carries every error answer's code. The admin endpoint's
// error body is Caddy's own {"error": "..."}, so the code travels here; the
// dashboard sends the same header and body.
const CodeHeader = "Inject-Token-Code"

// Error is every non-2xx answer's body ({"error"}), with Code filled in
// by a client from CodeHeader. Code is machine-readable: one of the
// Code* constants, or the token server's own error code (Prelude's "code",
// OAuth's "error") when the token server refused the request.
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Codes of errors the admin API itself decides. See docs/admin-api.md's status
// table for when each is used.
const (
	CodeInvalidRequest   = "invalid_request"    // 400
	CodeWrongBackend     = "wrong_backend"      // 400
	CodeNotFound         = "not_found"          // 404
	CodeUnknownSession   = "unknown_session"    // 404
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeLoggedOut        = "logged_out"         // 409
	CodeNoOTPPending     = "no_otp_pending"     // 409
	CodeCrossOrigin      = "cross_origin"       // 403 (dashboard only)
	CodeTooLarge         = "body_too_large"     // 413
	CodeBackendError     = "backend_error"      // 502
	CodeUnavailable      = "unavailable"        // 503
	CodeInternal         = "internal"           // 500
)
