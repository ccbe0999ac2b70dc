package sandbox

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// What the sandbox does for browsers, as the service does for the web SDK,
// which calls the API on its own subdomain (cross-origin, mode "cors",
// credentials "include"): CORS for the configured origins, and the refresh
// token in the documented cookie __refresh_{app_id} next to the
// X-Refresh-Token headers.

// corsAllowHeaders are the request headers the web SDK sends.
const corsAllowHeaders = "Content-Type, DPoP, X-Refresh-Token, X-SDK-User-Agent, Authorization, X-Device-Id"

// corsExposeHeaders are the response headers the web SDK reads: without
// them a cross-origin page cannot see the rotated refresh token, the
// nonce or the server's clock.
const corsExposeHeaders = "X-Refresh-Token, X-Refresh-Token-Expires-At, DPoP-Nonce, Date, X-Verification-Token"

// corsMaxAge is how long a browser may cache a preflight answer.
const corsMaxAge = 10 * time.Minute

// cookieRefresh is the documented refresh cookie (the service appends the
// app id; the sandbox is one app, "sandbox").
const cookieRefresh = "__refresh_" + appID

// appID is the sandbox's app id in cookie names.
const appID = "sandbox"

// SetAllowedOrigins replaces the origins (scheme://host[:port]) whose pages
// may call the sandbox cross-origin; "*" allows any origin (still echoed,
// since credentials are allowed).
func (s *Sandbox) SetAllowedOrigins(origins []string) {
	m := make(map[string]bool, len(origins))
	for _, o := range origins {
		m[strings.TrimRight(o, "/")] = true
	}
	s.mu.Lock()
	s.origins = m
	s.mu.Unlock()
}

// originAllowed reports whether r comes from a page the sandbox serves
// cross-origin.
func (s *Sandbox) originAllowed(origin string) bool {
	if origin == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.origins[origin] || s.origins["*"]
}

// cors adds the CORS answer headers for an allowed Origin and answers a
// preflight of route rt. It reports whether the request was a preflight
// (and so has been answered).
func (s *Sandbox) cors(w http.ResponseWriter, r *http.Request, rt route) bool {
	origin := r.Header.Get("Origin")
	allowed := s.originAllowed(origin)
	h := w.Header()
	h.Add("Vary", "Origin")
	if allowed {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	}
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	// A preflight: an origin that is not allowed gets no CORS headers, so
	// the browser refuses the real request; nothing else is revealed.
	if allowed {
		h.Set("Access-Control-Allow-Methods", rt.method)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", strconv.Itoa(int(corsMaxAge/time.Second)))
	}
	w.WriteHeader(http.StatusNoContent)
	return true
}

// refreshCookie is the cookie carrying a browser session's refresh token
// (value "" and ttl < 0 clear it). HttpOnly, so page scripts never see it;
// Secure over TLS; SameSite=None over TLS so a page on another site can
// send it with credentials "include", Lax over plain http, where browsers
// refuse SameSite=None.
func refreshCookie(r *http.Request, value string, expires time.Time) *http.Cookie {
	c := &http.Cookie{Name: cookieRefresh, Value: value, Path: "/v1/session", HttpOnly: true,
		SameSite: http.SameSiteLaxMode}
	if r.TLS != nil {
		c.Secure, c.SameSite = true, http.SameSiteNoneMode
	}
	if value == "" {
		c.MaxAge = -1
	} else {
		c.Expires = expires
	}
	return c
}

// refreshTokenOf returns the refresh token r presents: the X-Refresh-Token
// header (non-browser clients; it wins when both are sent) or else the
// refresh cookie. viaCookie says which.
func refreshTokenOf(r *http.Request) (token string, present, viaCookie bool, aerr *apiError) {
	token, present, aerr = singleHeader(r, "X-Refresh-Token")
	if aerr != nil || present {
		return token, present, false, aerr
	}
	if c, err := r.Cookie(cookieRefresh); err == nil && c.Value != "" {
		return c.Value, true, true, nil
	}
	return "", false, false, nil
}

// fromBrowser reports whether r looks like a browser's: it names its
// origin or carries cookies. Only those get the refresh cookie, so
// non-browser clients see exactly the headers they expect.
func fromBrowser(r *http.Request) bool {
	return r.Header.Get("Origin") != "" || r.Header.Get("Cookie") != ""
}

// setRefreshCookie puts g's rotated refresh token in the refresh cookie
// for a browser.
func setRefreshCookie(w http.ResponseWriter, r *http.Request, g grant) {
	if g.refresh != "" && fromBrowser(r) {
		http.SetCookie(w, refreshCookie(r, g.refresh, g.refreshExp))
	}
}
