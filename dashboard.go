package injecttoken

import (
	_ "embed"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("inject_token_dashboard", parseDashboard)
	httpcaddyfile.RegisterDirectiveOrder("inject_token_dashboard", httpcaddyfile.Before, "respond")
}

// dashboardPage is the whole dashboard: HTML, CSS and JavaScript in one
// file, with no external resource, so it works offline.
//
//go:embed dashboard.html
var dashboardPage []byte

// dashboardCSP allows the page's own inline script and style and calls to
// its own origin only, and forbids framing (clickjacking its buttons).
const dashboardCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboardAPI is the path segment below which the dashboard serves the
// admin API's operations: <mount>/api/sessions/...
const dashboardAPI = "/api"

// Dashboard is the http.handlers.inject_token_dashboard module: a live
// page showing every session (state, user, token expiry and next refresh,
// decoded token, DPoP key) with buttons to refresh, log out, log in, and
// list or revoke the user's Prelude sessions. It serves the page for GET
// on any path and, below <path>/api/sessions and <path>/api/templates, the
// same operations as the admin API's /inject_token/sessions and
// /inject_token/templates (one implementation, two mounts): the users of
// per-user templates are listed a page at a time, found by key, revoked.
//
// The page is as powerful as the admin API: serve it on loopback or behind
// authentication (basic_auth). Calls that change state are refused unless
// the browser says they come from the page's own origin (Origin equal to
// the request's, or Sec-Fetch-Site: same-origin), so another site cannot
// drive it through the operator's browser.
type Dashboard struct{}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.inject_token_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// ServeHTTP serves the page or one API operation; it never calls next.
func (Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	for _, mount := range []string{adminapi.SessionsPath, adminapi.TemplatesPath} {
		if i := strings.Index(r.URL.Path, dashboardAPI+mount[len("/inject_token"):]); i >= 0 {
			serveDashboardAPI(w, r, r.URL.Path[i+len(dashboardAPI):])
			return nil
		}
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	default:
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodGet {
		_, _ = w.Write(dashboardPage)
	}
	return nil
}

func serveDashboardAPI(w http.ResponseWriter, r *http.Request, path string) {
	var v any
	var err error
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !sameOrigin(r) {
		err = errorf(http.StatusForbidden, adminapi.CodeCrossOrigin,
			"refused: this call changes state and did not come from the dashboard's own origin")
	} else {
		v, err = dispatch(r, path, "dashboard")
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if err != nil {
		oe := asOpError(err)
		oe.setHeaders(w.Header())
		writeJSON(w, oe.status, adminapi.Error{Error: oe.msg})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// sameOrigin reports whether the browser marked r as coming from a page of
// the origin r is addressed to. Browsers set Origin on every cross-origin
// request and on same-origin POSTs, and scripts cannot forge it.
func sameOrigin(r *http.Request) bool {
	if r.Header.Get("Sec-Fetch-Site") == "same-origin" {
		return true
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	o := r.Header.Get("Origin")
	return o != "" && o != "null" && strings.EqualFold(o, scheme+"://"+r.Host)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	inject_token_dashboard [<matcher>]
func (d *Dashboard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // directive name
	if disp.NextArg() {
		return disp.ArgErr()
	}
	if disp.NextBlock(0) {
		return disp.Errf("inject_token_dashboard takes no options, got %q", disp.Val())
	}
	return nil
}

func parseDashboard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := new(Dashboard)
	err := d.UnmarshalCaddyfile(h.Dispenser)
	return d, err
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Dashboard)(nil)
	_ caddyfile.Unmarshaler       = (*Dashboard)(nil)
)
