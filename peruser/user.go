package peruser

import (
	"errors"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// userPage is the user's own page: who am I, my devices, log out.
func (g *Gateway) userPage(w http.ResponseWriter, r *http.Request) {
	id := g.pageUser(w, r, false)
	if id == nil {
		return
	}
	d := pageData{Title: "Your account", Claims: id.claims, CSRF: g.csrfToken(id), Current: id.tok.SessionID}
	if g.cfg.Prelude != nil {
		list, err := g.cfg.Prelude.ListSessions(r.Context(), id.tok.Value, prelude.Unset, prelude.Unset)
		if err != nil {
			g.cfg.Logger.Warn("listing the user's devices", zap.String("template", g.cfg.Template), zap.Error(err))
			d.DevErr = "Your devices cannot be listed just now."
		} else {
			d.Devices = list.Sessions
		}
	}
	g.render(w, r, http.StatusOK, "user", d)
}

// pageUser identifies the user of one of the gateway's own pages, or
// answers (login page, or 503) and returns nil. With tokenless, a user
// whose cookie is good but whose session has no valid token just now is
// returned too (id.tok nil).
func (g *Gateway) pageUser(w http.ResponseWriter, r *http.Request, tokenless bool) *identity {
	id, err := g.identify(w, r)
	switch {
	case errors.Is(err, errLoggedOut):
		noStore(w)
		http.Redirect(w, r, g.prefix+"/login?return="+url.QueryEscape(g.prefix+"/"), http.StatusSeeOther)
		return nil
	case err != nil && tokenless && id != nil && id.cookie != "":
		// The cookie still says who this is (a logout must not wait
		// for the token server).
	case err != nil:
		_ = g.unavailable(w, r, err)
		return nil
	}
	return id
}

// statefulUser is pageUser for a state-changing request: same origin
// first (a cross-site POST is refused, not sent to log in), then the CSRF
// token of this login.
func (g *Gateway) statefulUser(w http.ResponseWriter, r *http.Request, tokenless bool) *identity {
	if !g.sameOrigin(r) {
		g.refuse(w, r)
		return nil
	}
	id := g.pageUser(w, r, tokenless)
	if id != nil && !g.checkCSRF(r, id) {
		g.refuse(w, r)
		return nil
	}
	return id
}

// logout ends the browser's side of the login whatever the token server
// says, and revokes the user's session there. A session the server could
// not be told of now is revoked by a later sweep (pendingLogout); with
// KeyFrom, where the session stays reachable without a cookie, it is
// forgotten here at once (its key and refresh token deleted: nothing can
// use or refresh it) and ends at the server when it expires.
func (g *Gateway) logout(w http.ResponseWriter, r *http.Request) {
	id := g.statefulUser(w, r, true)
	if id == nil {
		return
	}
	c, err := g.cfg.Sessions.Session(id.key)
	if err == nil {
		err = c.LogoutKey(r.Context(), id.keyThumbprint())
	}
	if err != nil && !errors.Is(err, tokencache.ErrReplaced) {
		g.cfg.Logger.Warn("per-user logout could not revoke at the server; retried later",
			zap.String("template", g.cfg.Template), zap.Error(err))
		if g.cfg.KeyFrom != nil && c != nil {
			_ = c.Forget(r.Context(), "logged out by the user (not revoked: the server could not be reached)")
		} else {
			g.pendLogout(r.Context(), id)
		}
	}
	g.loggedOut(w, r, id, "logout")
}

// loggedOut ends the browser's side of a login and sends it to the login
// page.
func (g *Gateway) loggedOut(w http.ResponseWriter, r *http.Request, id *identity, why string) {
	if id.cookie != "" {
		g.deleteRecord(r.Context(), id.cookie)
		g.clearCookie(w, r)
	}
	g.cfg.Logger.Info("per-user "+why, zap.String("template", g.cfg.Template), zap.String("user", id.key))
	noStore(w)
	http.Redirect(w, r, g.prefix+"/login", http.StatusSeeOther)
}

// revoke revokes devices of the user at Prelude: one (target=session, id),
// every other (others), or all. Revoking the gateway's own device ends the
// user's session here too.
func (g *Gateway) revoke(w http.ResponseWriter, r *http.Request) {
	id := g.statefulUser(w, r, false)
	if id == nil {
		return
	}
	if g.cfg.Prelude == nil {
		g.message(w, r, http.StatusNotFound, "Devices are listed for Prelude accounts only.")
		return
	}
	target, dev := r.PostFormValue("target"), r.PostFormValue("id")
	if target != prelude.TargetSession {
		dev = ""
	}
	if err := g.cfg.Prelude.RevokeSessions(r.Context(), id.tok.Value, target, dev); err != nil {
		g.cfg.Logger.Warn("per-user revoke failed", zap.String("template", g.cfg.Template), zap.Error(err))
		g.message(w, r, http.StatusBadGateway, "That could not be revoked just now. Try again.")
		return
	}
	if target == prelude.TargetAll || target == prelude.TargetSession && dev == id.tok.SessionID {
		if c, err := g.cfg.Sessions.Session(id.key); err == nil {
			_ = c.Forget(r.Context(), "revoked by the user")
		}
		g.loggedOut(w, r, id, "revoked this device")
		return
	}
	noStore(w)
	http.Redirect(w, r, g.prefix+"/", http.StatusSeeOther)
}
