package oauth

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Defaults applied by New for zero Config fields.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = 1 << 20
	// DefaultExpiresIn is assumed when a token response has no expires_in
	// and the access token is not a JWT with an exp claim. RFC 6749 makes
	// expires_in only RECOMMENDED; a short guess costs an extra token
	// request now and then, while a long one would keep presenting a token
	// the resource server already rejects.
	DefaultExpiresIn = 5 * time.Minute
	DefaultUserAgent = "caddy-inject-token-oauth/1"
)

// Client authentication methods (RFC 6749 §2.3, RFC 7523 §2.2).
const (
	AuthBasic         = "basic"           // client_secret_basic
	AuthPost          = "post"            // client_secret_post
	AuthPrivateKeyJWT = "private_key_jwt" // RFC 7523 client assertion
	AuthNone          = "none"            // public client: client_id only
	// AuthTLSClient and AuthSelfSignedTLSClient are RFC 8705 §2 mutual
	// TLS: the client certificate authenticates, the form carries only
	// client_id. They differ only in how the server checks the certificate
	// (a PKI subject, or a registered self-signed certificate).
	AuthTLSClient           = "tls_client_auth"
	AuthSelfSignedTLSClient = "self_signed_tls_client_auth"
)

// Grant types this client can request.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
	// GrantJWTBearer is the RFC 7523 §2.1 JWT bearer authorization grant:
	// the assertion from Config.AssertionFile (a Kubernetes projected
	// service-account token, a SPIFFE JWT-SVID), or signed with the client
	// key.
	GrantJWTBearer = "jwt_bearer"
	// GrantAuthorizationCode is the authorization code grant with PKCE
	// (RFC 6749 §4.1, RFC 7636): run by an AuthCode (NewAuthCode), not by
	// a Client.
	GrantAuthorizationCode = "authorization_code"
)

// jwtBearerGrantType is GrantJWTBearer's grant_type on the wire.
const jwtBearerGrantType = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Config configures a Client.
type Config struct {
	// Settings are what an operator configures (the oauth2 block of the
	// inject_token handler is the same type).
	Settings
	// ClientKey signs private_key_jwt client assertions (ECDSA P-256/384,
	// Ed25519 or RSA ≥ 2048 bits). ClientKeyPEM is the same as a PEM block
	// (PKCS#8, SEC 1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY").
	ClientKey    crypto.Signer `json:"-"`
	ClientKeyPEM []byte        `json:"client_key_pem,omitempty"`
	// ClientKeyID is the "kid" put in assertion headers, so a server with
	// several registered keys knows which one to use.
	ClientKeyID string `json:"client_key_id,omitempty"`
	// AssertionAudience is the assertion's "aud": "" means the token
	// endpoint URL (what most servers accept), "issuer" the discovered
	// issuer identifier (what draft-ietf-oauth-rfc7523bis asks for), any
	// other value is used as is.
	AssertionAudience string `json:"assertion_audience,omitempty"`
	// ClientCertPEM and ClientCertKeyPEM are a TLS client certificate
	// (PEM, leaf first) and its private key, presented on every request
	// to the authorization server: the credential of AuthTLSClient and
	// AuthSelfSignedTLSClient, and what an RFC 8705 server binds access
	// tokens to (cnf x5t#S256; see Client.BoundCertificate).
	// ClientCertificate is the same, already loaded.
	ClientCertPEM     []byte           `json:"client_cert_pem,omitempty"`
	ClientCertKeyPEM  []byte           `json:"client_cert_key_pem,omitempty"`
	ClientCertificate *tls.Certificate `json:"-"`
	// RootCAPEM, when set, holds the only certificates (PEM) trusted for
	// the authorization server's TLS: for servers with a private CA.
	RootCAPEM []byte `json:"root_ca_pem,omitempty"`
	// DPoP sends a DPoP proof (RFC 9449) with every token and revocation
	// request, signed with the key Token, Refresh or Revoke is given.
	DPoP bool `json:"dpop,omitempty"`
	// DefaultExpiresIn replaces DefaultExpiresIn when > 0.
	DefaultExpiresIn time.Duration `json:"default_expires_in,omitempty"`
	// HTTPClient sends the requests. nil means a client with a 10 s overall
	// timeout. Whatever client is given, a copy is used that never follows
	// a redirect of a POST: a redirected token request would either turn
	// into a GET or carry its credentials to another URL.
	HTTPClient *http.Client `json:"-"`
	// Nonces remembers DPoP nonces per origin; share one store between the
	// clients of a process. nil means a store owned by this client.
	Nonces *dpop.NonceStore `json:"-"`
	// MaxResponseBytes bounds every response body read; a longer body is
	// an error. ≤ 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64 `json:"max_response_bytes,omitempty"`
	// UserAgent is sent on every request; "" means DefaultUserAgent.
	UserAgent string `json:"user_agent,omitempty"`
}

// Client requests tokens from one OAuth 2.0 authorization server for one
// client registration. It is safe for concurrent use and holds no session
// state: refresh tokens and DPoP keys are passed in by the caller (the
// token cache), nonces live in the shared NonceStore.
type Client struct {
	cfg       Config // validated copy; never printed (it holds the secret)
	endpoint  *url.URL
	hc        *http.Client
	nonces    *dpop.NonceStore
	maxBody   int64
	assert    *assertionSigner // nil unless AuthPrivateKeyJWT or a signed jwt-bearer grant
	grantJWT  *FileSource      // the jwt-bearer assertion file, or nil
	certThumb string           // x5t#S256 of the client certificate, or ""
	skew      atomic.Int64     // localNow − serverDate in ns; 0 under 1 s

	mu   sync.Mutex
	meta *metadata // nil until Discover succeeded
}

// resources are the resource indicators to send, Resource first.
func (cfg *Config) resources() []string {
	if cfg.Resource == "" {
		return cfg.Resources
	}
	return append([]string{cfg.Resource}, cfg.Resources...)
}

// reservedParams are set by the client itself; Config.Params may not
// override them (a stray "client_id" or "grant_type" would make requests
// ambiguous or defeat client authentication).
var reservedParams = map[string]bool{
	"grant_type": true, "client_id": true, "client_secret": true,
	"client_assertion": true, "client_assertion_type": true,
	"refresh_token": true, "scope": true, "resource": true, "assertion": true,
}

// New validates cfg and returns a Client. It does no network I/O.
func New(cfg Config) (*Client, error) {
	u, err := wire.CheckURL(cfg.Endpoint, true)
	if err != nil {
		return nil, fmt.Errorf("oauth: Endpoint: %w", err)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oauth: ClientID is required")
	}
	switch cfg.Grant {
	case "":
		cfg.Grant = GrantClientCredentials
	case GrantClientCredentials, GrantRefreshToken, GrantJWTBearer:
	case GrantAuthorizationCode:
		return nil, errors.New("oauth: Grant authorization_code is run by NewAuthCode: a user logs in through the server's pages")
	default:
		return nil, fmt.Errorf("oauth: unsupported Grant %q (want %s, %s or %s)", cfg.Grant, GrantClientCredentials, GrantRefreshToken, GrantJWTBearer)
	}
	if cfg.RedirectURI != "" || len(cfg.AuthorizeParams) > 0 {
		return nil, errors.New("oauth: RedirectURI and AuthorizeParams are for Grant authorization_code")
	}
	if cfg.AssertionFile != "" && cfg.Grant != GrantJWTBearer {
		return nil, errors.New("oauth: AssertionFile is for Grant jwt_bearer")
	}
	for _, r := range cfg.resources() {
		if u, err := url.Parse(r); err != nil || !u.IsAbs() || u.Fragment != "" || u.RawFragment != "" {
			return nil, errors.New("oauth: each resource must be an absolute URI without a fragment (RFC 8707 §2)")
		}
	}
	for k := range cfg.Params {
		if reservedParams[k] {
			return nil, fmt.Errorf("oauth: Params may not set %q", k)
		}
	}
	hasKey := cfg.ClientKey != nil || len(cfg.ClientKeyPEM) > 0
	hc, thumb, err := mtlsClient(&cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Auth == "" {
		switch {
		case cfg.ClientSecret != "":
			cfg.Auth = AuthBasic
		case hasKey:
			cfg.Auth = AuthPrivateKeyJWT
		case thumb != "":
			cfg.Auth = AuthTLSClient
		default:
			cfg.Auth = AuthNone
		}
	}
	c := &Client{endpoint: u, hc: wire.NoPostRedirects(hc, DefaultTimeout), nonces: cfg.Nonces, maxBody: cfg.MaxResponseBytes, certThumb: thumb}
	switch cfg.Auth {
	case AuthTLSClient, AuthSelfSignedTLSClient:
		if thumb == "" {
			return nil, fmt.Errorf("oauth: Auth %q needs a client certificate (ClientCertPEM and ClientCertKeyPEM)", cfg.Auth)
		}
		if cfg.ClientSecret != "" || hasKey && cfg.Grant != GrantJWTBearer {
			return nil, fmt.Errorf("oauth: Auth %q authenticates with the certificate: no ClientSecret or client key", cfg.Auth)
		}
	case AuthBasic, AuthPost:
		if cfg.ClientSecret == "" {
			return nil, fmt.Errorf("oauth: Auth %q needs ClientSecret", cfg.Auth)
		}
	case AuthPrivateKeyJWT:
		if c.assert, err = newAssertionSigner(cfg); err != nil {
			return nil, err
		}
	case AuthNone:
		if cfg.ClientSecret != "" || hasKey && cfg.Grant != GrantJWTBearer {
			return nil, errors.New("oauth: Auth \"none\" must not be given a ClientSecret or client key")
		}
	default:
		return nil, fmt.Errorf("oauth: unsupported Auth %q (want basic, post, private_key_jwt, tls_client_auth, self_signed_tls_client_auth or none)", cfg.Auth)
	}
	if c.nonces == nil {
		c.nonces = new(dpop.NonceStore)
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	if cfg.DefaultExpiresIn <= 0 {
		cfg.DefaultExpiresIn = DefaultExpiresIn
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	cfg.Scopes = append([]string(nil), cfg.Scopes...)
	params := make(map[string]string, len(cfg.Params))
	for k, v := range cfg.Params {
		params[k] = v
	}
	cfg.Params = params
	if cfg.Grant == GrantJWTBearer {
		switch {
		case cfg.AssertionFile != "":
			c.grantJWT = &FileSource{Path: cfg.AssertionFile, Name: "assertion file"}
		case !hasKey:
			return nil, errors.New("oauth: Grant jwt_bearer needs AssertionFile, or a client key to sign the assertion with")
		case c.assert == nil:
			if c.assert, err = newAssertionSigner(cfg); err != nil {
				return nil, err
			}
		}
	}
	c.cfg = cfg
	return c, nil
}

// String identifies the client without its credentials.
func (c *Client) String() string {
	return fmt.Sprintf("oauth.Client(%s, client_id=%s, auth=%s, grant=%s)", c.endpoint.Redacted(), c.cfg.ClientID, c.cfg.Auth, c.cfg.Grant)
}

// GoString is String, so %#v cannot print the secret.
func (c *Client) GoString() string { return c.String() }

// exchange is one POST to the token or revocation endpoint.
type exchange struct {
	op     string
	target *url.URL
	form   func() (url.Values, http.Header, error) // rebuilt per attempt: fresh assertion jti
	key    *dpop.Key                               // non-nil: attach a proof
	// spends is true when the request presents a one-time credential (a
	// refresh token): a lost answer then means the credential may be gone.
	spends  bool
	secrets []string
}

// response is a received response with its body read (bounded); SentAt
// is when the request was started, on the local clock.
type response struct {
	*wire.Reply
	skew time.Duration // localNow − serverDate; 0 when under 1 s or unknown
}

// fail builds an Error for x; cause may be nil.
func (x *exchange) fail(kind Kind, status int, cause error) *Error {
	e := newError(x.op, kind, status, cause)
	if cause != nil {
		e.detail = wire.Scrub(cause.Error(), x.secrets)
	}
	return e
}

// lost is the Kind for a request that was written but got no usable
// answer (status: the 2xx whose body failed, or 0).
func (x *exchange) lost(status int) Kind {
	return x.kind(tokencache.Attempt{Written: true, Status: status}, 0)
}

// do sends x, retrying exactly once when the server answers
// use_dpop_nonce with a new DPoP-Nonce (RFC 9449 §8), and exactly once
// when it answers invalid_dpop_proof (the answer's Date has just taught
// the server's clock, so the new proof's iat is on it; the client
// assertion is made anew too); a second challenge is KindTransient (the
// cache retries later with a fresh proof). It returns the 2xx response or
// an *Error. (prelude's do looks alike but reads another error envelope.)
func (c *Client) do(ctx context.Context, x *exchange) (*response, error) {
	var nonceRetried, proofRetried bool
	for {
		resp, err := c.send(ctx, x)
		if err != nil {
			return nil, err
		}
		if resp.Status >= 200 && resp.Status < 300 {
			return resp, nil
		}
		var code, desc string
		if resp.BodyErr == nil {
			code, desc = errorBody(resp.Body)
		}
		if x.key != nil {
			switch {
			case code == wire.CodeUseDPoPNonce && !nonceRetried && resp.Header.Get("DPoP-Nonce") != "":
				nonceRetried = true
				continue // send stored the nonce; the next proof carries it
			case code == wire.CodeInvalidDPoPProof && !proofRetried:
				// Most often an iat off the server's clock: the server did
				// not act, and the next proof is dated on the skew the
				// answer's Date taught.
				proofRetried = true
				continue
			}
		}
		e := x.fail(x.classify(resp.Status, code, wire.HasRetryAfter(resp.Header)), resp.Status, nil)
		e.Code = wire.Scrub(code, x.secrets)
		e.Message = wire.Scrub(desc, x.secrets)
		if resp.Status >= 300 && resp.Status < 400 {
			e.detail = "unexpected redirect (not followed for a POST)"
		}
		e.RetryDelay = resp.RetryHint(time.Now(), retryAfterCap)
		return nil, e
	}
}

// send performs one HTTP exchange. Transport errors are classified by
// whether the request was fully written (see wire.Do): before that the
// server cannot have acted on it.
func (c *Client) send(ctx context.Context, x *exchange) (*response, error) {
	form, header, err := x.form()
	if err != nil {
		return nil, x.fail(KindConfig, 0, err)
	}
	// With x.key, a fresh proof (new jti) per attempt, over the exact URL
	// posted to, with the newest nonce for its origin and iat on the
	// server's clock.
	req, err := (&wire.Request{
		Method: http.MethodPost, URL: x.target,
		Body: []byte(form.Encode()), ContentType: "application/x-www-form-urlencoded",
		Header: header, UserAgent: c.cfg.UserAgent,
		Key: x.key, Nonces: c.nonces, ProofTime: c.serverNow(),
	}).Build(ctx)
	if err != nil {
		return nil, x.fail(KindConfig, 0, err)
	}
	r, written, err := wire.Do(c.hc, req, c.maxBody, c.nonces.Observe)
	if err != nil {
		return nil, x.fail(x.kind(tokencache.Attempt{Written: written}, 0), 0, err)
	}
	return &response{Reply: r, skew: c.observeDate(r)}, nil
}

// Skew is how far the local clock is ahead of the token server's, as its
// latest Date header showed (0 when under a second or unknown).
func (c *Client) Skew() time.Duration { return time.Duration(c.skew.Load()) }

// observeDate records the server's clock offset from its Date header and
// returns it (0 when absent or under a second: Date has one-second
// resolution, so smaller differences are rounding).
//
// This is deliberately not prelude's clockSkew, which centres the estimate
// in Date's one-second window: the two differ by about half a second (and
// so near the 1 s cut-off), and sharing one would move this client's proof
// iat and JWT-based expiries. Unifying them is a behaviour change, not a
// refactoring.
func (c *Client) observeDate(r *wire.Reply) time.Duration {
	if r.Date.IsZero() {
		return 0
	}
	skew := r.ReceivedAt.Sub(r.Date)
	if skew.Abs() < time.Second {
		skew = 0
	}
	c.skew.Store(int64(skew))
	return skew
}

// serverNow is the local time corrected to the server's clock, for proof
// and assertion iat.
func (c *Client) serverNow() time.Time {
	return time.Now().Add(-time.Duration(c.skew.Load()))
}
