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

// handleOTP starts an OTP login. Unknown identifiers get an account on the
// spot so tests need no set-up.
func (s *Sandbox) handleOTP(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		Identifier    *identifier `json:"identifier"`
		LoginConfigID string      `json:"login_config_id"`
		DispatchID    string      `json:"dispatch_id"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	if aerr := body.Identifier.validate(); aerr != nil {
		return aerr
	}
	ident := normalizeIdentifier(body.Identifier.Value)
	vt := randomToken()
	s.mu.Lock()
	s.verifications[vt] = &verification{user: s.userFor(ident), code: DefaultOTPCode, expires: s.now().Add(verificationLifetime)}
	s.lastOTP[ident] = DefaultOTPCode
	s.mu.Unlock()
	w.Header().Set("X-Verification-Token", vt)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleOTPCheck trades a verification and its code for a challenge token.
// The verification is spent by the right code only, so a typo can be
// corrected.
func (s *Sandbox) handleOTPCheck(w http.ResponseWriter, r *http.Request) *apiError {
	var body struct {
		Code string `json:"code"`
	}
	if aerr := decodeJSON(r, &body, false); aerr != nil {
		return aerr
	}
	vt, _, aerr := singleHeader(r, "X-Verification-Token")
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.verifications[vt]
	if v == nil || !s.now().Before(v.expires) {
		delete(s.verifications, vt)
		return apiErr(http.StatusBadRequest, "invalid_verification_token", "unknown or expired X-Verification-Token")
	}
	if subtle.ConstantTimeCompare([]byte(body.Code), []byte(v.code)) != 1 {
		return apiErr(http.StatusBadRequest, "bad_check_code", "wrong code")
	}
	delete(s.verifications, vt)
	return s.writeChallenge(w, r, v.user)
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
	sess := s.newSession(ch.user, proof.Thumbprint, r)
	// The client hands over its previous session so that re-login does not
	// leave it alive; anything that does not name a live session is ignored.
	if old := s.refreshTokens[previous]; old != nil && old.current == previous {
		old.revoked = true
	}
	g, aerr := s.issue(r, sess)
	if aerr != nil {
		return aerr
	}
	s.logins.Add(1)
	writeGrant(w, g)
	return nil
}

// grant is what finalize and refresh hand out.
type grant struct {
	access, refresh       string
	accessExp, refreshExp time.Time
}

func writeGrant(w http.ResponseWriter, g grant) {
	w.Header().Set("X-Refresh-Token", g.refresh)
	w.Header().Set("X-Refresh-Token-Expires-At", g.refreshExp.UTC().Format(time.RFC3339))
	writeJSON(w, http.StatusOK, map[string]any{"access_token": g.access, "expires_at": g.accessExp.Unix()})
}
