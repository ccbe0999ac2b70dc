// Package peruser is the browser-facing side of per-user sessions: the
// gateway's own login pages, the cookie that names a logged-in user, login
// throttling, CSRF and same-origin checks, the identity headers the legacy
// app sees, and the user's own page (who am I, my devices, log out).
//
// It is the "backend for frontend" (token handler) pattern: every user's
// tokens and DPoP key stay in the gateway, in a run-time session of a
// tokencache.Runtime keyed by the user's id; the browser holds only an
// opaque random id, sealed, in an HttpOnly cookie. A login runs the
// backend's login with a fresh DPoP key, learns the user from it (the
// access token's sub, or the ID token's verified sub), makes the grant that
// user's session (Runtime.Adopt) and sets a new cookie.
//
// A user is known in one of two ways (Config.KeyFrom):
//
//   - the gateway logs the user in (the default): the cookie names a record
//     in storage that says which user it is;
//   - another handler already authenticated the user (basic_auth,
//     forward_auth, a JWT module): KeyFrom returns that user's id, and the
//     login page only links the user's upstream account to it.
//
// What is stored where (all under inject_token/ in Caddy's storage, sealed
// with the seal key):
//
//	inject_token/<template>/<hmac(key)>/…               the user's session (tokencache)
//	inject_token/<template>/peruser/cookies/<hmac(id)>   cookie id → user, claims, lifetimes
//	inject_token/<template>/peruser/flows/<hmac(state)>  an OAuth login in progress (10 min)
//
// Package peruser knows nothing of Caddy; the root package's per_user glue
// wires it into the inject_token handler.
package peruser
