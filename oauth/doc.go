// Package oauth is an OAuth 2.0 token client (RFC 6749) for machine
// sessions: the client_credentials and refresh_token grants, with client
// authentication by client_secret_basic, client_secret_post,
// private_key_jwt (RFC 7523) or none, resource indicators (RFC 8707),
// authorization server metadata discovery (RFC 8414 and OpenID Connect
// Discovery), token revocation (RFC 7009) and DPoP (RFC 9449).
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
// Network operations return *Error, classified once by Kind:
//
//   - invalid_grant → KindDead (matches tokencache.ErrSessionDead);
//   - invalid_client, unauthorized_client, unsupported_grant_type,
//     invalid_scope, invalid_target, bare 401 → KindConfig (matches
//     ErrClientConfig and tokencache.ErrSessionDead: nothing but a
//     configuration change helps, so the cache must not retry quickly);
//   - 5xx, 429, network failures → KindTransient, with Retry-After;
//   - a refresh_token request written without a usable answer →
//     KindUnknownOutcome (matches tokencache.ErrOutcomeUnknown). The same
//     failure for client_credentials is KindTransient: it spends nothing;
//   - other 4xx (invalid_request, invalid_dpop_proof, a second nonce
//     challenge) → KindRejected, retried by the cache with backoff.
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
