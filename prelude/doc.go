// Package prelude is a client for the Prelude Auth (formerly Prelude
// Session) frontend API, https://<app>.session.prelude.dev/v1/session/..., as used by
// a server-side process that holds a session on a user's behalf.
//
// # Transport
//
// It speaks the non-browser transport of the official mobile SDKs: the
// refresh token travels in the X-Refresh-Token request header and comes
// back rotated in the X-Refresh-Token response header (with
// X-Refresh-Token-Expires-At). A 2xx refresh without X-Refresh-Token means
// the server did not rotate: Tokens.RefreshToken is "" and the presented
// token stays the one to use, as the SDKs assume. Finalize, Refresh,
// Revoke and the current OTP check carry a DPoP proof (RFC 9449) signed by
// a dpop.Key; Prelude pins the key's thumbprint to the session at login,
// so a stolen refresh token is useless without the key. Prelude's SDKs only
// use ES256 keys. Access tokens are plain bearer tokens (no "ath", no DPoP
// scheme); ListSessions and RevokeSessions send only "Authorization:
// Bearer", as the iOS SDK does.
//
// Every request carries X-SDK-User-Agent naming this module and its
// version (never an official SDK's name), and every POST is labelled
// Content-Type: application/json, bodiless ones (refresh, revoke,
// me/revoke) included, as the web SDK does. The me/revoke query puts
// target first; ListSessions sends limit and offset as given, 0 included.
//
// # One-time-code login
//
// StartOTPLogin uses the flow of the official web SDK 0.6.0
// (OTPFlowCurrent): POST /v1/session/login/otp, where the server keeps the
// verification state in a cookie, then POST /v1/session/login/otp/check
// with the code, the cookie and a DPoP proof, answered with the tokens. The
// cookie lives in a jar that belongs to that one OTPLogin, in memory only:
// it is never persisted, shared with other logins or printed. When the
// server answers 404 or 405 for the current flow, the documented flow of
// the API reference and the mobile SDKs is used (OTPFlowDocumented):
// /v1/session/otp → X-Verification-Token → /otp/check → challenge token →
// /login/finalize. OTPLogin.Flow says which one was used. StartOTP,
// CheckOTP and Finalize expose the documented flow's steps directly.
//
// # API versions
//
// Prelude's API has changed over time. The client sends no X-App-Id header
// (the app is taken from the Host) and no body on /refresh. It accepts both
// old and new answers: expires_at as Unix seconds (current; a decimal
// string is read the same way) or an RFC 3339 string (older), error bodies as {"code","message","type"} with
// "display_message" as an alias for "message" and RFC 6749
// {"error","error_description"} as a fallback, and non-JSON error bodies
// from proxies (Code is then "", the status still classifies).
//
// A sloppy or hostile 2xx is read as the SDKs read it: member names match
// exactly ("ACCESS_TOKEN" is not access_token, unlike encoding/json's
// default), so an answer without an exactly named access_token is
// malformed. An answer with an access token whose expiry is already past,
// or readable neither in expires_at nor in the JWT's exp, is kept: its
// rotated refresh token is the live one. Tokens.Usable then reports false —
// the token cache stores the answer, never hands that access token out, and
// refreshes again after a backoff.
//
// # DPoP nonces and clocks
//
// Every response's DPoP-Nonce, successes and errors alike, is remembered
// in a dpop.NonceStore per origin and put in the next proof. A
// use_dpop_nonce carrying a new nonce is answered by exactly one resend
// with a fresh proof (new jti), as the SDKs do; a second one is returned as
// a KindTransient error.
//
// Expiry times are returned on the local clock. From each response's Date
// header the client estimates skew = localNow − serverNow (taking the middle
// of Date's one-second window) and, when |skew| ≥ 1 s, reports
// ExpiresAt = expires_at + skew, and likewise for the refresh-token expiry;
// under 1 s the header cannot tell skew from rounding and nothing is
// corrected. The same estimate dates DPoP proofs (iat) on the server's
// clock, and a proof rejected as invalid_dpop_proof while the estimate
// changed is re-dated and resent once. The web SDK does neither (its
// proofs carry the browser's clock); this module does because a gateway's
// clock may jump, and a rejected proof proves the token was not spent, so
// the resend is free. A rejection that remains is KindTransient: the token
// cache retries later with backoff and a fresh proof.
//
// # Errors
//
// Every error is an *Error whose Kind says what to do; Kind's
// documentation holds the decided list of answers that prove the server
// did not act on a refresh:
//
//	KindTransient       The server did not act: the request was not fully
//	                    written, 429, 503 with Retry-After, or a 400/401
//	                    invalid_dpop_proof, missing_dpop_proof or
//	                    use_dpop_nonce. For calls that spend nothing also
//	                    5xx. Retry later, no sooner than RetryAfter; a
//	                    refresh token that was sent is still valid.
//	KindDead            401 (unauthorized: revoked, reused, expired) or
//	                    token_reused. Log in again.
//	KindCredentials     401 on email + password login: wrong credentials.
//	KindKeyMismatch     dpop_key_mismatch: the session's own key was
//	                    refused. Not spent, not a reason to log in again:
//	                    a bug to report (the error text says so).
//	KindCaller          Any other 4xx on a call that spends nothing (a
//	                    wrong OTP code), or arguments refused before
//	                    sending. Retrying the same request will not help.
//	KindUnknownOutcome  The request was fully written (httptrace
//	                    WroteRequest) but no response came, a 2xx could
//	                    not be used, or a refresh got any answer not
//	                    listed under KindTransient or KindDead (500, 502,
//	                    504, 503 without Retry-After, other 3xx/4xx).
//	                    Treat a refresh token that was sent as spent.
//
// Backend adapts the client to tokencache.Backend, wrapping
// tokencache.ErrSessionDead, tokencache.ErrOutcomeUnknown and
// tokencache.ErrCredentialsRejected around the matching kinds; *Error
// implements tokencache.RetryAfterError and tokencache.ReasonError.
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
