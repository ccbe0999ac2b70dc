// Package injecttoken is a Caddy module that holds a logged-in session (a
// DPoP key and a refresh token), keeps a fresh access token cached, and
// injects it into upstream requests.
//
// The root package is Caddy glue. Each file wires one package into Caddy
// (its module registration, Caddyfile syntax, config and lifecycle) and
// holds no logic of that package's own:
//
//	module.go, caddyfile.go  the inject_token handler    ↔ tokencache/, prelude/
//	session.go               sessions shared by name     ↔ tokencache/
//	credential.go,
//	transport.go             the upstream exchange       ↔ dpop/, internal/wire
//	oauth2.go                the oauth2 backend          ↔ oauth/
//	sealing.go, app.go       sealed storage, seal_key    ↔ seal/
//	admin.go (admin_ops.go,
//	admin_errors.go)         the admin API               ↔ adminapi/
//	dashboard.go             the dashboard handler       ↔ adminapi/
//	command.go               caddy inject-token          ↔ cli/
//	metrics.go               caddy_inject_token_* series
//	origin.go                browser origin checks of the handler
//
// A new package gets its own glue file named after it; the logic stays in
// the package, where it is tested without Caddy.
package injecttoken
