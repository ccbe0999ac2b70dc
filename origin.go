package injecttoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Browser origin checks: anyone who can make a browser send a request to
// the gateway acts as its logged-in user, so requests a browser marks as
// cross-site are refused unless allow_browser_origins names their origin.

// provisionOrigins checks and indexes AllowBrowserOrigins.
func (h *Handler) provisionOrigins() error {
	h.allowAll, h.allowed = false, nil
	for _, o := range h.AllowBrowserOrigins {
		if o == "*" {
			h.allowAll = true
			continue
		}
		if err := checkOrigin(o); err != nil {
			return fmt.Errorf("allow_browser_origins: %v", err)
		}
		if h.allowed == nil {
			h.allowed = make(map[string]bool)
		}
		h.allowed[strings.ToLower(o)] = true
	}
	return nil
}

// checkOrigin accepts a browser origin: scheme://host[:port], nothing more.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return fmt.Errorf("%q is not an origin: want scheme://host[:port] (or *)", o)
	}
	return nil
}

// crossSite says why r is a browser request from another site, or "".
// Browsers mark their requests with Sec-Fetch-Site, and send Origin with
// every request that is not a plain same-origin navigation; other clients
// send neither and are never refused.
func (h *Handler) crossSite(r *http.Request) string {
	if h.allowAll || h.allowed[strings.ToLower(r.Header.Get("Origin"))] {
		return ""
	}
	return crossSite(r)
}

// crossSite is Handler.crossSite with no origin allowed: the default, and
// the only rule of a transport used without a handler.
func crossSite(r *http.Request) string {
	site, origin := r.Header.Get("Sec-Fetch-Site"), r.Header.Get("Origin")
	if site == "" && origin == "" {
		return ""
	}
	if site == "cross-site" || site == "same-site" {
		return "Sec-Fetch-Site: " + site
	}
	if origin != "" && !sameHost(origin, r.Host) {
		return "Origin not the request's host"
	}
	return ""
}

// sameHost reports whether origin names host (the request's Host header),
// default ports aside.
func sameHost(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" and the like
	}
	scheme := strings.ToLower(u.Scheme)
	return dpop.NormalizeAuthority(scheme, u.Host) == dpop.NormalizeAuthority(scheme, host)
}

// forbiddenBody is the JSON answer to a refused cross-site request.
type forbiddenBody struct {
	Error   string `json:"error"`
	Session string `json:"session"`
}

// forbidden refuses a cross-site browser request before anything is done
// with the session.
func (h *Handler) forbidden(w http.ResponseWriter, why string) error {
	if c := h.logger.Check(zapcore.DebugLevel, "cross-site browser request refused; see allow_browser_origins"); c != nil {
		c.Write(zap.String("session", h.Session), zap.String("reason", why))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusForbidden)
	return json.NewEncoder(w).Encode(forbiddenOf(h.Session, why))
}

func forbiddenOf(session, why string) forbiddenBody {
	return forbiddenBody{Error: "cross-site browser request refused (" + why + ")", Session: session}
}
