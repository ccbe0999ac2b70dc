package interop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"time"
)

// User is how a browser's user answers the provider's login and consent
// prompts in Provider.Authorize.
type User struct {
	// Login and Password are an account of ProviderOptions.Accounts.
	Login, Password string
	// Deny, when set, refuses consent instead: the client's callback
	// then carries error=access_denied with Deny as error_description.
	Deny string
}

// Authorize plays the browser of an authorization code login: it opens
// authURL, follows the provider's redirects (keeping its cookies), answers
// the login and consent prompts of server.js's JSON interaction routes as
// u says, and stops at the redirect to redirectURI, whose query (code,
// state, iss, or error) it returns. It never requests redirectURI itself.
func (p *Provider) Authorize(ctx context.Context, authURL, redirectURI string, u User) (url.Values, error) {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{
		Jar:     jar,
		Timeout: 10 * time.Second,
		// Each redirect is looked at here, so the callback is never fetched.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	next, method, form := authURL, http.MethodGet, url.Values(nil)
	for range 20 {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequestWithContext(ctx, method, next, body)
		if err != nil {
			return nil, err
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			loc, err := resp.Location()
			if err != nil {
				return nil, err
			}
			if strings.HasPrefix(loc.String(), redirectURI) {
				return loc.Query(), nil
			}
			next, method, form = loc.String(), http.MethodGet, nil
			continue
		}
		if resp.StatusCode != http.StatusOK || method != http.MethodGet {
			return nil, fmt.Errorf("interop: %s %s: HTTP %d %s", method, req.URL.Path, resp.StatusCode, raw)
		}
		var prompt struct {
			UID    string `json:"uid"`
			Prompt string `json:"prompt"`
		}
		if err := json.Unmarshal(raw, &prompt); err != nil || prompt.UID == "" {
			return nil, fmt.Errorf("interop: %s: not an interaction prompt: %.200s", req.URL.Path, raw)
		}
		base := p.Issuer + "/interaction/" + prompt.UID
		method = http.MethodPost
		switch {
		case u.Deny != "":
			next, form = base+"/abort", url.Values{"error_description": {u.Deny}}
		case prompt.Prompt == "login":
			next, form = base+"/login", url.Values{"login": {u.Login}, "password": {u.Password}}
		case prompt.Prompt == "consent":
			next, form = base+"/consent", url.Values{}
		default:
			return nil, fmt.Errorf("interop: unexpected prompt %q", prompt.Prompt)
		}
	}
	return nil, errors.New("interop: more than 20 steps without reaching the redirect URI")
}
