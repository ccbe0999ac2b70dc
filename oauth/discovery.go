package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/tokenwarden/caddy-inject-token/internal/wire"
)

// metadata is the part of the authorization server metadata (RFC 8414
// §2, OpenID Connect Discovery §3) this client uses.
type metadata struct {
	issuer     string // "" when Endpoint turned out to be a token endpoint
	token      *url.URL
	revocation *url.URL // nil when not advertised

	// What the authorization code grant uses (nil / false / empty when not
	// advertised).
	authorization *url.URL
	par           *url.URL // pushed_authorization_request_endpoint (RFC 9126)
	requirePAR    bool
	jwks          *url.URL
	issParameter  bool     // authorization_response_iss_parameter_supported (RFC 9207)
	pkceMethods   []string // code_challenge_methods_supported
}

// Discover resolves the token and revocation endpoints.
//
// An Endpoint whose last path segment contains "token" (…/token,
// …/oauth2/v2.0/token, …/access_token) or that has a query is taken to be
// the token endpoint as it is, without any request: probing a token
// endpoint's neighbourhood costs round trips and can be fooled by servers
// that answer 200 to every path.
//
// Any other Endpoint is treated as an issuer: Discover fetches RFC 8414
// metadata (/.well-known/oauth-authorization-server, inserted before the
// issuer's path), then OpenID Connect Discovery metadata
// (/.well-known/openid-configuration, appended). The first document that
// is a JSON object with a token_endpoint wins, and its "issuer" must equal
// Endpoint (RFC 8414 §3.3, mix-up protection). When neither is such a
// document, Endpoint is used as the token endpoint, without revocation.
//
// A result is cached for the life of the Client; a failure (network, 5xx,
// an issuer mismatch) is not, so a later call tries again — Token and
// Revoke call Discover first. Errors are *Error with Op "discover".
func (c *Client) Discover(ctx context.Context) error {
	_, err := c.metadata(ctx)
	return err
}

// Endpoints returns the token endpoint and the revocation endpoint ("" when
// none), discovering them first if needed.
func (c *Client) Endpoints(ctx context.Context) (token, revocation string, err error) {
	m, err := c.metadata(ctx)
	if err != nil {
		return "", "", err
	}
	if m.revocation != nil {
		revocation = m.revocation.String()
	}
	return m.token.String(), revocation, nil
}

func (c *Client) metadata(ctx context.Context) (*metadata, error) {
	// Holding the lock across the fetch makes concurrent first calls share
	// one discovery instead of stampeding the server.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.meta != nil {
		return c.meta, nil
	}
	m, err := c.discover(ctx)
	if err != nil {
		return nil, err
	}
	c.meta = m
	return m, nil
}

// wellKnown returns the metadata URLs to try for the issuer u, in order:
// RFC 8414 puts the well-known segment before the issuer's path, OpenID
// Connect Discovery appends it.
func wellKnown(u *url.URL) []*url.URL {
	path := strings.TrimRight(u.EscapedPath(), "/")
	origin := u.Scheme + "://" + u.Host
	var out []*url.URL
	for _, s := range []string{
		origin + "/.well-known/oauth-authorization-server" + path,
		origin + path + "/.well-known/openid-configuration",
	} {
		if w, err := url.Parse(s); err == nil { // u parsed, so these do
			out = append(out, w)
		}
	}
	return out
}

func (c *Client) discover(ctx context.Context) (*metadata, error) {
	fail := func(kind Kind, status int, cause error) *Error {
		e := newError("discover", kind, status, cause)
		e.detail = wire.Scrub(cause.Error(), nil)
		return e
	}
	if looksLikeTokenEndpoint(c.endpoint) {
		return &metadata{token: c.endpoint}, nil
	}
	for _, u := range wellKnown(c.endpoint) {
		body, status, err := c.get(ctx, u)
		switch {
		case err != nil:
			return nil, fail(KindTransient, status, err)
		case status == http.StatusTooManyRequests || status >= 500:
			return nil, fail(KindTransient, status, fmt.Errorf("fetching %s", u.Redacted()))
		case status != http.StatusOK:
			continue // no such document: try the next, or fall back
		}
		m, err := c.parseMetadata(body)
		if errors.Is(err, errNotMetadata) {
			continue // a catch-all page, not metadata
		}
		if err != nil {
			return nil, fail(KindConfig, status, fmt.Errorf("%s: %w", u.Redacted(), err))
		}
		return m, nil
	}
	return &metadata{token: c.endpoint}, nil
}

// looksLikeTokenEndpoint reports whether u is evidently a token endpoint
// rather than an issuer (see Discover).
func looksLikeTokenEndpoint(u *url.URL) bool {
	path := strings.TrimRight(u.Path, "/")
	last := path[strings.LastIndex(path, "/")+1:]
	return u.RawQuery != "" || strings.Contains(strings.ToLower(last), "token")
}

// errNotMetadata marks a 200 document that is not authorization server
// metadata at all.
var errNotMetadata = errors.New("not authorization server metadata")

// get fetches a metadata document (bounded).
func (c *Client) get(ctx context.Context, u *url.URL) ([]byte, int, error) {
	req, err := (&wire.Request{Method: http.MethodGet, URL: u, UserAgent: c.cfg.UserAgent}).Build(ctx)
	if err != nil {
		return nil, 0, err
	}
	// Nothing is spent by a GET, so whether it was written does not matter.
	rep, _, err := wire.Do(c.hc, req, c.maxBody, c.nonces.Observe)
	if err != nil {
		return nil, 0, err
	}
	if rep.BodyErr != nil && rep.Status == http.StatusOK {
		return nil, rep.Status, rep.BodyErr
	}
	return rep.Body, rep.Status, nil
}

func (c *Client) parseMetadata(body []byte) (*metadata, error) {
	var doc struct {
		Issuer     string `json:"issuer"`
		Token      string `json:"token_endpoint"`
		Revocation string `json:"revocation_endpoint"`

		Authorization string   `json:"authorization_endpoint"`
		PAR           string   `json:"pushed_authorization_request_endpoint"`
		RequirePAR    bool     `json:"require_pushed_authorization_requests"`
		JWKS          string   `json:"jwks_uri"`
		ISSParameter  bool     `json:"authorization_response_iss_parameter_supported"`
		PKCEMethods   []string `json:"code_challenge_methods_supported"`
	}
	if err := wire.UnmarshalExact(body, &doc); err != nil || doc.Token == "" {
		return nil, errNotMetadata
	}
	if strings.TrimRight(doc.Issuer, "/") != strings.TrimRight(c.cfg.Endpoint, "/") {
		return nil, fmt.Errorf("metadata issuer %q does not match %q", wire.Scrub(doc.Issuer, nil), c.endpoint.Redacted())
	}
	m := &metadata{issuer: doc.Issuer, requirePAR: doc.RequirePAR, issParameter: doc.ISSParameter, pkceMethods: doc.PKCEMethods}
	var err error
	if m.token, err = wire.CheckURL(doc.Token, true); err != nil {
		return nil, fmt.Errorf("token_endpoint %w", err)
	}
	for _, o := range []struct {
		name, v string
		dst     **url.URL
	}{
		{"revocation_endpoint", doc.Revocation, &m.revocation},
		{"authorization_endpoint", doc.Authorization, &m.authorization},
		{"pushed_authorization_request_endpoint", doc.PAR, &m.par},
		{"jwks_uri", doc.JWKS, &m.jwks},
	} {
		if o.v == "" {
			continue
		}
		if *o.dst, err = wire.CheckURL(o.v, true); err != nil {
			return nil, fmt.Errorf("%s %w", o.name, err)
		}
	}
	if err := sameSecurity(c.endpoint, m.token, m.revocation, m.authorization, m.par, m.jwks); err != nil {
		return nil, err
	}
	return m, nil
}

// sameSecurity refuses metadata that would downgrade an https issuer to
// plain-http endpoints: the client secret and refresh tokens go there.
func sameSecurity(issuer *url.URL, endpoints ...*url.URL) error {
	if issuer.Scheme != "https" {
		return nil
	}
	for _, e := range endpoints {
		if e != nil && e.Scheme != "https" {
			return fmt.Errorf("https issuer advertises a plain-http endpoint %s", e.Redacted())
		}
	}
	return nil
}
