// Package prelude is a client for the Prelude Session ("Prelude Auth")
// frontend API, https://<app>.session.prelude.dev/v1/session/..., as used by
// a server-side process that holds a session on a user's behalf.
//
// # Transport
//
// It speaks the non-browser transport of the official mobile SDKs, not the
// browser one: no cookies are used or stored. The refresh token travels in
// the X-Refresh-Token request header and comes back rotated in the
// X-Refresh-Token response header (with X-Refresh-Token-Expires-At); the
// OTP verification context travels in X-Verification-Token. Finalize,
// Refresh and Revoke carry a DPoP proof (RFC 9449) signed by a dpop.Key;
// Prelude pins the key's thumbprint to the session at Finalize, so a stolen
// refresh token is useless without the key. Prelude's SDKs only use ES256
// keys. Access tokens are plain bearer tokens (no "ath", no DPoP scheme);
// ListSessions and RevokeSessions send only "Authorization: Bearer", as the
// iOS SDK does.
//
// # API versions
//
// Prelude's API has changed over time and the client always sends the
// newest forms: /v1/session/otp and /otp/check (not the older
// /login/otp paths), no X-App-Id header (the app is taken from the Host),
// no body on /refresh. It accepts both old and new answers: expires_at as
// Unix seconds (current) or an RFC 3339 string (older), error bodies as
// {"code","message"} with "display_message" as an alias for "message" and
// RFC 6749 {"error","error_description"} as a fallback, and non-JSON error
// bodies from proxies (Code is then "", the status still classifies).
//
// # DPoP nonces and clocks
//
// Every response's DPoP-Nonce, successes and errors alike, is remembered
// in a dpop.NonceStore per origin and put in the next proof. A 400
// use_dpop_nonce carrying a new nonce is answered by exactly one resend with
// a fresh proof (new jti); a second one is returned as an error.
//
// Expiry times are returned on the local clock. From each response's Date
// header the client estimates skew = localNow − serverNow (taking the middle
// of Date's one-second window) and, when |skew| ≥ 1 s, reports
// ExpiresAt = expires_at + skew, and likewise for the refresh-token expiry;
// under 1 s the header cannot tell skew from rounding and nothing is
// corrected. The same estimate dates DPoP proofs (iat) on the server's
// clock, and a proof rejected as invalid_dpop_proof while the estimate
// changed is re-dated and resent once, as the official SDKs do, so a clock
// jump on either side does not end the session.
//
// # Errors
//
// Every error is an *Error whose Kind says what to do:
//
//	KindTransient       The server did not act on the request: network
//	                    error or timeout before the request was fully
//	                    written, 5xx, 429. Retry later, no sooner than
//	                    RetryAfter (set from 429/503 Retry-After); a
//	                    refresh token that was sent is still valid.
//	KindDead            401, or code unauthorized, invalid_dpop_proof,
//	                    dpop_key_mismatch, missing_dpop_proof or
//	                    token_reused with any status. Log in again (for
//	                    LoginPassword: the credentials are wrong).
//	KindCaller          Any other 4xx (a repeated use_dpop_nonce
//	                    included), a 3xx, or arguments refused before
//	                    sending. Retrying the same request will not help.
//	KindUnknownOutcome  The request was fully written (httptrace
//	                    WroteRequest) but no response came, or a 2xx
//	                    could not be used (bad JSON, no access token, no
//	                    rotated X-Refresh-Token, body over
//	                    MaxResponseBytes). Treat a refresh token that was
//	                    sent as spent.
//
// A 2xx without a usable access token or rotated refresh token is
// KindUnknownOutcome rather than transient: the server has probably
// rotated, so presenting the old refresh token again would look like token
// reuse and end the session. For GET requests, which change nothing, both
// "no response" and an unusable 2xx are KindTransient.
//
// Backend adapts the client to tokencache.Backend, wrapping
// tokencache.ErrSessionDead and tokencache.ErrOutcomeUnknown around the
// matching kinds; *Error implements tokencache.RetryAfterError.
//
// # Secrets
//
// Tokens, refresh tokens, passwords, codes and keys never appear in error
// strings: server messages are scrubbed of every secret the request
// carried, stripped of control characters and truncated. Tokens formats as
// redacted under every fmt verb. Response bodies are read up to
// MaxResponseBytes (1 MiB by default), never unbounded. The package does not
// log.
package prelude
