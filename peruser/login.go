package peruser

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/wire"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// AuthCode is an OAuth 2.0 authorization code login (PKCE, state, nonce,
// DPoP, PAR), as the root glue adapts oauth.AuthCode.
type AuthCode interface {
	// Begin starts a login bound to key and returns the URL to send the
	// browser to, the state the callback will carry, and the login's
	// pending data (kept sealed server-side until the callback).
	Begin(ctx context.Context, key *dpop.Key, returnTo string) (authURL, state string, pending []byte, err error)
	// Finish redeems the callback's code and returns the grant and the ID
	// token's verified claims (sub, and email and name when present).
	Finish(ctx context.Context, key *dpop.Key, pending []byte, callback url.Values) (*tokencache.Grant, map[string]string, error)
}

// flowTTL bounds a login in progress (a code not yet typed, a provider
// not yet answered).
const flowTTL = 10 * time.Minute

// otpFlow is a one-time-code login waiting for its code. It lives in the
// memory of the instance that sent the code (the server's verification
// state is a cookie jar there): the code must be typed in on the same
// instance, which a load balancer's affinity or a single login host gives.
type otpFlow struct {
	login   *prelude.OTPLogin
	ident   prelude.Identifier
	expires time.Time
}

// flowID returns the browser's login-flow id, setting a new flow cookie if
// it has none.
func (g *Gateway) flowID(w http.ResponseWriter, r *http.Request) (string, error) {
	if id := g.cookieID(r, "_flow"); id != "" {
		return id, nil
	}
	id := newID()
	return id, g.setCookie(w, r, "_flow", id, flowTTL*3)
}

// loginPost checks a login form: same origin, this browser's flow cookie
// and the form's token for it. It returns the flow id, or "" after
// answering.
func (g *Gateway) loginPost(w http.ResponseWriter, r *http.Request) string {
	flow := g.cookieID(r, "_flow")
	if r.Method != http.MethodPost || !g.sameOrigin(r) || flow == "" ||
		r.PostFormValue("csrf") != g.flowCSRF(flow) {
		g.refuse(w, r)
		return ""
	}
	return flow
}

// throttled answers 429 if addr or account is over its limit, counting the
// attempt against addr otherwise.
func (g *Gateway) throttled(w http.ResponseWriter, r *http.Request, account string) bool {
	now, addr := g.cfg.Now(), g.cfg.ClientAddr(r)
	by, wait := "address", g.byAddress.wait(addr, now)
	if wait == 0 && account != "" {
		by, wait = "account", g.byAccount.wait(strings.ToLower(account), now)
	}
	if wait == 0 {
		g.byAddress.hit(addr, now)
		return false
	}
	if g.cfg.OnThrottle != nil {
		g.cfg.OnThrottle(by)
	}
	secs := int64((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	g.render(w, r, http.StatusTooManyRequests, "message", pageData{
		Title: "Too many attempts",
		Msg:   "Too many login attempts. Try again in " + strconv.FormatInt(secs, 10) + " s.",
		Back:  g.prefix + "/login",
	})
	return true
}

// failed counts a rejected login against account and shows the login page
// again with why.
func (g *Gateway) failed(w http.ResponseWriter, r *http.Request, flow, account string, err error) {
	status, msg := http.StatusBadGateway, "The login service cannot be reached just now. Try again."
	if f, _ := tokencache.FailureOf(err); errors.Is(err, tokencache.ErrCredentialsRejected) ||
		f != nil && f.Class == tokencache.ClassDidNotAct {
		status, msg = http.StatusUnauthorized, "That did not work: check what you typed."
		if account != "" {
			g.byAccount.hit(strings.ToLower(account), g.cfg.Now())
		}
	} else {
		g.cfg.Logger.Warn("per-user login failed", zap.String("template", g.cfg.Template), zap.Error(err))
	}
	g.loginPage(w, r, flow, status, msg)
}

func (g *Gateway) loginPassword(w http.ResponseWriter, r *http.Request) {
	flow := g.loginPost(w, r)
	if flow == "" || g.cfg.Prelude == nil {
		return
	}
	email := strings.TrimSpace(r.PostFormValue("email"))
	if g.throttled(w, r, email) {
		return
	}
	k, err := dpop.GenerateKey(g.cfg.KeyAlgorithm)
	if err != nil {
		g.failed(w, r, flow, "", err)
		return
	}
	gr, err := prelude.PasswordLogin(g.cfg.Prelude, email, r.PostFormValue("password"))(r.Context(), k, "")
	if err != nil {
		g.failed(w, r, flow, email, err)
		return
	}
	g.finish(w, r, k, gr, map[string]string{"email": strings.ToLower(email)})
}

func (g *Gateway) loginOTPStart(w http.ResponseWriter, r *http.Request) {
	flow := g.loginPost(w, r)
	if flow == "" || g.cfg.Prelude == nil {
		return
	}
	v := strings.TrimSpace(r.PostFormValue("identifier"))
	id := prelude.EmailIdentifier(strings.ToLower(v))
	if !strings.Contains(v, "@") {
		id = prelude.PhoneIdentifier(v)
	}
	if g.throttled(w, r, v) {
		return
	}
	// Each code sent counts against the account: a code is a message to
	// its owner.
	g.byAccount.hit(strings.ToLower(v), g.cfg.Now())
	l, err := g.cfg.Prelude.StartOTPLogin(r.Context(), id)
	if err != nil {
		g.failed(w, r, flow, "", err)
		return
	}
	now := g.cfg.Now()
	g.mu.Lock()
	for k, f := range g.flows {
		if now.After(f.expires) {
			delete(g.flows, k)
		}
	}
	g.flows[flow] = &otpFlow{login: l, ident: id, expires: now.Add(flowTTL)}
	g.mu.Unlock()
	g.render(w, r, http.StatusOK, "code", pageData{Title: "Enter your code", CSRF: g.flowCSRF(flow),
		Return: returnTo(r.PostFormValue("return")), Sent: v})
}

func (g *Gateway) loginOTPCheck(w http.ResponseWriter, r *http.Request) {
	flow := g.loginPost(w, r)
	if flow == "" {
		return
	}
	g.mu.Lock()
	f := g.flows[flow]
	if f != nil && g.cfg.Now().After(f.expires) {
		delete(g.flows, flow)
		f = nil
	}
	g.mu.Unlock()
	if f == nil {
		g.loginPage(w, r, flow, http.StatusBadRequest, "That code has expired, or was sent by another server: ask for a new one.")
		return
	}
	if g.throttled(w, r, f.ident.Value) {
		return
	}
	k, err := dpop.GenerateKey(g.cfg.KeyAlgorithm)
	if err == nil {
		var gr *tokencache.Grant
		if gr, err = f.login.Login(strings.TrimSpace(r.PostFormValue("code")))(r.Context(), k, ""); err == nil {
			g.mu.Lock()
			delete(g.flows, flow)
			g.mu.Unlock()
			claim := "email"
			if f.ident.Type == "phone_number" {
				claim = "phone"
			}
			g.finish(w, r, k, gr, map[string]string{claim: f.ident.Value})
			return
		}
	}
	g.failed(w, r, flow, f.ident.Value, err)
}

// finish makes a login's grant the user's session and, unless another
// handler identifies users, gives the browser a new cookie for it.
func (g *Gateway) finish(w http.ResponseWriter, r *http.Request, k *dpop.Key, gr *tokencache.Grant, claims map[string]string) {
	var tc struct {
		Sub string `json:"sub"`
		SID string `json:"sid"`
	}
	wire.JWTClaims(gr.AccessToken, &tc)
	if claims["sub"] == "" {
		claims["sub"] = tc.Sub
	}
	key := claims["sub"]
	if g.cfg.KeyFrom != nil {
		key = g.cfg.KeyFrom(r)
	}
	back := returnTo(r.FormValue("return"))
	if key == "" {
		g.cfg.Logger.Error("per-user login gave no user id (no sub claim)", zap.String("template", g.cfg.Template))
		g.message(w, r, http.StatusBadGateway, "The login service did not say who you are.")
		return
	}
	if err := g.cfg.Sessions.Adopt(r.Context(), key, k, gr); err != nil {
		g.cfg.Logger.Error("per-user login: storing the session failed", zap.String("template", g.cfg.Template), zap.Error(err))
		g.message(w, r, http.StatusServiceUnavailable, "Your login could not be stored. Try again.")
		return
	}
	g.clear(w, r, "_flow")
	if g.cfg.KeyFrom == nil {
		// A new id after every login: a cookie planted before the login
		// (fixation) never becomes a logged-in one.
		if old := g.cookieID(r, ""); old != "" {
			g.deleteRecord(r.Context(), old)
		}
		now, id := g.cfg.Now(), newID()
		rec := &record{Key: key, SID: tc.SID, Claims: claims, Created: now, Seen: now}
		if err := g.storeRecord(r.Context(), id, rec); err != nil {
			g.message(w, r, http.StatusServiceUnavailable, "Your login could not be stored. Try again.")
			return
		}
		if err := g.setCookie(w, r, "", id, g.cfg.MaxLifetime); err != nil {
			g.message(w, r, http.StatusForbidden, err.Error())
			return
		}
	}
	g.cfg.Logger.Info("per-user login", zap.String("template", g.cfg.Template), zap.String("user", key))
	noStore(w)
	http.Redirect(w, r, back, http.StatusSeeOther)
}
