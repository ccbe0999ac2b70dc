package peruser

import (
	"errors"
	"html/template"
	"net/http"

	"github.com/tokenwarden/caddy-inject-token/prelude"
)

// maxFormBytes bounds the body of a POST to the gateway's pages.
const maxFormBytes = 64 << 10

// page serves the gateway's own pages; sub is the path below the prefix.
func (g *Gateway) page(w http.ResponseWriter, r *http.Request, sub string) {
	post := r.Method == http.MethodPost
	if post {
		// The gateway's forms are a few short fields: a big body is read
		// no further than this.
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			status := http.StatusBadRequest
			if _, big := errors.AsType[*http.MaxBytesError](err); big {
				status = http.StatusRequestEntityTooLarge
			}
			g.message(w, r, status, "That form could not be read.")
			return
		}
	}
	switch {
	case sub == "/login" && !post:
		flow, err := g.flowID(w, r)
		if err != nil {
			g.message(w, r, http.StatusForbidden, err.Error())
			return
		}
		g.loginPage(w, r, flow, http.StatusOK, "")
	case sub == "/login/password" && post:
		g.loginPassword(w, r)
	case sub == "/login/otp" && post:
		g.loginOTPStart(w, r)
	case sub == "/login/otp/check" && post:
		g.loginOTPCheck(w, r)
	case sub == "/login/oauth" && !post:
		g.oauthBegin(w, r)
	case sub == "/callback" && !post:
		g.oauthCallback(w, r)
	case (sub == "" || sub == "/") && !post:
		g.userPage(w, r)
	case sub == "/logout" && post:
		g.logout(w, r)
	case sub == "/revoke" && post:
		g.revoke(w, r)
	default:
		g.message(w, r, http.StatusNotFound, "No such page.")
	}
}

// pageData is what the templates show. It never holds a token.
type pageData struct {
	Title, Msg, Back string
	// Login page.
	CSRF, Return, Sent string
	Prelude, OAuth     bool
	Prefix             string
	// User's page.
	Claims  map[string]string
	Key     string
	Devices []prelude.SessionInfo
	Current string // the gateway's own device (sid)
	DevErr  string
}

// loginPage shows the login forms for the browser's flow.
func (g *Gateway) loginPage(w http.ResponseWriter, r *http.Request, flow string, status int, msg string) {
	g.render(w, r, status, "login", pageData{Title: "Log in", Msg: msg, CSRF: g.flowCSRF(flow),
		Return: returnTo(r.FormValue("return")), Prelude: g.cfg.Prelude != nil, OAuth: g.cfg.OAuth != nil})
}

func (g *Gateway) message(w http.ResponseWriter, r *http.Request, status int, msg string) {
	g.render(w, r, status, "message", pageData{Title: http.StatusText(status), Msg: msg, Back: g.prefix + "/login"})
}

// refuse answers a state-changing request that is not from this site's
// own page (cross-site, no CSRF token, or another browser's).
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request) {
	g.message(w, r, http.StatusForbidden, "Refused: this request did not come from this site's own page.")
}

// render writes a page with headers that keep it out of caches, frames and
// other sites' scripts.
func (g *Gateway) render(w http.ResponseWriter, r *http.Request, status int, name string, d pageData) {
	d.Prefix = g.prefix
	h := w.Header()
	noStore(w)
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer a browser posts
	// the forms with "Origin: null", which the same-origin check refuses.
	h.Set("Referrer-Policy", "same-origin")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	_ = pages.ExecuteTemplate(w, name, d)
}

var pages = template.Must(template.New("").Parse(`
{{define "head"}}<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{{.Title}}</title>
<style>body{font:16px system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}
form{margin:1em 0;padding:1em;border:1px solid #ccc;border-radius:6px}input{display:block;margin:.3em 0 .8em;padding:.4em;width:95%}
button{padding:.4em 1em}#msg{color:#a00}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em;text-align:left}
.inline{display:inline;border:0;padding:0;margin:0}</style></head><body><h1>{{.Title}}</h1>
<p id="msg">{{.Msg}}</p>{{end}}

{{define "login"}}{{template "head" .}}
{{if .Prelude}}
<form method="post" action="{{.Prefix}}/login/password" id="f-password">
<input type="hidden" name="csrf" value="{{.CSRF}}"><input type="hidden" name="return" value="{{.Return}}">
<label>Email <input id="email" name="email" type="email" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
<button id="btn-password">Log in</button></form>
<form method="post" action="{{.Prefix}}/login/otp" id="f-otp">
<input type="hidden" name="csrf" value="{{.CSRF}}"><input type="hidden" name="return" value="{{.Return}}">
<label>Email or phone number <input id="otp-id" name="identifier" required></label>
<button id="btn-otp">Send me a code</button></form>
{{end}}
{{if .OAuth}}<p><a id="oauth" href="{{.Prefix}}/login/oauth?return={{.Return}}">Log in with your organisation's account</a></p>{{end}}
</body></html>{{end}}

{{define "code"}}{{template "head" .}}
<p>A code was sent to <b id="sent">{{.Sent}}</b>.</p>
<form method="post" action="{{.Prefix}}/login/otp/check" id="f-code">
<input type="hidden" name="csrf" value="{{.CSRF}}"><input type="hidden" name="return" value="{{.Return}}">
<label>Code <input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required></label>
<button id="btn-code">Log in</button></form>
<p><a href="{{.Prefix}}/login">Start again</a></p></body></html>{{end}}

{{define "message"}}{{template "head" .}}{{if .Back}}<p><a id="back" href="{{.Back}}">Back to the login page</a></p>{{end}}</body></html>{{end}}

{{define "user"}}{{template "head" .}}
<table id="who">
{{range $k, $v := .Claims}}<tr><th>{{$k}}</th><td id="who-{{$k}}">{{$v}}</td></tr>{{end}}
</table>
<h2>My devices</h2>
{{if .DevErr}}<p id="dev-err">{{.DevErr}}</p>{{end}}
<table id="devices"><tr><th>Device</th><th>Since</th><th>Last seen</th><th></th></tr>
{{range .Devices}}<tr data-id="{{.ID}}"{{if eq .ID $.Current}} data-current="1"{{end}}>
<td>{{.DeviceType}} {{.DeviceModel}} {{.OSVersion}}{{if eq .ID $.Current}} <b>(this gateway)</b>{{end}}</td>
<td>{{if not .CreatedAt.IsZero}}{{.CreatedAt.Format "2006-01-02 15:04"}}{{end}}</td>
<td>{{if not .LastSeenAt.IsZero}}{{.LastSeenAt.Format "2006-01-02 15:04"}}{{end}}</td>
<td><form class="inline" method="post" action="{{$.Prefix}}/revoke"><input type="hidden" name="csrf" value="{{$.CSRF}}">
<input type="hidden" name="target" value="session"><input type="hidden" name="id" value="{{.ID}}"><button class="revoke">Revoke</button></form></td></tr>
{{end}}</table>
<form method="post" action="{{.Prefix}}/revoke" id="f-others"><input type="hidden" name="csrf" value="{{.CSRF}}">
<input type="hidden" name="target" value="others"><button id="btn-others">Log out my other devices</button></form>
<form method="post" action="{{.Prefix}}/revoke" id="f-all"><input type="hidden" name="csrf" value="{{.CSRF}}">
<input type="hidden" name="target" value="all"><button id="btn-all">Log out everywhere</button></form>
<form method="post" action="{{.Prefix}}/logout" id="f-logout"><input type="hidden" name="csrf" value="{{.CSRF}}">
<button id="btn-logout">Log out</button></form>
<p><a href="/">Back to the app</a></p></body></html>{{end}}
`))
