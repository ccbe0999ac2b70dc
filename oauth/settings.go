package oauth

// Settings are a client's settings as an operator writes them: the
// inject_token handler's oauth2 block (Caddyfile and JSON) is this type
// plus the credentials it resolves from files, so each option is defined
// and documented once. Config adds what only a program can pass.
type Settings struct {
	// Endpoint is the token endpoint URL, or the issuer URL whose metadata
	// (RFC 8414 or OpenID Connect discovery) names the token and
	// revocation endpoints. A URL whose last path segment contains "token"
	// is used as the token endpoint without any discovery; see
	// Client.Discover for the rest. Required.
	Endpoint string `json:"endpoint"`

	// ClientID identifies this client at the server. Required.
	ClientID string `json:"client_id"`

	// ClientSecret authenticates the client (auth basic or post). In a
	// Caddy config use a placeholder such as {env.CLIENT_SECRET} or
	// {file./run/secrets/cs}: it is resolved at load and kept only in
	// memory.
	ClientSecret string `json:"client_secret,omitempty"`

	// Auth is how the client authenticates: "basic" (AuthBasic, the
	// default with a secret), "post", "private_key_jwt" (the default with
	// a client key), "tls_client_auth" (the default with only a client
	// certificate), "self_signed_tls_client_auth" (RFC 8705 mutual TLS) or
	// "none".
	Auth string `json:"auth,omitempty"`

	// Grant is "client_credentials" (GrantClientCredentials, the default:
	// tokens are fetched and renewed unattended), "jwt_bearer" (likewise,
	// presenting an RFC 7523 assertion; see AssertionFile) or
	// "refresh_token" (an initial refresh token is handed in through the
	// admin API or `caddy inject-token login refresh-token`, and rotated
	// tokens are kept) or "authorization_code" (GrantAuthorizationCode:
	// each user logs in through the server's pages, see NewAuthCode; only
	// per-user mode runs it).
	Grant string `json:"grant,omitempty"`

	// RedirectURI is the gateway's callback URL as registered at the
	// server, for grant authorization_code (required there, refused
	// elsewhere).
	RedirectURI string `json:"redirect_uri,omitempty"`

	// AuthorizeParams are extra authorization request parameters for
	// grant authorization_code (prompt, login_hint, acr_values,
	// ui_locales, max_age, ...). They cannot replace the parameters the
	// flow sets itself (state, nonce, PKCE, redirect_uri, ...).
	AuthorizeParams map[string]string `json:"authorize_params,omitempty"`

	// AssertionFile holds the assertion of grant "jwt_bearer": a
	// Kubernetes projected service-account token or a SPIFFE JWT-SVID. It
	// is read again whenever its modification time or size changes (a
	// projected token is rotated in place). Without it the assertion is
	// signed with the client key: iss = sub = ClientID, aud as for client
	// assertions, a fresh jti on every request.
	AssertionFile string `json:"assertion_file,omitempty"`

	// Scopes are requested with every token request (space-separated as
	// "scope").
	Scopes []string `json:"scopes,omitempty"`

	// Resource is the RFC 8707 resource indicator (the API's URI), sent
	// when non-empty.
	Resource string `json:"resource,omitempty"`

	// Resources are more RFC 8707 resource indicators, each sent as its
	// own "resource" parameter after Resource. Each is an absolute URI
	// without a fragment.
	Resources []string `json:"resources,omitempty"`

	// OmitResourceOnRefresh leaves the resource parameters off
	// refresh_token requests (Entra ID rejects them on some flows); the
	// refreshed token keeps its audience.
	OmitResourceOnRefresh bool `json:"omit_resource_on_refresh,omitempty"`

	// Params are extra token request parameters, e.g. audience. They
	// cannot replace the parameters the client sets itself.
	Params map[string]string `json:"params,omitempty"`
}
