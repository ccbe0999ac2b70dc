package oauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Token runs the configured grant and returns the new grant: for
// GrantClientCredentials refreshToken is ignored; for GrantRefreshToken it
// is the token to spend (required). With Config.DPoP the request carries a
// proof signed with key (required then); the server's token_type decides
// how the token is presented ("DPoP" or "Bearer": a server that ignores
// DPoP answers Bearer, and that is what the Grant says).
//
// Expiry is measured from when the request was sent, so it is never later
// than the server meant. A response without expires_in falls back to the
// access token's JWT exp claim (corrected for the server's clock skew from
// its Date header), then to Config.DefaultExpiresIn.
//
// Errors are *Error; see Kind for what each class means.
func (c *Client) Token(ctx context.Context, key *dpop.Key, refreshToken string) (*tokencache.Grant, error) {
	spends := c.cfg.Grant == GrantRefreshToken
	g, _, err := c.request(ctx, key, spends, []string{refreshToken}, func(f url.Values, x *exchange, m *metadata) error {
		f.Set("grant_type", c.cfg.Grant)
		if c.cfg.Grant == GrantJWTBearer {
			// A fresh assertion per attempt, like a client assertion.
			a, err := c.grantAssertion(m)
			if err != nil {
				return err
			}
			x.secrets = append(x.secrets, a)
			f.Set("grant_type", jwtBearerGrantType)
			f.Set("assertion", a)
		}
		if spends {
			f.Set("refresh_token", refreshToken)
		}
		return nil
	})
	return g, err
}

// Exchange runs one token request of grantType carrying params, for grants
// this package does not run itself (the RFC 8693 token exchange of
// exchange/): it adds the configured scope, resources, extra parameters
// and client authentication (a fresh private_key_jwt assertion on every
// attempt, also after a DPoP nonce challenge) and, with Config.DPoP, a
// proof signed with key. Nothing is spent, and every value of params is
// kept out of errors. It also returns the response's issued_token_type
// ("" when absent).
func (c *Client) Exchange(ctx context.Context, key *dpop.Key, grantType string, params url.Values) (*tokencache.Grant, string, error) {
	var secrets []string
	for _, vs := range params {
		secrets = append(secrets, vs...)
	}
	g, tr, err := c.request(ctx, key, false, secrets, func(f url.Values, _ *exchange, _ *metadata) error {
		for k, vs := range params {
			f[k] = vs
		}
		f.Set("grant_type", grantType)
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return g, tr.IssuedTokenType, nil
}

// request posts one token request whose grant-specific parameters grant
// sets; the form is rebuilt for every attempt. It returns the grant and the
// whole parsed response.
func (c *Client) request(ctx context.Context, key *dpop.Key, spends bool, secrets []string, grant func(url.Values, *exchange, *metadata) error) (*tokencache.Grant, *tokenResponse, error) {
	x := &exchange{op: "token", spends: spends}
	x.secrets = c.secrets(secrets...)
	if x.spends && secrets[0] == "" {
		return nil, nil, x.fail(KindDead, 0, errors.New("refresh_token grant without a refresh token: log in with one"))
	}
	if c.cfg.DPoP {
		if key == nil {
			return nil, nil, x.fail(KindConfig, 0, errors.New("DPoP is enabled but no key was given"))
		}
		x.key = key
	}
	m, err := c.metadata(ctx)
	if err != nil {
		return nil, nil, err
	}
	x.target = m.token
	x.form = func() (url.Values, http.Header, error) {
		f := url.Values{}
		if err := grant(f, x, m); err != nil {
			return nil, nil, err
		}
		if len(c.cfg.Scopes) > 0 && f.Get("grant_type") != GrantAuthorizationCode {
			// The code carries the scope it was granted for (RFC 6749
			// §4.1.3 defines no scope here).
			f.Set("scope", strings.Join(c.cfg.Scopes, " "))
		}
		if !x.spends || !c.cfg.OmitResourceOnRefresh {
			f["resource"] = c.cfg.resources()
		}
		for k, v := range c.cfg.Params {
			f.Set(k, v)
		}
		h, err := c.authenticate(f, m, x)
		return f, h, err
	}
	resp, err := c.do(ctx, x)
	if err != nil {
		return nil, nil, err
	}
	return c.parseToken(x, resp)
}

// secrets lists what must never appear in an error built for a request
// carrying extra (refresh or access tokens).
func (c *Client) secrets(extra ...string) []string {
	return append([]string{c.cfg.ClientSecret}, extra...)
}

// authenticate adds client authentication to form (or returns the header
// that carries it), per Config.Auth. A private_key_jwt assertion is made
// anew on every call and added to x.secrets.
func (c *Client) authenticate(form url.Values, m *metadata, x *exchange) (http.Header, error) {
	switch c.cfg.Auth {
	case AuthBasic:
		// RFC 6749 §2.3.1: both parts are form-urlencoded before joining.
		cred := url.QueryEscape(c.cfg.ClientID) + ":" + url.QueryEscape(c.cfg.ClientSecret)
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(cred))}}, nil
	case AuthPost:
		form.Set("client_id", c.cfg.ClientID)
		form.Set("client_secret", c.cfg.ClientSecret)
	case AuthPrivateKeyJWT:
		jwt, err := c.signAssertion(m)
		if err != nil {
			return nil, err
		}
		x.secrets = append(x.secrets, jwt)
		form.Set("client_id", c.cfg.ClientID)
		form.Set("client_assertion_type", assertionType)
		form.Set("client_assertion", jwt)
	case AuthNone, AuthTLSClient, AuthSelfSignedTLSClient:
		// RFC 8705 §2: the TLS handshake authenticated the client.
		form.Set("client_id", c.cfg.ClientID)
	}
	return nil, nil
}

// signAssertion signs a fresh assertion (new jti) about the client:
// iss = sub = ClientID, aud per Config.AssertionAudience.
func (c *Client) signAssertion(m *metadata) (string, error) {
	aud := c.cfg.AssertionAudience
	switch aud {
	case "":
		aud = m.token.String()
	case "issuer":
		if m.issuer == "" {
			return "", errors.New(`AssertionAudience "issuer" needs an Endpoint with discoverable metadata`)
		}
		aud = m.issuer
	}
	return c.assert.sign(c.cfg.ClientID, aud, c.serverNow())
}

// grantAssertion is the jwt-bearer grant's assertion: the file's current
// content, or a freshly signed one.
func (c *Client) grantAssertion(m *metadata) (string, error) {
	if c.grantJWT != nil {
		return c.grantJWT.Read()
	}
	return c.signAssertion(m)
}

// tokenResponse is RFC 6749 §5.1, plus refresh_expires_in, which Keycloak
// and others send for the refresh token's lifetime.
type tokenResponse struct {
	AccessToken      string          `json:"access_token"`
	TokenType        string          `json:"token_type"`
	ExpiresIn        json.RawMessage `json:"expires_in"`
	RefreshToken     string          `json:"refresh_token"`
	RefreshExpiresIn json.RawMessage `json:"refresh_expires_in"`
	IssuedTokenType  string          `json:"issued_token_type"`
	IDToken          string          `json:"id_token"`
}

// parseToken turns a 2xx token response into a Grant. A response that
// cannot be used is, for a refresh_token grant, an unknown outcome: the
// server accepted the request and may have rotated the refresh token.
func (c *Client) parseToken(x *exchange, resp *response) (*tokencache.Grant, *tokenResponse, error) {
	bad := func(what string) error {
		return x.fail(x.lost(resp.Status), resp.Status, errors.New("malformed token response: "+what))
	}
	if resp.BodyErr != nil {
		return nil, nil, x.fail(x.lost(resp.Status), resp.Status, resp.BodyErr)
	}
	var tr tokenResponse
	if err := wire.UnmarshalExact(resp.Body, &tr); err != nil {
		return nil, nil, bad("body is not a JSON object")
	}
	x.secrets = append(x.secrets, tr.AccessToken, tr.RefreshToken, tr.IDToken)
	if tr.AccessToken == "" {
		return nil, nil, bad("no access_token")
	}
	g := &tokencache.Grant{AccessToken: tr.AccessToken, RefreshToken: tr.RefreshToken}
	switch strings.ToLower(tr.TokenType) {
	case "dpop":
		g.TokenType = "DPoP"
	case "bearer":
		g.TokenType = "Bearer"
	default:
		// An unknown or missing type cannot be presented correctly: a
		// DPoP-bound token sent as Bearer is rejected, and vice versa.
		return nil, nil, bad("token_type " + wire.Scrub(tr.TokenType, x.secrets) + " is neither Bearer nor DPoP")
	}
	if d, ok := seconds(tr.ExpiresIn); ok {
		g.Expiry = resp.SentAt.Add(d)
	} else if exp, ok := wire.JWTExp(tr.AccessToken); ok {
		g.Expiry = exp.Add(resp.skew)
	} else {
		g.Expiry = resp.SentAt.Add(c.cfg.DefaultExpiresIn)
	}
	if d, ok := seconds(tr.RefreshExpiresIn); ok && tr.RefreshToken != "" {
		g.RefreshExpiry = resp.SentAt.Add(d)
	}
	return g, &tr, nil
}

// seconds reads a positive lifetime in seconds, as a JSON number or (as
// some servers send it) a numeric string. Zero, negative, absurd (over ten
// years) and non-numeric values are not ok.
func seconds(raw json.RawMessage) (time.Duration, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		raw = json.RawMessage(s)
	}
	var f float64
	if json.Unmarshal(raw, &f) != nil || !(f > 0 && f < 10*365*24*3600) {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}
