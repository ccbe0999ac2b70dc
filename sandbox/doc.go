// Package sandbox is a strict local stand-in for the Prelude Auth (formerly
// Prelude Session) frontend API (https://{appId}.session.prelude.dev). It
// is the referee for the project's other tests: it refuses anything the
// real service might refuse, counts every refusal by reason, and has knobs
// for the failures a client must survive.
//
// # In Go tests
//
//	srv := sandboxtest.NewServer(t, sandbox.Options{AccessTokenTTL: time.Second})
//	// srv.URL is http://127.0.0.1:<port>; the server closes with the test.
//	... log in and refresh against srv.URL ...
//	if st := srv.Stats(); st.ReuseEvents != 0 || st.MaxRefreshInFlight > 1 {
//		t.Fatalf("client misbehaved: %+v", st)
//	}
//
// New returns the bare http.Handler when a test wants its own server.
//
// # In Caddy
//
// The module http.handlers.prelude_sandbox serves the same API; the
// directive is ordered before respond, so it works alone in a site block:
//
//	http://127.0.0.1:9090 {
//		prelude_sandbox {
//			name             <name>      # default "default"
//			access_token_ttl <duration>  # default 60s, at least 1s
//			require_nonce
//		}
//	}
//
// State (users, sessions, signing key) lives in a package registry keyed by
// name, so it survives config reloads; a reload's settings apply to the
// existing state. Lookup(name) returns it, for tests that drive Caddy.
// Paths outside /v1/session/ that are not sandbox routes go to the next
// handler; unknown paths inside it get a 404.
//
// # Defaults
//
// Every OTP code is 123456 (DefaultOTPCode; LastOTP reports it) and the
// first OTP for an identifier creates its user. The password user
// demo@example.com / demo-password (DemoEmail, DemoPassword) always exists;
// AddUser adds more. Access tokens are EdDSA JWTs whose kid is in
// /.well-known/jwks.json, with claims iss (scheme://Host of the request),
// sub (usr_…), sid (ses_…), iat, nbf, exp, scope ("") and jti. Refresh
// tokens are 256 random bits, bound to their session and to the DPoP key
// thumbprint presented at finalize; every refresh rotates them.
//
// # Routes
//
//	POST /v1/session/login/otp        current OTP flow (web SDK 0.6.0): sets the verification cookie
//	POST /v1/session/login/otp/check  cookie + DPoP; answers the tokens (no finalize)
//	POST /v1/session/login/otp/retry  cookie
//	POST /v1/session/otp              documented OTP flow: answers X-Verification-Token;
//	                                  {challenge_token} sends a step-up's code
//	POST /v1/session/otp/check        X-Verification-Token; answers a challenge token;
//	                                  with challenge_token a challenge-bound proof, completes a step-up
//	POST /v1/session/otp/retry        X-Verification-Token
//	POST /v1/session/login/email/password
//	POST /v1/session/login/finalize   DPoP required
//	POST /v1/session/refresh          DPoP + X-Refresh-Token (+ {step_up_token})
//	POST /v1/session/revoke           DPoP + X-Refresh-Token
//	GET  /v1/session/me/list          Bearer (+ optional DPoP)
//	POST /v1/session/me/revoke        Bearer (+ optional DPoP)
//	POST /v1/session/stepup/request   Bearer (+ optional DPoP); {scope}: a step-up challenge
//	POST /v1/session/stepup/continue  Bearer; no custom steps, so always refused
//	GET  /.well-known/jwks.json
//	GET  /whoami                      Bearer; echoes claims and request headers
//
// # Knobs
//
// All are safe to call while requests run.
//
//   - SetAccessTokenTTL: lifetime of tokens issued from now on.
//   - SetRequireNonce: nonce mode. A proof without a valid nonce gets 400
//     use_dpop_nonce and a DPoP-Nonce header. Every nonce the sandbox hands
//     out (on challenges and on every successful DPoP-checked response)
//     replaces the current one; the current and the previous are accepted,
//     so a client that ignores DPoP-Nonce on successes fails soon.
//   - SetRefreshLatency: /refresh waits this long while counted in flight.
//     The wait is not cut short when the client gives up: an abandoned
//     refresh may still rotate, as with the real service.
//   - FaultRefreshes(n, Fault): the next n authenticated refreshes answer
//     Fault's status, code and Retry-After instead; with AfterRotate the
//     token is rotated first (the old one spent), as when a load balancer
//     answers 502/504 for a token server that already acted. DPoP codes
//     (invalid_dpop_proof, missing_dpop_proof, dpop_key_mismatch,
//     use_dpop_nonce + DPoP-Nonce) are answered as the proof check would.
//   - FailRefreshes(n): an outage that proves it did not act: 503
//     internal with Retry-After: 0, not rotating.
//   - SkipRotation(n): the next n refreshes answer an access token without
//     X-Refresh-Token; the presented token stays current.
//   - DisableCurrentOTPLogin: the /v1/session/login/otp… paths answer 404,
//     as on a server with only the documented flow.
//   - Requests: every request received on a sandbox route (method, path,
//     query, headers with credentials, length), for wire-detail tests.
//   - DropAfterRotate(n): the next n successful refreshes rotate and then
//     close the connection without answering.
//   - RevokeSession(sid): revoke as an admin or another device would.
//   - AdvanceClock(d): move the sandbox clock (token times, DPoP iat window,
//     Date header) forward; Options.Now replaces the clock outright.
//   - VerifyAccessToken: check a token the way a resource server would.
//
// # Strictness
//
// Request bodies are limited to 64 KiB and must be one JSON object with
// Content-Type application/json and no unknown fields (/refresh and
// /revoke also accept an empty body). Credential headers may not repeat.
// Errors always use the envelope {"code": …, "message": …, "type": …},
// type being the category by status (bad_request, unauthorized, forbidden,
// not_found, conflict, rate_limited, internal).
//
// # One-time-code login
//
// Both flows are served. In the current one the verification lives in an
// HttpOnly SameSite=Strict cookie (__Host-verification-login_sandbox with
// Secure over TLS, verification-login_sandbox over plain http, where a
// client would not return a Secure cookie); the check needs the cookie and
// a DPoP proof, pins the proof's key to the new session and clears the
// cookie. In the documented one the verification travels in
// X-Verification-Token. A verification of one flow is not accepted by the
// other. Both checks verify the proof (current) before the code, accept a
// corrected code after a wrong one, and revoke the session whose refresh
// token is handed over in X-Refresh-Token (current check, finalize).
//
// DPoP proofs are checked by dpop.Verifier against the request's method and
// scheme://Host/path (the request's query is ignored; a proof whose htu
// carries a query is refused, since RFC 9449 §4.2 says clients omit it).
// On /refresh and /revoke the proof, including the session's pinned key, is
// checked before the token is looked at, so a bad proof never spends it.
// Presenting a spent refresh token revokes its session. Access tokens stay
// valid until exp after their session ends, but the /me routes need a live
// session.
//
// # Rejection reasons
//
// Stats.Rejections counts refusals by these labels. A nonce challenge
// counts under use_dpop_nonce and under nonce_missing or nonce_invalid.
//
//	missing_dpop_proof     401 missing_dpop_proof: no DPoP header
//	multiple_dpop_proofs   401 invalid_dpop_proof: more than one DPoP header
//	malformed, bad_typ, bad_alg, private_jwk, bad_signature, missing_claim,
//	htm_mismatch, htu_mismatch, iat_window, jti_replay, jti_mismatch
//	                       401 invalid_dpop_proof (the dpop.Reason labels)
//	challenge_proof_nonce  401 invalid_dpop_proof: a challenge-bound proof with a nonce
//	key_mismatch           401 dpop_key_mismatch: not the session's key
//	use_dpop_nonce         400 use_dpop_nonce (+ nonce_missing / nonce_invalid)
//	missing_refresh_token  401 unauthorized: no X-Refresh-Token
//	unknown_refresh_token  401 unauthorized: never issued
//	refresh_token_reused   409 token_reused: spent token; session revoked
//	session_revoked        401 unauthorized: logout, /me/revoke, reuse, admin
//	session_expired        401 unauthorized: past the 30-day session lifetime
//	injected_failure       FaultRefreshes / FailRefreshes (any status)
//	internal               500 internal: the sandbox itself failed
//	missing_access_token   401 unauthorized: no Bearer token
//	invalid_access_token   401 unauthorized: bad signature, expired, not an access token
//	invalid_credentials    401 unauthorized: wrong email or password
//	invalid_identifier     400 invalid_identifier
//	invalid_verification_token 400: unknown, used or expired verification (header or cookie)
//	bad_check_code         400 bad_check_code: wrong OTP code
//	missing_challenge_token, invalid_challenge_token, expired_challenge_token
//	                       400 / 401 with the same code
//	token_reused           409 token_reused: challenge token already finalized
//	step_up_token_reused   409 token_reused: step-up challenge already granted
//	step_not_completed, step_not_found, step_bypassed, token_mismatch, invalid_metadata
//	                       400 with the same code (step-up)
//	invalid_pagination_limit, invalid_pagination_offset   400 with the same code
//	bad_request            400 bad_request: body, header or query not acceptable
//	body_too_large         413 bad_request
//	not_found              404 not_found: unknown route or session
//	method_not_allowed     405 method_not_allowed (with Allow)
package sandbox
