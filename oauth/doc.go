// Package oauth is an OAuth 2.0 token client (RFC 6749) for machine
// sessions: the client_credentials, refresh_token and jwt-bearer (RFC
// 7523) grants, with client authentication by client_secret_basic,
// client_secret_post, private_key_jwt (RFC 7523), mutual TLS (RFC 8705:
// tls_client_auth, self_signed_tls_client_auth; the tokens it binds are
// named by Client.BoundCertificate) or none, resource indicators (RFC 8707),
// authorization server metadata discovery (RFC 8414 and OpenID Connect
// Discovery), token revocation (RFC 7009) and DPoP (RFC 9449).
//
// AuthCode (NewAuthCode) runs the authorization code grant for users who
// log in themselves: PKCE S256, state and nonce, pushed authorization
// requests (RFC 9126), DPoP-bound codes (dpop_jkt), the iss callback
// parameter (RFC 9207) and the user from the ID token verified against the
// issuer's JWKS; its Backend refreshes and revokes the sessions it starts.
//
// A Client is a tokencache.Backend: the token cache owns the session state
// (refresh token, DPoP key, schedule) and calls Refresh, Revoke and the
// LoginFuncs from Login and LoginWithRefreshToken.
//
// # DPoP
//
// With Config.DPoP every token and revocation request carries a fresh proof
// over the exact endpoint URL, with the newest nonce the server's origin
// sent (nonces are taken from every response, successes included). A
// 400 use_dpop_nonce with a DPoP-Nonce header is retried exactly once, with
// a new proof and, for private_key_jwt, a new client assertion (servers
// reject a replayed assertion jti). The server's token_type decides how the
// token is presented: a server without DPoP support answers Bearer, and the
// Grant then says Bearer.
//
// # Errors
//
// Network operations return *Error, classified once by Kind (see Kind for
// the list of answers that prove the server did not act):
//
//   - invalid_grant → KindDead (matches tokencache.ErrSessionDead);
//   - invalid_client, unauthorized_client, unsupported_grant_type,
//     invalid_scope, invalid_target, bare 401 → KindConfig (matches
//     ErrClientConfig and tokencache.ErrCredentialsRejected: nothing but a
//     configuration change helps, and retrying may lock the client out);
//   - not written, 429, 503 with Retry-After, a 400/401 about the DPoP
//     proof or nonce → KindTransient, with Retry-After: the server did not
//     act, the refresh token may be presented again;
//   - for a refresh_token request, anything else after it was written
//     (500, 502, 504, 503 without Retry-After, other 4xx, timeouts,
//     resets, an unusable 2xx) → KindUnknownOutcome (matches
//     tokencache.ErrOutcomeUnknown): the token may have been rotated;
//   - for client_credentials, which spends nothing, those are
//     KindTransient (5xx, lost answers) or KindRejected (other 4xx).
//
// *Error implements tokencache.RetryAfterError and tokencache.ReasonError.
//
// Error text never contains the client secret, a client assertion, or a
// refresh or access token.
//
// # Expiry
//
// expires_in is counted from when the request was sent. Without it the
// access token's JWT exp claim is used (corrected by the skew measured
// from the response's Date header), and failing that
// Config.DefaultExpiresIn (5 minutes unless set).
package oauth
