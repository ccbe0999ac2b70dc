package sandbox

import (
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Step-up as the reference (§3.5) describes it: /stepup/request opens a
// challenge for one scope on the caller's session (Bearer; a DPoP proof,
// which the mobile SDKs send and web SDK 0.6.0 does not, is checked when
// sent), an e-mailed (or texted)
// OTP bound to that challenge completes it, and /refresh with the final
// challenge token as step_up_token mints an access token carrying the scope
// for granted_for. The sandbox has one step per challenge, the OTP; custom
// steps (/stepup/continue with a customer's verification token) are not
// configurable, so continue refuses every step it is shown.

// DefaultStepUpGrantedFor is how long a granted step-up scope stays in the
// session's access tokens: the docs' example granted_for of 43200 s.
const DefaultStepUpGrantedFor = 12 * time.Hour

const (
	grantSessionBound = "session-bound"
	stepCompleted     = "completed"
)

// stepUpScope is the docs' pattern for a requested scope.
var stepUpScope = regexp.MustCompile(`^[a-zA-Z0-9.\-_:]+$`)

// stepUp is one step-up challenge. Only the newest challenge token (jti)
// may move it on; it is spent by the refresh that grants its scope.
type stepUp struct {
	id           string
	sess         *session
	scope        string
	step         string // otpStep or completed
	otpStep      string // verify_email or verify_sms
	jti          string // the live challenge token's
	ident        string // where the OTP goes
	verification string // handle of the OTP sent for the current step
	spent        bool
}

// stepUpClaims are the claims of a step-up challenge token that the SDKs
// read (the web SDK 0.6.0 hands scope_requested, sid and steps to its
// onChallenge callback).
type stepUpClaims struct {
	jwt.Claims
	GrantMode   string       `json:"grant_mode"`
	ChallengeID string       `json:"challenge_id"`
	CurrentStep string       `json:"current_step"`
	Scope       string       `json:"scope_requested"`
	SessionID   string       `json:"sid"`
	Steps       []stepUpStep `json:"steps"`
}

// stepUpStep is one entry of a challenge token's steps.
type stepUpStep struct {
	Order              int    `json:"order"`
	Key                string `json:"key"`
	ExpirationDuration int64  `json:"expiration_duration"` // seconds
	Done               bool   `json:"done"`
}

// mintStepUp signs su's next challenge token and makes it the only live
// one; callers hold mu.
func (s *Sandbox) mintStepUp(r *http.Request, su *stepUp) (string, *apiError) {
	c := stepUpClaims{Claims: s.stdClaims(r, su.sess.user.id, challengeLifetime), GrantMode: grantSessionBound,
		ChallengeID: su.id, CurrentStep: su.step, Scope: su.scope, SessionID: su.sess.id,
		Steps: []stepUpStep{{Order: 1, Key: su.otpStep, ExpirationDuration: int64(verificationLifetime / time.Second), Done: su.step == stepCompleted}}}
	tok, err := s.sign(c)
	if err != nil {
		return "", errInternal(err)
	}
	su.jti = c.ID
	return tok, nil
}

// parseStepUp checks a step-up challenge token's signature, times and kind.
func (s *Sandbox) parseStepUp(token string) (*stepUpClaims, *apiError) {
	if token == "" {
		return nil, apiErr(http.StatusBadRequest, "missing_challenge_token", "challenge_token is required")
	}
	var c stepUpClaims
	if err := s.parseToken(token, &c.Claims, &c); err != nil || c.GrantMode != grantSessionBound || c.ChallengeID == "" {
		if errors.Is(err, jwt.ErrExpired) {
			return nil, apiErr(http.StatusUnauthorized, "expired_challenge_token", "challenge token expired")
		}
		return nil, apiErr(http.StatusUnauthorized, "invalid_challenge_token", "not a step-up challenge token")
	}
	return &c, nil
}

// liveStepUp returns the challenge c names if c is its newest token and
// its session is still live; callers hold mu.
func (s *Sandbox) liveStepUp(c *stepUpClaims) (*stepUp, *apiError) {
	su := s.stepUps[c.ChallengeID]
	switch {
	case su == nil:
		return nil, apiErr(http.StatusUnauthorized, "invalid_challenge_token", "unknown challenge")
	case su.spent:
		return nil, &apiError{http.StatusConflict, "token_reused", "step_up_token_reused", "step-up challenge already used"}
	case su.jti != c.ID:
		return nil, apiErr(http.StatusUnauthorized, "invalid_challenge_token", "a newer challenge token replaced this one")
	case !s.active(su.sess):
		return nil, apiErr(http.StatusUnauthorized, "invalid_challenge_token", "the challenge's session has ended")
	}
	return su, nil
}

func (s *Sandbox) handleStepUpRequest(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		Scope      string            `json:"scope"`
		Metadata   map[string]string `json:"metadata"`
		DispatchID string            `json:"dispatch_id"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	if !stepUpScope.MatchString(body.Scope) {
		return errBadRequest("scope must match " + stepUpScope.String())
	}
	if aerr := checkMetadata(body.Metadata); aerr != nil {
		return aerr
	}
	sess, aerr := s.meSession(w, r)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	su := &stepUp{id: "chl_" + randomID(), sess: sess, scope: body.Scope, ident: s.identOf(sess.user)}
	su.otpStep = "verify_sms"
	if strings.Contains(su.ident, "@") {
		su.otpStep = "verify_email"
	}
	su.step = su.otpStep
	tok, aerr := s.mintStepUp(r, su)
	if aerr != nil {
		return aerr
	}
	s.stepUps[su.id] = su
	// "review": a challenge was created (newer docs; "continue" would mean
	// granted outright, which the sandbox never does).
	writeJSON(w, http.StatusOK, map[string]string{"status": "review", "challenge_token": tok})
	return nil
}

// checkMetadata applies the documented limits: at most 5 keys of at most
// 12 characters, values of at most 32 (320 for the reserved identifier).
func checkMetadata(m map[string]string) *apiError {
	bad := func(msg string) *apiError { return apiErr(http.StatusBadRequest, "invalid_metadata", msg) }
	if len(m) > 5 {
		return bad("at most 5 metadata keys")
	}
	for k, v := range m {
		limit := 32
		if k == "identifier" {
			limit = 320
		}
		if len(k) > 12 || len(v) > limit {
			return bad("metadata key or value too long")
		}
	}
	return nil
}

// identOf is where u's step-up codes go: an identifier u logged in with
// (the first in order, so tests know which); callers hold mu.
func (s *Sandbox) identOf(u *user) string {
	var idents []string
	for ident, owner := range s.userByIdent {
		if owner == u {
			idents = append(idents, ident)
		}
	}
	slices.Sort(idents)
	if len(idents) == 0 {
		return u.email
	}
	return idents[0]
}

// startStepUpOTP sends the code for the step the challenge token is at and
// returns the verification's handle.
func (s *Sandbox) startStepUpOTP(r *http.Request, token string) (string, *apiError) {
	c, aerr := s.parseStepUp(token)
	if aerr != nil {
		return "", aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	su, aerr := s.liveStepUp(c)
	if aerr != nil {
		return "", aerr
	}
	if su.step == stepCompleted {
		return "", apiErr(http.StatusBadRequest, "step_not_found", "the challenge has no step left to verify")
	}
	delete(s.verifications, su.verification)
	su.verification = randomToken()
	s.verifications[su.verification] = &verification{user: su.sess.user, code: DefaultOTPCode,
		expires: s.now().Add(verificationLifetime), stepUp: su}
	s.lastOTP[su.ident] = DefaultOTPCode
	return su.verification, nil
}

// checkStepUpOTP completes the challenge's OTP step. The proof is
// challenge-bound (jti = the challenge token's jti, no nonce, signed by
// the session's key) and checked before the code; a wrong code leaves the
// step open for another try with the same token.
func (s *Sandbox) checkStepUpOTP(w http.ResponseWriter, r *http.Request, code, token string) *apiError {
	c, aerr := s.parseStepUp(token)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	su, aerr := s.liveStepUp(c)
	s.mu.Unlock()
	if aerr != nil {
		return aerr
	}
	if aerr := s.checkChallengeProof(r, su.sess.jkt, c.ID); aerr != nil {
		return aerr
	}
	vt, _, aerr := singleHeader(r, "X-Verification-Token")
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, aerr := s.liveStepUp(c); aerr != nil { // raced another check
		return aerr
	}
	v := s.liveVerification(su.verification)
	switch {
	case v == nil || v.stepUp != su:
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "no code was sent for this step; POST /v1/session/otp with the challenge_token first")
	case vt != "" && vt != su.verification:
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "X-Verification-Token is not this challenge's")
	}
	if aerr := s.spendVerification(su.verification, v, code); aerr != nil {
		return aerr
	}
	su.verification, su.step = "", stepCompleted
	tok, aerr := s.mintStepUp(r, su)
	if aerr != nil {
		return aerr
	}
	writeJSON(w, http.StatusOK, map[string]string{"challenge_token": tok})
	return nil
}

// checkChallengeProof verifies a challenge-bound DPoP proof: required,
// signed by the session's key jkt, jti equal to the challenge token's and
// no nonce (the SDKs neither add one nor retry on use_dpop_nonce here).
func (s *Sandbox) checkChallengeProof(r *http.Request, jkt, jti string) *apiError {
	proof, aerr := singleProof(r, true)
	if aerr != nil || proof == "" {
		return aerr
	}
	v, err := s.verifier.Verify(proof, dpop.Expect{Method: r.Method, URL: requestURL(r), Thumbprint: jkt, JTI: jti})
	switch {
	case errors.Is(err, dpop.ErrKeyMismatch):
		return &apiError{http.StatusUnauthorized, "dpop_key_mismatch", dpop.Reason(err), "proof is not signed by the key bound to this session"}
	case err != nil:
		return invalidProof(dpop.Reason(err), err.Error())
	case v.Claims.Nonce != "":
		return invalidProof("challenge_proof_nonce", "a challenge-bound proof carries no nonce")
	}
	return nil
}

func (s *Sandbox) handleStepUpContinue(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		ChallengeToken    string `json:"challenge_token"`
		VerificationToken string `json:"verification_token"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	sess, aerr := s.meSession(w, r)
	if aerr != nil {
		return aerr
	}
	c, aerr := s.parseStepUp(body.ChallengeToken)
	if aerr != nil {
		return aerr
	}
	if body.VerificationToken == "" {
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "verification_token is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	su, aerr := s.liveStepUp(c)
	switch {
	case aerr != nil:
		return aerr
	case su.sess != sess:
		return apiErr(http.StatusBadRequest, "token_mismatch", "the challenge belongs to another session")
	case su.step == stepCompleted:
		return apiErr(http.StatusBadRequest, "step_not_found", "the challenge has no step left to verify")
	}
	return apiErr(http.StatusBadRequest, "step_bypassed", "the current step is "+su.step+", verified by OTP, not by a custom verification token")
}

// grantStepUp spends the completed challenge named by token for sess and
// adds its scope to sess for granted_for; callers hold mu.
func (s *Sandbox) grantStepUp(sess *session, c *stepUpClaims) *apiError {
	su, aerr := s.liveStepUp(c)
	switch {
	case aerr != nil:
		return aerr
	case su.sess != sess:
		return apiErr(http.StatusBadRequest, "token_mismatch", "the step-up token belongs to another session")
	case su.step != stepCompleted:
		return apiErr(http.StatusBadRequest, "step_not_completed", "the challenge's steps are not all verified")
	}
	su.spent = true
	if sess.scopes == nil {
		sess.scopes = make(map[string]time.Time)
	}
	sess.scopes[su.scope] = s.now().Add(s.grantedFor)
	return nil
}

// scopeClaim lists sess's unexpired step-up scopes; callers hold mu.
func (s *Sandbox) scopeClaim(sess *session) string {
	var out []string
	now := s.now()
	for scope, until := range sess.scopes {
		if now.Before(until) {
			out = append(out, scope)
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}
