// Package interop runs real, independent implementations next to this
// project's code so tests can check interoperability rather than agreement
// with our own fakes.
//
// StartOIDCProvider starts panva's oidc-provider (an OpenID-certified
// OAuth 2.0 / OIDC server for Node.js, pinned in oidc-provider/package.json)
// on a loopback port with client_credentials, refresh_token, DPoP,
// resource indicators with JWT access tokens, revocation and introspection
// enabled. It needs node on PATH; see StartOIDCProvider for how a missing
// node is reported and how node_modules gets installed.
//
// ResourceServer is a resource server that verifies DPoP-bound JWT access
// tokens and proofs the way RFC 9449 §7 asks, and counts every rejection by
// reason, so a test can assert not just that a request failed but why.
//
// Everything listens on 127.0.0.1 only.
package interop
