package peruser

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// record is what a cookie's id stands for, in storage: never a token.
type record struct {
	// Key is the user's session key (the user's id).
	Key string `json:"key"`
	// SID is the upstream session the login made, when its tokens name
	// one: a later login of the same user (which replaces the session)
	// ends this cookie.
	SID string `json:"sid,omitempty"`
	// JKT is the thumbprint of the DPoP key the login made (every login
	// makes a new one, and a session's key never changes while it
	// lives): the cookie is this session's only, even when the tokens
	// name no session (OAuth, opaque tokens) and the user's next login,
	// anywhere, makes a session under the same key.
	JKT string `json:"jkt,omitempty"`
	// Claims are the verified claims of the login (sub, email, phone,
	// name) for the identity headers.
	Claims map[string]string `json:"claims,omitempty"`
	// Created is the login; Seen the last use (to the nearest touch).
	Created time.Time `json:"created"`
	Seen    time.Time `json:"seen"`
}

// expired reports whether rec has outlived its idle or absolute lifetime.
func (g *Gateway) expired(rec *record, now time.Time) bool {
	return now.Sub(rec.Created) >= g.cfg.MaxLifetime || now.Sub(rec.Seen) >= g.cfg.IdleTimeout
}

// cookieName is the login cookie's name for r: __Host- prefixed over TLS,
// a plain name over http to a loopback host, and none otherwise (the
// cookie would travel in clear text).
func (g *Gateway) cookieName(r *http.Request, kind string) (name string, secure, ok bool) {
	base := g.cookieBase(kind)
	if g.cfg.Secure(r) {
		return "__Host-" + base, true, true
	}
	return base, false, loopbackHost(r.Host)
}

// cookieBase is the cookie's name without the __Host- prefix.
func (g *Gateway) cookieBase(kind string) string {
	return "inject_token" + kind + "-" + g.cfg.Template
}

// loopbackHost: localhost, 127.0.0.0/8 or ::1, with or without a port.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// cookieAAD binds a sealed cookie to its use.
func (g *Gateway) cookieAAD(kind string) string {
	return "inject_token cookie" + kind + " " + g.cfg.Template
}

// newID is a fresh random id: 256 bits, base64url.
func newID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// setCookie sets a cookie of kind ("" the login, "_flow" a login in
// progress) holding id, sealed.
func (g *Gateway) setCookie(w http.ResponseWriter, r *http.Request, kind, id string, maxAge time.Duration) error {
	name, secure, ok := g.cookieName(r, kind)
	if !ok {
		return errInsecure
	}
	v, err := g.cfg.Sealer.Seal([]byte(id), g.cookieAAD(kind))
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: name, Value: string(v), Path: "/", MaxAge: int(maxAge / time.Second),
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode})
	return nil
}

// errInsecure: the site is plain http on a host that is not loopback.
var errInsecure = errors.New("per-user login needs HTTPS (or a TLS-terminating proxy listed in trusted_proxies): " +
	"the cookie would travel in clear text")

// cookieID returns the id in r's cookie of kind, or "" if there is none or
// it does not open (tampered, another key, another template).
func (g *Gateway) cookieID(r *http.Request, kind string) string {
	name, _, ok := g.cookieName(r, kind)
	if !ok {
		return ""
	}
	c, err := r.Cookie(name)
	if err != nil {
		return ""
	}
	id, err := g.cfg.Sealer.Open([]byte(c.Value), g.cookieAAD(kind))
	if err != nil {
		return ""
	}
	return string(id)
}

// stripOwnCookies removes the gateway's cookies (the login and the login
// flow) from r's Cookie header: whoever holds the login cookie is the user
// here, so it stays between the browser and the gateway, never reaching
// the legacy app, its logs or whoever it talks to. The other cookies are
// kept as sent.
func (g *Gateway) stripOwnCookies(r *http.Request) {
	own := map[string]bool{}
	for _, kind := range []string{"", "_flow"} {
		base := g.cookieBase(kind)
		own[base], own["__Host-"+base] = true, true
	}
	var kept []string
	for _, line := range r.Header.Values("Cookie") {
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			name, _, _ := strings.Cut(part, "=")
			if part != "" && !own[strings.TrimSpace(name)] {
				kept = append(kept, part)
			}
		}
	}
	r.Header.Del("Cookie")
	if len(kept) > 0 {
		r.Header.Set("Cookie", strings.Join(kept, "; "))
	}
}

func (g *Gateway) clearCookie(w http.ResponseWriter, r *http.Request) {
	g.clear(w, r, "")
}

func (g *Gateway) clear(w http.ResponseWriter, r *http.Request, kind string) {
	if name, secure, ok := g.cookieName(r, kind); ok {
		http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode})
	}
}

// readCookie returns the login cookie's id and its live record, or nil.
// An expired record is deleted; a used one is touched now and then so the
// idle lifetime counts from the last use.
func (g *Gateway) readCookie(r *http.Request) (string, *record) {
	id := g.cookieID(r, "")
	if id == "" {
		return "", nil
	}
	ctx := r.Context()
	rec, err := g.loadRecord(ctx, id)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			g.cfg.Logger.Warn("per-user cookie record unreadable; treating as logged out",
				zap.String("template", g.cfg.Template), zap.Error(err))
		}
		return "", nil
	}
	now := g.cfg.Now()
	if g.expired(rec, now) {
		g.deleteRecord(ctx, id)
		return "", nil
	}
	if now.Sub(rec.Seen) > min(g.cfg.IdleTimeout/16, time.Minute) {
		rec.Seen = now
		g.storeRecord(ctx, id, rec)
	}
	return id, rec
}

func (g *Gateway) loadRecord(ctx context.Context, id string) (*record, error) {
	b, err := g.cfg.Storage.Load(ctx, g.storageKey("cookies", id))
	if err != nil {
		return nil, err
	}
	rec := new(record)
	if err := json.Unmarshal(b, rec); err != nil || rec.Key == "" {
		return nil, errors.New("malformed cookie record")
	}
	return rec, nil
}

func (g *Gateway) storeRecord(ctx context.Context, id string, rec *record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = g.cfg.Storage.Store(ctx, g.storageKey("cookies", id), b)
	if err != nil {
		g.cfg.Logger.Error("storing per-user cookie record", zap.String("template", g.cfg.Template), zap.Error(err))
	}
	return err
}

func (g *Gateway) deleteRecord(ctx context.Context, id string) {
	if err := g.cfg.Storage.Delete(ctx, g.storageKey("cookies", id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		g.cfg.Logger.Warn("deleting per-user cookie record", zap.String("template", g.cfg.Template), zap.Error(err))
	}
}

// pendingLogout is a logout whose revocation at the token server is
// still to be made: of Key's session while its DPoP key is JKT.
type pendingLogout struct {
	Key   string    `json:"key"`
	JKT   string    `json:"jkt"`
	Since time.Time `json:"since"`
}

// pendLogout records id's logout for the sweep to revoke at the server.
func (g *Gateway) pendLogout(ctx context.Context, id *identity) {
	p := pendingLogout{Key: id.key, JKT: id.keyThumbprint(), Since: g.cfg.Now()}
	b, err := json.Marshal(p)
	if err == nil {
		err = g.cfg.Storage.Store(ctx, g.storageKey("logouts", p.Key+"\x00"+p.JKT), b)
	}
	if err != nil {
		g.cfg.Logger.Error("per-user logout: recording the revocation to retry failed",
			zap.String("template", g.cfg.Template), zap.Error(err))
	}
}

// retryLogout tries a pending logout again and reports whether it is done
// with: revoked, or the session is no longer the one logged out of (a
// later login replaced it, revoking it, or it ended).
func (g *Gateway) retryLogout(ctx context.Context, b []byte) bool {
	var p pendingLogout
	if json.Unmarshal(b, &p) != nil || p.Key == "" || p.JKT == "" {
		return true
	}
	c, err := g.cfg.Sessions.Session(p.Key)
	if err == nil {
		err = c.LogoutKey(ctx, p.JKT)
	}
	if err != nil && !errors.Is(err, tokencache.ErrReplaced) {
		g.cfg.Logger.Warn("per-user logout: revoking at the server failed again; retried at the next sweep",
			zap.String("template", g.cfg.Template), zap.String("user", p.Key), zap.Error(err))
		return false
	}
	return true
}

// sweepEvery is how often expired records are looked for.
const sweepEvery = 10 * time.Minute

func (g *Gateway) sweeper() {
	defer close(g.done)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), sweepEvery/2)
			n, err := g.Sweep(ctx)
			cancel()
			if err != nil || n > 0 {
				g.cfg.Logger.Info("per-user records swept", zap.String("template", g.cfg.Template),
					zap.Int("deleted", n), zap.Error(err))
			}
		}
	}
}

// Sweep deletes the expired cookie records and OAuth logins in progress,
// retries the pending logouts, and returns how many records it deleted. Every instance sharing the storage
// sweeps; deleting twice is harmless.
func (g *Gateway) Sweep(ctx context.Context) (int, error) {
	now, n := g.cfg.Now(), 0
	for _, kind := range []string{"cookies", "flows", "logouts"} {
		dir := strings.TrimSuffix(g.storageKey(kind, ""), "/"+lastElem(g.storageKey(kind, "")))
		keys, err := g.cfg.Storage.List(ctx, dir, false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return n, err
		}
		for _, k := range keys {
			b, err := g.cfg.Storage.Load(ctx, k)
			if err != nil {
				continue
			}
			var dead bool
			switch kind {
			case "cookies":
				rec := new(record)
				dead = json.Unmarshal(b, rec) != nil || g.expired(rec, now)
			case "logouts":
				dead = g.retryLogout(ctx, b)
			default:
				var f struct {
					Expires time.Time `json:"expires"`
				}
				dead = json.Unmarshal(b, &f) != nil || !now.Before(f.Expires)
			}
			if dead && g.cfg.Storage.Delete(ctx, k) == nil {
				n++
			}
		}
	}
	return n, nil
}

func lastElem(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }
