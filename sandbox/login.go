package sandbox

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

type identifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (id *identifier) validate() *apiError {
	bad := apiErr(http.StatusBadRequest, "invalid_identifier", "")
	switch {
	case id == nil:
		bad.message = "identifier is required"
	case id.Type == "email_address" && !strings.Contains(id.Value, "@"):
		bad.message = "not an email address"
	case id.Type == "phone_number" && !e164.MatchString(id.Value):
		bad.message = "not an E.164 phone number"
	case id.Type != "email_address" && id.Type != "phone_number":
		bad.message = `type must be "email_address" or "phone_number"`
	default:
		return nil
	}
	return bad
}

// startVerification reads an OTP start body and sends a code (the sandbox
// "sends" DefaultOTPCode, which LastOTP reports). Unknown identifiers get
// an account on the spot so tests need no set-up. The documented flow
// (not viaCookie) also sends the code of a step-up challenge named by
// challenge_token instead of an identifier. It returns the new
// verification's handle.
func (s *Sandbox) startVerification(r *http.Request, viaCookie bool) (string, *apiError) {
	var body struct {
		Identifier     *identifier `json:"identifier"`
		ChallengeToken string      `json:"challenge_token"`
		LoginConfigID  string      `json:"login_config_id"`
		DispatchID     string      `json:"dispatch_id"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return "", aerr
	}
	switch {
	case body.ChallengeToken != "" && (viaCookie || body.Identifier != nil):
		return "", errBadRequest("send either identifier or challenge_token, the latter to /v1/session/otp only")
	case body.ChallengeToken != "":
		return s.startStepUpOTP(r, body.ChallengeToken)
	}
	if aerr := body.Identifier.validate(); aerr != nil {
		return "", aerr
	}
	ident := normalizeIdentifier(body.Identifier.Value)
	handle := randomToken()
	s.mu.Lock()
	s.verifications[handle] = &verification{user: s.userFor(ident), code: DefaultOTPCode,
		expires: s.now().Add(verificationLifetime), viaCookie: viaCookie}
	s.lastOTP[ident] = DefaultOTPCode
	s.mu.Unlock()
	return handle, nil
}

// handleOTP starts a login in the documented flow: the verification
// travels in X-Verification-Token.
func (s *Sandbox) handleOTP(w http.ResponseWriter, r *http.Request) *apiError {
	vt, aerr := s.startVerification(r, false)
	if aerr != nil {
		return aerr
	}
	w.Header().Set("X-Verification-Token", vt)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleLoginOTP starts a login in the current (web SDK 0.6.0) flow: the
// verification lives in a cookie.
func (s *Sandbox) handleLoginOTP(w http.ResponseWriter, r *http.Request) *apiError {
	handle, aerr := s.startVerification(r, true)
	if aerr != nil {
		return aerr
	}
	http.SetCookie(w, verificationCookie(r, handle, verificationLifetime))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// verificationCookie is the cookie that carries a current-flow verification,
// named as the docs name it (__verification-login_{app_id}); Secure over
// TLS only, since over http a client would not send a Secure cookie back.
func verificationCookie(r *http.Request, value string, ttl time.Duration) *http.Cookie {
	c := &http.Cookie{Name: cookieVerification, Value: value, Path: "/", MaxAge: int(ttl / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
	if ttl < 0 {
		c.MaxAge, c.Value = -1, ""
	}
	return c
}

// cookieVerification names the verification cookie (the service adds the
// app id; the sandbox is one app).
const cookieVerification = "__verification-login_" + appID

// oldVerificationCookies are names earlier sandboxes (and newer docs'
// __Host- variant) used, still accepted.
var oldVerificationCookies = []string{"__Host-verification-login_" + appID, "verification-login_" + appID}

// verificationFromCookie returns the current-flow verification r names,
// removing it when expired; callers hold mu.
func (s *Sandbox) verificationFromCookie(r *http.Request) (string, *verification) {
	for _, name := range append([]string{cookieVerification}, oldVerificationCookies...) {
		if c, err := r.Cookie(name); err == nil {
			if v := s.liveVerification(c.Value); v != nil && v.viaCookie {
				return c.Value, v
			}
		}
	}
	return "", nil
}

// liveVerification returns the unexpired verification called handle;
// callers hold mu.
func (s *Sandbox) liveVerification(handle string) *verification {
	v := s.verifications[handle]
	if v != nil && !s.now().Before(v.expires) {
		delete(s.verifications, handle)
		return nil
	}
	return v
}

// handleLoginOTPCheck completes a current-flow login: the cookie names the
// verification, the code proves it, and the DPoP proof's key is pinned to
// the new session, whose tokens come back directly (no finalize). The
// proof is checked before the code so a bad proof cannot burn it; a wrong
// code can be corrected.
func (s *Sandbox) handleLoginOTPCheck(w http.ResponseWriter, r *http.Request) *apiError {
	code, challenge, aerr := readCode(r)
	if aerr != nil {
		return aerr
	}
	if challenge != "" {
		return errBadRequest("step-up codes are checked at /v1/session/otp/check")
	}
	previous, _, aerr := singleHeader(r, "X-Refresh-Token")
	if aerr != nil {
		return aerr
	}
	proof, aerr := s.checkProof(w, r, "", true)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	handle, v := s.verificationFromCookie(r)
	if v == nil {
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "no live verification cookie; start with /v1/session/login/otp")
	}
	if aerr := s.spendVerification(handle, v, code); aerr != nil {
		return aerr
	}
	http.SetCookie(w, verificationCookie(r, "", -1))
	return s.logIn(w, r, v.user, proof.Thumbprint, previous)
}

// handleLoginOTPRetry resends the code of a current-flow login.
func (s *Sandbox) handleLoginOTPRetry(w http.ResponseWriter, r *http.Request) *apiError {
	if aerr := decodeJSON(r, &struct{}{}, true); aerr != nil {
		return aerr
	}
	s.mu.Lock()
	_, v := s.verificationFromCookie(r)
	s.mu.Unlock()
	if v == nil {
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "no live verification cookie")
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleOTPRetry resends the code of a documented-flow login.
func (s *Sandbox) handleOTPRetry(w http.ResponseWriter, r *http.Request) *apiError {
	if aerr := decodeJSON(r, &struct{}{}, true); aerr != nil {
		return aerr
	}
	s.mu.Lock()
	_, _, aerr := s.verificationFromHeader(r)
	s.mu.Unlock()
	if aerr != nil {
		return aerr
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleOTPCheck trades a documented-flow verification and its code for a
// challenge token, or with challenge_token completes a step-up's OTP step.
// The verification is spent by the right code only, so a typo can be
// corrected.
func (s *Sandbox) handleOTPCheck(w http.ResponseWriter, r *http.Request) *apiError {
	code, challenge, aerr := readCode(r)
	if aerr != nil {
		return aerr
	}
	if challenge != "" {
		return s.checkStepUpOTP(w, r, code, challenge)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vt, v, aerr := s.verificationFromHeader(r)
	if aerr != nil {
		return aerr
	}
	if v.stepUp != nil {
		// Without this a step-up code would log its holder in.
		return apiErr(http.StatusBadRequest, "missing_challenge_token", "this code verifies a step-up; send its challenge_token")
	}
	if aerr := s.spendVerification(vt, v, code); aerr != nil {
		return aerr
	}
	return s.writeChallenge(w, r, v.user)
}

// readCode reads the {"code", "challenge_token"?} body of an OTP check.
func readCode(r *http.Request) (code, challenge string, aerr *apiError) {
	var body struct {
		Code           string `json:"code"`
		ChallengeToken string `json:"challenge_token"`
	}
	aerr = decodeJSON(r, &body, false)
	return body.Code, body.ChallengeToken, aerr
}

// verificationFromHeader returns the documented-flow verification that
// X-Verification-Token names; callers hold mu.
func (s *Sandbox) verificationFromHeader(r *http.Request) (string, *verification, *apiError) {
	vt, _, aerr := singleHeader(r, "X-Verification-Token")
	if aerr != nil {
		return "", nil, aerr
	}
	v := s.liveVerification(vt)
	if v == nil || v.viaCookie {
		return "", nil, apiErr(http.StatusBadRequest, "invalid_verification_token", "unknown or expired X-Verification-Token")
	}
	return vt, v, nil
}

// spendVerification checks code against v: a wrong code leaves it for
// another try, the right one spends it. Callers hold mu.
func (s *Sandbox) spendVerification(handle string, v *verification, code string) *apiError {
	if subtle.ConstantTimeCompare([]byte(code), []byte(v.code)) != 1 {
		return apiErr(http.StatusBadRequest, "bad_check_code", "wrong code")
	}
	delete(s.verifications, handle)
	return nil
}

func (s *Sandbox) handlePassword(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		Identifier string `json:"identifier"`
		Password   string `json:"password"`
		DispatchID string `json:"dispatch_id"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userByIdent[normalizeIdentifier(body.Identifier)]
	if u == nil || u.password == "" || subtle.ConstantTimeCompare([]byte(body.Password), []byte(u.password)) != 1 {
		return errUnauthorized("invalid_credentials", "wrong email or password")
	}
	return s.writeChallenge(w, r, u)
}

// writeChallenge answers a completed first factor; callers hold mu.
func (s *Sandbox) writeChallenge(w http.ResponseWriter, r *http.Request, u *user) *apiError {
	tok, err := s.mintChallenge(r, u)
	if err != nil {
		return errInternal(err)
	}
	writeJSON(w, http.StatusOK, map[string]string{"challenge_token": tok})
	return nil
}

// handleFinalize turns a challenge token into a session pinned to the
// proof's key. The proof is checked before the challenge is spent so a bad
// proof cannot burn it.
func (s *Sandbox) handleFinalize(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		ChallengeToken string `json:"challenge_token"`
		CodeVerifier   string `json:"code_verifier"` // PKCE is never demanded, so ignored
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	if body.ChallengeToken == "" {
		return apiErr(http.StatusBadRequest, "missing_challenge_token", "challenge_token is required")
	}
	previous, _, aerr := singleHeader(r, "X-Refresh-Token")
	if aerr != nil {
		return aerr
	}
	proof, aerr := s.checkProof(w, r, "", true)
	if aerr != nil {
		return aerr
	}
	var c challengeClaims
	if err := s.parseToken(body.ChallengeToken, &c.Claims, &c); err != nil || c.GrantMode != grantSessionStart {
		if errors.Is(err, jwt.ErrExpired) {
			return apiErr(http.StatusUnauthorized, "expired_challenge_token", "challenge token expired")
		}
		return apiErr(http.StatusUnauthorized, "invalid_challenge_token", "not a login challenge token")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.challenges[c.ID]
	switch {
	case ch == nil:
		return apiErr(http.StatusUnauthorized, "invalid_challenge_token", "unknown challenge token")
	case ch.used:
		return apiErr(http.StatusConflict, "token_reused", "challenge token already used")
	}
	ch.used = true
	return s.logIn(w, r, ch.user, proof.Thumbprint, previous)
}

// logIn starts a session for u bound to the DPoP key jkt, ends the session
// whose refresh token the client handed over, and answers with the grant.
// Both login flows end here. s.mu must be held.
func (s *Sandbox) logIn(w http.ResponseWriter, r *http.Request, u *user, jkt, previous string) *apiError {
	sess := s.newSession(u, jkt, r)
	s.revokePrevious(previous)
	g, aerr := s.issue(r, sess, true)
	if aerr != nil {
		return aerr
	}
	s.logins.Add(1)
	setRefreshCookie(w, r, g)
	writeGrant(w, g)
	return nil
}

// revokePrevious ends the session whose current refresh token a login
// handed over, so that re-login does not leave it alive; anything that does
// not name a live session is ignored. Callers hold mu.
func (s *Sandbox) revokePrevious(previous string) {
	if old := s.refreshTokens[previous]; old != nil && old.current == previous {
		old.revoked = true
	}
}

// grant is what finalize and refresh hand out.
type grant struct {
	access, refresh       string
	accessExp, refreshExp time.Time
}

// writeGrant answers g; a grant without a refresh token (not rotated)
// has no X-Refresh-Token headers.
func writeGrant(w http.ResponseWriter, g grant) {
	if g.refresh != "" {
		w.Header().Set("X-Refresh-Token", g.refresh)
		w.Header().Set("X-Refresh-Token-Expires-At", g.refreshExp.UTC().Format(time.RFC3339))
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": g.access, "expires_at": g.accessExp.Unix()})
}
