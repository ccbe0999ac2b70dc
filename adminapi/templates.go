package adminapi

import (
	"net/url"
	"time"
)

// TemplatesPath is the collection of templates: sessions made at run
// time, one per key (a user), under a configured template.
const TemplatesPath = "/inject_token/templates"

// TemplatePath returns the path of a template's route: suffix is
// "/sessions", "/revoke_all" or TemplateSessionPath's.
func TemplatePath(template, suffix string) string {
	return TemplatesPath + "/" + url.PathEscape(template) + suffix
}

// TemplateSessionPath returns the path of one run-time session's route
// (key path-escaped: it may hold any character); suffix is "" for lookup
// (GET) and revoke (DELETE), RouteErase, or one of the login routes
// (RouteLogin, RouteOTPStart, RouteOTPCheck, RoutePassword,
// RouteRefreshToken), which behave as for a named session but make the
// session first if it does not exist.
func TemplateSessionPath(template, key, suffix string) string {
	return TemplatePath(template, "/sessions/"+url.PathEscape(key)+suffix)
}

// Routes below a template and below one of its sessions.
const (
	RouteRevokeAll = "/revoke_all" // POST (template): revoke every session → RevokeAllResult
	RouteErase     = "/erase"      // POST (session): revoke, then delete every trace → EraseResult
)

// TemplateList answers GET /inject_token/templates.
type TemplateList struct {
	Templates []Template `json:"templates"`
}

// Template is one configured template.
type Template struct {
	Name string `json:"name"`
	// Resident is how many of its sessions are held in memory; Counts how
	// many of those are in each state (active, logged_out, …).
	Resident int            `json:"resident"`
	Counts   map[string]int `json:"counts"`
	// Backend is "prelude" or "oauth2"; BaseURL the server it talks to.
	Backend string `json:"backend"`
	BaseURL string `json:"base_url"`
}

// RuntimeSession is what a listing or lookup shows of one run-time
// session, resident or not. Never a token, refresh token or key.
type RuntimeSession struct {
	Key   string `json:"key"`
	State string `json:"state"`
	// Sub is the access token's subject; times are null when unknown.
	Sub       string     `json:"sub"`
	CreatedAt *time.Time `json:"created_at"`
	LastUsed  *time.Time `json:"last_used"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// RuntimeSessionList answers GET .../sessions?cursor=&limit=: one page,
// and Next, the cursor of the next page ("" after the last).
type RuntimeSessionList struct {
	Sessions []RuntimeSession `json:"sessions"`
	Next     string           `json:"next"`
}

// RevokeAllResult answers RouteRevokeAll: how many sessions were revoked.
type RevokeAllResult struct {
	Template string `json:"template"`
	Revoked  int    `json:"revoked"`
}

// EraseResult answers RouteErase and a DELETE (revoke) of a session.
type EraseResult struct {
	Template string `json:"template"`
	Key      string `json:"key"`
	Done     string `json:"done"` // "revoked" or "erased"
}
