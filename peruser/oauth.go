package peruser

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// oauthFlow is an authorization code login in progress, stored sealed
// under its state so the provider's callback may reach any instance.
type oauthFlow struct {
	// Flow is the keyed hash of the browser's flow cookie: the callback
	// must come back to the browser that started (no login CSRF).
	Flow    []byte    `json:"flow"`
	Key     []byte    `json:"key"` // the login's DPoP key (PEM)
	Pending []byte    `json:"pending"`
	Return  string    `json:"return"`
	Expires time.Time `json:"expires"`
}

// oauthBegin sends the browser to the provider.
func (g *Gateway) oauthBegin(w http.ResponseWriter, r *http.Request) {
	if g.cfg.OAuth == nil {
		g.message(w, r, http.StatusNotFound, "No such page.")
		return
	}
	if g.throttled(w, r, "", noAccount) == nil {
		return
	}
	flow, err := g.flowID(w, r)
	if err != nil {
		g.message(w, r, http.StatusForbidden, err.Error())
		return
	}
	back := returnTo(r.FormValue("return"))
	k, err := dpop.GenerateKey(g.cfg.KeyAlgorithm)
	var pemKey []byte
	if err == nil {
		pemKey, err = k.MarshalPEM()
	}
	var authURL, state string
	var pending []byte
	if err == nil {
		authURL, state, pending, err = g.cfg.OAuth.Begin(r.Context(), k, back)
	}
	if err == nil {
		var b []byte
		b, err = json.Marshal(oauthFlow{Flow: g.mac("flow", flow), Key: pemKey, Pending: pending, Return: back,
			Expires: g.cfg.Now().Add(flowTTL)})
		if err == nil {
			err = g.cfg.Storage.Store(r.Context(), g.storageKey("flows", state), b)
		}
	}
	if err != nil {
		g.cfg.Logger.Warn("per-user oauth login could not start", zap.String("template", g.cfg.Template), zap.Error(err))
		g.message(w, r, http.StatusBadGateway, "The login service cannot be reached just now. Try again.")
		return
	}
	noStore(w)
	http.Redirect(w, r, authURL, http.StatusSeeOther)
}

// oauthCallback redeems the provider's answer.
func (g *Gateway) oauthCallback(w http.ResponseWriter, r *http.Request) {
	if g.cfg.OAuth == nil {
		g.message(w, r, http.StatusNotFound, "No such page.")
		return
	}
	q := r.URL.Query()
	state, flow := q.Get("state"), g.cookieID(r, "_flow")
	if state == "" || flow == "" {
		g.message(w, r, http.StatusBadRequest, "This login did not start in this browser, or has expired: start again.")
		return
	}
	sk := g.storageKey("flows", state)
	b, err := g.cfg.Storage.Load(r.Context(), sk)
	var f oauthFlow
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err != nil || !g.cfg.Now().Before(f.Expires) || string(f.Flow) != string(g.mac("flow", flow)) {
		g.message(w, r, http.StatusBadRequest, "This login did not start in this browser, or has expired: start again.")
		return
	}
	// One use: a replayed callback finds nothing.
	_ = g.cfg.Storage.Delete(r.Context(), sk)
	if e := q.Get("error"); e != "" {
		g.message(w, r, http.StatusUnauthorized, "The login was not completed ("+e+").")
		return
	}
	k, err := dpop.ParseKeyPEM(f.Key)
	if err != nil {
		g.message(w, r, http.StatusInternalServerError, "This login cannot be completed: start again.")
		return
	}
	gr, claims, err := g.cfg.OAuth.Finish(r.Context(), k, f.Pending, q)
	if err == nil && claims["sub"] == "" {
		err = errors.New("the ID token has no sub")
	}
	if err != nil {
		g.cfg.Logger.Warn("per-user oauth login failed", zap.String("template", g.cfg.Template), zap.Error(err))
		g.message(w, r, http.StatusUnauthorized, "The login could not be completed: start again.")
		return
	}
	q.Set("return", f.Return)
	r.Form = q
	g.finish(w, r, k, gr, claims)
}
