package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

// DefaultAddress is the admin address used when neither --address nor the
// CADDY_ADMIN environment variable names one (Caddy's own default).
const DefaultAddress = "localhost:2019"

// ResolveAddress picks the admin address the way Caddy does: the explicit
// value, else $CADDY_ADMIN, else localhost:2019.
func ResolveAddress(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("CADDY_ADMIN"); env != "" {
		return env
	}
	return DefaultAddress
}

// The admin API's wire types, shared with the server.
type (
	Status       = adminapi.Status
	Device       = adminapi.Device
	DeviceList   = adminapi.DeviceList
	RevokeResult = adminapi.RevokeResult
)

// APIError is a non-2xx answer from the admin API.
type APIError struct {
	// HTTPStatus is the response status code.
	HTTPStatus int
	// Message is the server's "error" field (or the body, if not JSON).
	Message string
	// Code is the server's machine-readable "code" field, if any.
	Code string
	// RetryAfter is the Retry-After header, if any.
	RetryAfter string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.HTTPStatus)
	}
	var extra []string
	if e.Code != "" {
		extra = append(extra, "code "+e.Code)
	}
	extra = append(extra, "HTTP "+strconv.Itoa(e.HTTPStatus))
	if e.RetryAfter != "" {
		extra = append(extra, "retry after "+e.RetryAfter+"s")
	}
	return msg + " (" + strings.Join(extra, ", ") + ")"
}

// Client talks to the inject_token routes of a Caddy admin endpoint. The
// zero value is not usable; use NewClient.
type Client struct {
	address string
	origin  string // scheme://host used in request URLs and the Origin header
	setOrig bool   // send Origin (TCP only, as `caddy reload` does)
	http    *http.Client
}

// NewClient returns a client for the admin endpoint at address, in Caddy's
// network-address form: "localhost:2019", "127.0.0.1:2019",
// "unix//run/caddy-admin.sock", or a URL such as "http://localhost:2019".
func NewClient(address string) (*Client, error) {
	addr := strings.TrimSpace(address)
	if addr == "" {
		addr = DefaultAddress
	}
	if u, err := url.Parse(addr); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
		if u.Scheme == "https" {
			return nil, fmt.Errorf("admin address %s: the local admin endpoint speaks plain HTTP", address)
		}
		addr = u.Host
	}
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil {
		return nil, fmt.Errorf("invalid admin address %q: %v", address, err)
	}
	if na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %q: a port range is not an address", address)
	}
	c := &Client{address: addr}
	dialNet, dialAddr := na.Network, na.JoinHostPort(0)
	switch {
	case na.IsUnixNetwork():
		// Strip optional socket permission bits ("unix//path|0200").
		path, _, _ := strings.Cut(na.Host, "|")
		dialAddr = path
		c.origin = "http://127.0.0.1"
	case na.IsFdNetwork():
		return nil, fmt.Errorf("admin address %q: a file descriptor cannot be dialled from another process", address)
	default:
		c.origin, c.setOrig = "http://"+dialAddr, true
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	c.http = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, dialNet, dialAddr)
			},
		},
		// Logins make network calls to the token server; give them room
		// but never hang forever.
		Timeout: 2 * time.Minute,
	}
	return c, nil
}

// Address is the admin address the client dials.
func (c *Client) Address() string { return c.address }

// Do sends one request to the admin API and returns the raw response body
// of a 2xx answer. A non-2xx answer becomes an *APIError. body, if not nil,
// is sent as JSON.
func (c *Client) Do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.origin+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.setOrig {
		req.Header.Set("Origin", c.origin)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot reach the Caddy admin API at %s: %w (is Caddy running? set --address or CADDY_ADMIN)", c.address, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("reading admin API response: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeAPIError(resp, data)
	}
	return data, nil
}

func decodeAPIError(resp *http.Response, data []byte) *APIError {
	e := &APIError{HTTPStatus: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"),
		Code: resp.Header.Get(adminapi.CodeHeader)}
	var body adminapi.Error
	if json.Unmarshal(data, &body) == nil && (body.Error != "" || body.Code != "") {
		e.Message = body.Error
		if body.Code != "" {
			e.Code = body.Code
		}
		return e
	}
	e.Message = strings.TrimSpace(string(data))
	if len(e.Message) > 300 {
		e.Message = e.Message[:300] + "…"
	}
	if e.HTTPStatus == http.StatusNotFound && e.Message == "" {
		e.Message = "not found (is the inject_token module compiled into this Caddy?)"
	}
	return e
}

func (c *Client) doJSON(ctx context.Context, method, path string, body, out any) ([]byte, error) {
	data, err := c.Do(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return data, fmt.Errorf("decoding admin API response from %s: %w", path, err)
		}
	}
	return data, nil
}

func sessionPath(name, suffix string) string { return adminapi.SessionPath(name, suffix) }

// Sessions returns every configured session.
func (c *Client) Sessions(ctx context.Context) ([]Status, []byte, error) {
	var out adminapi.SessionList
	raw, err := c.doJSON(ctx, http.MethodGet, adminapi.SessionsPath, nil, &out)
	return out.Sessions, raw, err
}

// Status returns one session.
func (c *Client) Status(ctx context.Context, session string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodGet, sessionPath(session, ""), nil, &st)
	return &st, raw, err
}

// Refresh forces a refresh (or adopts one another instance just made).
func (c *Client) Refresh(ctx context.Context, session string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteRefresh), nil, &st)
	return &st, raw, err
}

// Logout ends the session at the server and locally; it stays logged out
// (no automatic login) until the next explicit login.
func (c *Client) Logout(ctx context.Context, session string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteLogout), nil, &st)
	return &st, raw, err
}

// Login logs the session in with the credentials in its configuration
// (oauth2 client_credentials, or a Prelude login password) and turns its
// automatic login back on.
func (c *Client) Login(ctx context.Context, session string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteLogin), nil, &st)
	return &st, raw, err
}

// StartOTP asks the server to send a one-time code to an email address or
// a phone number (exactly one must be set).
func (c *Client) StartOTP(ctx context.Context, session, email, phone string) ([]byte, error) {
	return c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteOTPStart),
		adminapi.OTPStart{EmailAddress: email, PhoneNumber: phone}, nil)
}

// CheckOTP completes an OTP login with the received code.
func (c *Client) CheckOTP(ctx context.Context, session, code string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteOTPCheck), adminapi.OTPCheck{Code: code}, &st)
	return &st, raw, err
}

// LoginPassword logs in with an email address and password.
func (c *Client) LoginPassword(ctx context.Context, session, email, password string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RoutePassword),
		adminapi.PasswordLogin{Email: email, Password: password}, &st)
	return &st, raw, err
}

// LoginRefreshToken starts an oauth2 refresh_token session from a refresh
// token obtained elsewhere.
func (c *Client) LoginRefreshToken(ctx context.Context, session, refreshToken string) (*Status, []byte, error) {
	var st Status
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteRefreshToken),
		adminapi.RefreshTokenLogin{RefreshToken: refreshToken}, &st)
	return &st, raw, err
}

// List returns the logged-in user's server-side sessions (devices).
func (c *Client) List(ctx context.Context, session string, limit, offset int) (*DeviceList, []byte, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	path := sessionPath(session, adminapi.RouteList)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out DeviceList
	raw, err := c.doJSON(ctx, http.MethodGet, path, nil, &out)
	return &out, raw, err
}

// Revoke ends server-side sessions: target is all, others, mine, or
// session (then sessionID names it).
func (c *Client) Revoke(ctx context.Context, session, target, sessionID string) (*RevokeResult, []byte, error) {
	var out RevokeResult
	raw, err := c.doJSON(ctx, http.MethodPost, sessionPath(session, adminapi.RouteRevoke),
		adminapi.Revoke{Target: target, SessionID: sessionID}, &out)
	return &out, raw, err
}
