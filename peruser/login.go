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

// attempt is a login attempt's counts against its account, given back
// unless the credentials were rejected (or, for a code sent, unless the
// sending failed).
type attempt struct {
	at    time.Time
	taken []count
}

// count is one event counted in limiter l under key; by names the limit
// in the refusal metric.
type count struct {
	by  string
	l   *limiter
	key string
}

// refund gives the attempt's account counts back.
func (a *attempt) refund() {
	if a == nil {
		return
	}
	for _, c := range a.taken {
		c.l.give(c.key, a.at)
	}
	a.taken = nil
}

// Which account limits an attempt counts against.
const (
	noAccount = iota
	passwordOrCode
	codeSent
)

// throttled counts the attempt against r's client address and, for an
// account, against the account's limits of kind (failed logins per
// (account, address) and per account; or codes sent per account); each
// limit is checked and counted in one step. Over any limit it gives back
// what it counted, answers 429 and returns nil.
func (g *Gateway) throttled(w http.ResponseWriter, r *http.Request, account string, kind int) *attempt {
	now, addr := g.cfg.Now(), addressKey(g.cfg.ClientAddr(r))
	account = strings.ToLower(account)
	limits := []count{{"address", g.byAddress, addr}}
	switch {
	case account == "":
	case kind == passwordOrCode:
		limits = append(limits, count{"account", g.byAccount, account + "\x00" + addr}, count{"account", g.byCeil, account})
	case kind == codeSent:
		limits = append(limits, count{"account", g.bySends, account})
	}
	a := &attempt{at: now}
	for i, c := range limits {
		wait := c.l.take(c.key, now)
		if wait == 0 {
			if i > 0 { // attempts per address are never given back
				a.taken = append(a.taken, c)
			}
			continue
		}
		a.refund()
		if i > 0 {
			g.byAddress.give(addr, now) // refused: not an attempt
		}
		g.tooMany(w, r, c.by, wait)
		return nil
	}
	return a
}

// tooMany answers a login refused by the limit by: 429, "try again in N s".
func (g *Gateway) tooMany(w http.ResponseWriter, r *http.Request, by string, wait time.Duration) {
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
}

// failed shows the login page again with why a login failed; the attempt
// stays counted against its account only if the credentials were
// rejected.
func (g *Gateway) failed(w http.ResponseWriter, r *http.Request, flow string, a *attempt, err error) {
	status, msg := http.StatusBadGateway, "The login service cannot be reached just now. Try again."
	if f, _ := tokencache.FailureOf(err); errors.Is(err, tokencache.ErrCredentialsRejected) ||
		f != nil && f.Class == tokencache.ClassDidNotAct {
		status, msg = http.StatusUnauthorized, "That did not work: check what you typed."
	} else {
		a.refund()
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
	a := g.throttled(w, r, email, passwordOrCode)
	if a == nil {
		return
	}
	k, err := dpop.GenerateKey(g.cfg.KeyAlgorithm)
	if err == nil {
		var gr *tokencache.Grant
		if gr, err = prelude.PasswordLogin(g.cfg.Prelude, email, r.PostFormValue("password"))(r.Context(), k, ""); err == nil {
			a.refund()
			g.finish(w, r, k, gr, map[string]string{"email": strings.ToLower(email)})
			return
		}
	}
	g.failed(w, r, flow, a, err)
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
	// Each code sent counts against the account's codes (a code is a
	// message to its owner), not against its logins.
	a := g.throttled(w, r, v, codeSent)
	if a == nil {
		return
	}
	l, err := g.cfg.Prelude.StartOTPLogin(r.Context(), id)
	if err != nil {
		g.failed(w, r, flow, a, err)
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
	a := g.throttled(w, r, f.ident.Value, passwordOrCode)
	if a == nil {
		return
	}
	k, err := dpop.GenerateKey(g.cfg.KeyAlgorithm)
	if err == nil {
		var gr *tokencache.Grant
		if gr, err = f.login.Login(strings.TrimSpace(r.PostFormValue("code")))(r.Context(), k, ""); err == nil {
			a.refund()
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
	g.failed(w, r, flow, a, err)
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
		rec := &record{Key: key, SID: tc.SID, JKT: k.Thumbprint(), Claims: claims, Created: now, Seen: now}
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
