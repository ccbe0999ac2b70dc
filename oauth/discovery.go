package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// metadata is the part of the authorization server metadata (RFC 8414
// §2, OpenID Connect Discovery §3) this client uses.
type metadata struct {
	issuer     string // "" when Endpoint turned out to be a token endpoint
	token      *url.URL
	revocation *url.URL // nil when not advertised
}

// Discover resolves the token and revocation endpoints. When Endpoint is an
// issuer it fetches the issuer's metadata: RFC 8414
// (/.well-known/oauth-authorization-server, inserted before the issuer's
// path) first, then OpenID Connect Discovery (/.well-known/openid-configuration
// appended). The metadata's "issuer" must equal Endpoint (RFC 8414 §3.3,
// mix-up protection). When both documents are absent (404 or another 4xx),
// Endpoint is taken to be the token endpoint itself, without revocation.
//
// A success is cached for the life of the Client; a failure is not, so a
// later call (Token and Revoke call Discover first) tries again. Errors
// are *Error with Op "discover".
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
		return &Error{Op: "discover", Status: status, Kind: kind, err: cause, detail: sanitize(cause.Error(), nil)}
	}
	if c.endpoint.RawQuery != "" {
		// An issuer identifier has no query (RFC 8414 §2): this is a token
		// endpoint.
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
		if err != nil {
			return nil, fail(KindConfig, status, fmt.Errorf("%s: %w", u.Redacted(), err))
		}
		return m, nil
	}
	return &metadata{token: c.endpoint}, nil
}

// get fetches a metadata document (bounded).
func (c *Client) get(ctx context.Context, u *url.URL) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	c.nonces.Observe(resp)
	body, err := readLimited(resp.Body, c.maxBody)
	if err != nil && resp.StatusCode == http.StatusOK {
		return nil, resp.StatusCode, err
	}
	return body, resp.StatusCode, nil
}

func (c *Client) parseMetadata(body []byte) (*metadata, error) {
	var doc struct {
		Issuer     string `json:"issuer"`
		Token      string `json:"token_endpoint"`
		Revocation string `json:"revocation_endpoint"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, errors.New("metadata is not a JSON object")
	}
	if strings.TrimRight(doc.Issuer, "/") != strings.TrimRight(c.cfg.Endpoint, "/") {
		return nil, fmt.Errorf("metadata issuer %q does not match %q", sanitize(doc.Issuer, nil), c.endpoint.Redacted())
	}
	m := &metadata{issuer: doc.Issuer}
	var err error
	if m.token, err = checkURL(doc.Token); err != nil {
		return nil, fmt.Errorf("token_endpoint %w", err)
	}
	if doc.Revocation != "" {
		if m.revocation, err = checkURL(doc.Revocation); err != nil {
			return nil, fmt.Errorf("revocation_endpoint %w", err)
		}
	}
	if err := sameSecurity(c.endpoint, m.token, m.revocation); err != nil {
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
