package sandbox

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

type deviceInfo struct {
	Type, Model, OSVersion, Country string
	// ID is the X-Device-Id the session was created with (or first seen
	// with, for a client that sent none at first): the Prelude Auth SDKs
	// send one stable id per install, so another id on the session's
	// refresh token or access token is someone else's client.
	ID string `json:",omitempty"`
}

// headerDeviceID is the Prelude Auth SDKs' per-install id header.
const headerDeviceID = "X-Device-Id"

// checkDevice refuses a request on sess from another device than the one
// the session is bound to, and binds a session that has none yet. Callers
// hold mu.
func (s *Sandbox) checkDevice(r *http.Request, sess *session) *apiError {
	id := r.Header.Get(headerDeviceID)
	switch {
	case id == sess.device.ID:
		return nil
	case sess.device.ID == "":
		sess.device.ID = id
		return nil
	}
	return errUnauthorized("device_changed", "X-Device-Id is not the session's device")
}

// deviceFrom guesses what /me/list shows from the User-Agent; good enough
// to tell two test clients apart.
func deviceFrom(r *http.Request) deviceInfo {
	ua := r.UserAgent()
	d := deviceInfo{Type: "unknown", ID: r.Header.Get(headerDeviceID)}
	switch {
	case strings.Contains(ua, "iPad") || strings.Contains(ua, "Tablet"):
		d.Type = "tablet"
	case strings.Contains(ua, "iPhone") || strings.Contains(ua, "Android") || strings.Contains(ua, "Mobile"):
		d.Type = "mobile"
	case strings.Contains(ua, "Macintosh") || strings.Contains(ua, "Windows") || strings.Contains(ua, "X11"):
		d.Type = "desktop"
	}
	if product, _, _ := strings.Cut(ua, " "); len(product) <= 64 {
		d.Model = product
	}
	return d
}

// newSession creates a session for u pinned to jkt; callers hold mu and
// then issue its first tokens.
func (s *Sandbox) newSession(u *user, jkt string, r *http.Request) *session {
	now := s.now()
	sess := &session{
		id:        "ses_" + randomID(),
		user:      u,
		jkt:       jkt,
		createdAt: now,
		expiresAt: now.Add(sessionLifetime),
		device:    deviceFrom(r),
	}
	s.sessions[sess.id] = sess
	return sess
}

func (s *Sandbox) active(sess *session) bool {
	return !sess.revoked && s.now().Before(sess.expiresAt)
}

// issue mints an access token and, with rotate, rotates sess's refresh
// token (the old one becomes spent); without, the grant has no refresh
// token. Callers hold mu.
func (s *Sandbox) issue(r *http.Request, sess *session, rotate bool) (grant, *apiError) {
	access, exp, err := s.mintAccess(r, sess)
	if err != nil {
		return grant{}, errInternal(err)
	}
	sess.lastSeenAt = s.now()
	g := grant{access: access, accessExp: exp}
	if rotate {
		sess.current = randomToken()
		s.refreshTokens[sess.current] = sess
		g.refresh, g.refreshExp = sess.current, sess.expiresAt
	}
	return g, nil
}

// withRefreshToken authenticates the X-Refresh-Token and DPoP proof of a
// /refresh or /revoke and, with the state locked, hands the session to use.
// The proof is verified against the session's pinned key before the token's
// state is looked at, so neither a bad proof nor a stolen token without the
// key can spend it or trigger reuse revocation.
//
// logout marks a /revoke: one authorised by the refresh cookie alone may
// come without a proof (the web SDK logs out so when it has lost its DPoP
// key; revoking only ends the session). A proof that is sent is checked
// all the same, and every /refresh needs one.
func (s *Sandbox) withRefreshToken(w http.ResponseWriter, r *http.Request, logout bool, use func(*session) *apiError) *apiError {
	token, present, viaCookie, aerr := refreshTokenOf(r)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	sess := s.refreshTokens[token]
	s.mu.Unlock()
	jkt := ""
	if sess != nil {
		jkt = sess.jkt // immutable after creation
	}
	if _, aerr := s.checkProof(w, r, jkt, !(logout && viaCookie)); aerr != nil {
		return aerr
	}
	switch {
	case !present:
		return errUnauthorized("missing_refresh_token", "X-Refresh-Token or the "+cookieRefresh+" cookie is required")
	case sess == nil:
		return errUnauthorized("unknown_refresh_token", "unknown refresh token")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case sess.revoked:
		return errUnauthorized("session_revoked", "session revoked")
	case !s.active(sess):
		return errUnauthorized("session_expired", "session expired")
	case token != sess.current:
		// A spent token coming back means two parties hold the session's
		// tokens; the only safe answer is to end it for both.
		sess.revoked = true
		s.reuseEvents.Add(1)
		// 409 token_reused, the code and status the Prelude Auth SDKs
		// (Android 0.6, iOS 0.7) map to their TokenReused error.
		return &apiError{http.StatusConflict, "token_reused", "refresh_token_reused", "refresh token already used; session revoked"}
	}
	if aerr := s.checkDevice(r, sess); aerr != nil {
		return aerr
	}
	return use(sess)
}

func (s *Sandbox) handleRefresh(w http.ResponseWriter, r *http.Request) *apiError {
	s.refreshCalls.Add(1)
	defer s.enterRefresh()()
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	// Deliberately not cut short when the client gives up: like the real
	// service, a refresh the client abandoned may still rotate.
	time.Sleep(latency)

	var body struct {
		StepUpToken string `json:"step_up_token"`
	}
	if aerr := decodeJSON(r, &body, true); aerr != nil {
		return aerr
	}
	var stepUp *stepUpClaims
	if body.StepUpToken != "" {
		var aerr *apiError
		if stepUp, aerr = s.parseStepUp(body.StepUpToken); aerr != nil {
			return aerr
		}
	}
	var g grant
	var drop, faulty bool
	var fault Fault
	aerr := s.withRefreshToken(w, r, false, func(sess *session) *apiError {
		if fault, faulty = s.takeFault(); faulty && !fault.AfterRotate {
			return nil // answered below, nothing spent
		}
		if stepUp != nil {
			if aerr := s.grantStepUp(sess, stepUp); aerr != nil {
				return aerr
			}
		}
		var aerr *apiError
		if g, aerr = s.issue(r, sess, !s.takeSkipRotation()); aerr != nil {
			return aerr
		}
		if !faulty && s.dropAfter > 0 {
			s.dropAfter--
			drop = true
		}
		return nil
	})
	if aerr != nil {
		return aerr
	}
	if faulty && !fault.AfterRotate {
		if fault.Code == "use_dpop_nonce" {
			w.Header().Set("DPoP-Nonce", s.rotateNonce())
		}
		s.writeFault(w, fault)
		return nil
	}
	s.refreshSuccesses.Add(1)
	switch {
	case faulty:
		s.writeFault(w, fault)
	case drop:
		dropConnection(w)
	default:
		setRefreshCookie(w, r, g)
		writeGrant(w, g)
	}
	return nil
}

// enterRefresh counts a /refresh as in flight until the returned func runs.
func (s *Sandbox) enterRefresh() (leave func()) {
	n := s.inFlight.Add(1)
	for m := s.maxInFlight.Load(); n > m && !s.maxInFlight.CompareAndSwap(m, n); m = s.maxInFlight.Load() {
	}
	return func() { s.inFlight.Add(-1) }
}

// dropConnection closes the connection without a response. Where the
// connection cannot be hijacked (HTTP/2), aborting the handler resets the
// stream, which the client sees the same way.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

func (s *Sandbox) handleRevoke(w http.ResponseWriter, r *http.Request) *apiError {
	if aerr := decodeJSON(r, &struct{}{}, true); aerr != nil {
		return aerr
	}
	aerr := s.withRefreshToken(w, r, true, func(sess *session) *apiError {
		sess.revoked = true
		return nil
	})
	if aerr != nil {
		return aerr
	}
	s.revokes.Add(1)
	if fromBrowser(r) {
		http.SetCookie(w, refreshCookie(r, "", time.Time{}))
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// meSession authenticates a /me route: a valid access token of a live
// session, and if a DPoP proof is sent (Android does, iOS does not) it must
// be valid for the session's key.
func (s *Sandbox) meSession(w http.ResponseWriter, r *http.Request) (*session, *apiError) {
	c, aerr := s.bearer(w, r)
	if aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	sess := s.sessions[c.SessionID]
	live := sess != nil && s.active(sess)
	if live {
		aerr = s.checkDevice(r, sess)
	}
	s.mu.Unlock()
	if !live {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		return nil, errUnauthorized("session_revoked", "the token's session has ended")
	}
	if aerr != nil {
		return nil, aerr
	}
	if _, aerr := s.checkProof(w, r, sess.jkt, false); aerr != nil {
		return nil, aerr
	}
	return sess, nil
}

type sessionView struct {
	ID          string `json:"id"`
	DeviceType  string `json:"device_type"`
	DeviceModel string `json:"device_model"`
	OSVersion   string `json:"os_version"`
	CountryCode string `json:"country_code"`
	CreatedAt   string `json:"created_at"`
	LastSeenAt  string `json:"last_seen_at"`
	ExpiresAt   string `json:"expires_at"`
}

func (s *Sandbox) handleMeList(w http.ResponseWriter, r *http.Request) *apiError {
	q := r.URL.Query()
	limit, ok := queryInt(q.Get("limit"), 10, 1, 100)
	if !ok {
		return apiErr(http.StatusBadRequest, "invalid_pagination_limit", "limit must be an integer from 1 to 100")
	}
	offset, ok := queryInt(q.Get("offset"), 0, 0, 1<<31-1)
	if !ok {
		return apiErr(http.StatusBadRequest, "invalid_pagination_offset", "offset must be a non-negative integer")
	}
	me, aerr := s.meSession(w, r)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	mine := s.liveSessionsOf(me.user)
	views := make([]sessionView, 0, limit)
	for _, sess := range mine[min(offset, len(mine)):min(offset+limit, len(mine))] {
		views = append(views, sessionView{
			ID: sess.id, DeviceType: sess.device.Type, DeviceModel: sess.device.Model,
			OSVersion: sess.device.OSVersion, CountryCode: sess.device.Country,
			CreatedAt: rfc3339(sess.createdAt), LastSeenAt: rfc3339(sess.lastSeenAt), ExpiresAt: rfc3339(sess.expiresAt),
		})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"sessions": views, "total": len(mine), "limit": limit, "offset": offset})
	return nil
}

// liveSessionsOf lists u's active sessions oldest first, so paging is
// stable; callers hold mu.
func (s *Sandbox) liveSessionsOf(u *user) []*session {
	var out []*session
	for _, sess := range s.sessions {
		if sess.user == u && s.active(sess) {
			out = append(out, sess)
		}
	}
	slices.SortFunc(out, func(a, b *session) int {
		if c := a.createdAt.Compare(b.createdAt); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return out
}

func (s *Sandbox) handleMeRevoke(w http.ResponseWriter, r *http.Request) *apiError {
	if aerr := decodeJSON(r, &struct{}{}, true); aerr != nil {
		return aerr
	}
	q := r.URL.Query()
	target, id := q.Get("target"), q.Get("session_id")
	switch {
	case target != "all" && target != "others" && target != "mine" && target != "session":
		return errBadRequest(`target must be "all", "others", "mine" or "session"`)
	case target == "session" && id == "":
		return errBadRequest("session_id is required with target=session")
	}
	me, aerr := s.meSession(w, r)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var victims []*session
	for _, sess := range s.liveSessionsOf(me.user) {
		if target == "all" || (target == "others" && sess != me) || (target == "mine" && sess == me) || sess.id == id && target == "session" {
			victims = append(victims, sess)
		}
	}
	if target == "session" && len(victims) == 0 {
		return errNotFound("no such session")
	}
	for _, sess := range victims {
		sess.revoked = true
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// queryInt parses an optional integer query parameter within [lo, hi].
func queryInt(v string, def, lo, hi int) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	return n, err == nil && n >= lo && n <= hi
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }
