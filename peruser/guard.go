package peruser

import (
	"crypto/hmac"
	"encoding/base64"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
)

// limiter counts events per key in fixed windows. Every user reaches the
// token server from the gateway's address, so the gateway must stop one
// guesser before the server rate-limits everyone.
type limiter struct {
	max    int
	window time.Duration

	mu sync.Mutex
	m  map[string]*window
}

type window struct {
	start time.Time
	n     int
}

// maxLimiterKeys bounds a limiter's memory under a spray of keys (new
// addresses, made-up accounts): about 100 bytes a key.
const maxLimiterKeys = 100_000

func newLimiter(max int, w time.Duration) *limiter {
	return &limiter{max: max, window: w, m: map[string]*window{}}
}

// take counts one event of key and returns 0, or, when key is at its
// limit, counts nothing and returns how long key must wait. Checking and
// counting are one step, so concurrent attempts cannot all pass a check
// made before any of them is counted.
func (l *limiter) take(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.m[key]
	if w != nil && now.Sub(w.start) < l.window {
		if w.n >= l.max {
			return w.start.Add(l.window).Sub(now)
		}
		w.n++
		return 0
	}
	if w == nil && len(l.m) >= maxLimiterKeys {
		l.evict(now)
	}
	l.m[key] = &window{start: now, n: 1}
	return 0
}

// give takes back an event of key counted at at, if its window still
// runs.
func (l *limiter) give(key string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.m[key]; w != nil && !at.Before(w.start) && w.n > 0 {
		w.n--
	}
}

// evict makes room for a key: the expired windows go, and if none has
// expired, an arbitrary tenth of the keys (a sprayer can then reset some
// counts, never grow the memory).
func (l *limiter) evict(now time.Time) {
	for k, o := range l.m {
		if now.Sub(o.start) >= l.window {
			delete(l.m, k)
		}
	}
	for k := range l.m {
		if len(l.m) < maxLimiterKeys*9/10 {
			break
		}
		delete(l.m, k)
	}
}

// addressKey is the login limits' key for a client IP: every IPv6 client
// holds at least a /64 and can take a new address in it per attempt, so
// its /64 counts as one address.
func addressKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if a = a.Unmap(); a.Is4() {
		return a.String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// safeReturn reports whether s is a path on this site to return to after a
// login: absolute path, no scheme or host (not "//evil", not "/\evil"), no
// control characters.
func safeReturn(s string) bool {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") || len(s) > 2048 {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return false
		}
	}
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "" && u.Host == "" && u.User == nil
}

// returnTo is the checked return path of a login form or link, "/" when
// absent or unsafe.
func returnTo(v string) string {
	if safeReturn(v) {
		return v
	}
	return "/"
}

// sameOrigin reports whether a state-changing request comes from a page of
// this site: a browser's Sec-Fetch-Site says so, and an Origin, when sent,
// is this site's. Clients that send neither still need the CSRF token.
func (g *Gateway) sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	scheme := "http"
	if g.cfg.Secure(r) {
		scheme = "https"
	}
	return strings.EqualFold(o, scheme+"://"+r.Host)
}

// csrfToken is the CSRF token of a logged-in user's forms: a keyed hash of
// the cookie's id (or, with KeyFrom, of the user's key), so it is valid
// for that browser's login only.
func (g *Gateway) csrfToken(id *identity) string {
	v := "cookie\x00" + id.cookie
	if id.cookie == "" {
		v = "key\x00" + id.key
	}
	return base64.RawURLEncoding.EncodeToString(g.mac("csrf", v)[:18])
}

// checkCSRF: same origin, and the form's token is this login's.
func (g *Gateway) checkCSRF(r *http.Request, id *identity) bool {
	return g.sameOrigin(r) && hmac.Equal([]byte(r.PostFormValue("csrf")), []byte(g.csrfToken(id)))
}

// flowCSRF is the CSRF token of a login form: a keyed hash of the browser's
// flow cookie, so a login cannot be posted from another site or browser
// (login CSRF).
func (g *Gateway) flowCSRF(flow string) string {
	return base64.RawURLEncoding.EncodeToString(g.mac("login-csrf", flow)[:18])
}
