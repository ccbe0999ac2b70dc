package sandbox

import (
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

const stepUpEmail = "step@example.com"

// stepUpEnv is a logged-in OTP user whose DPoP key the test also holds raw,
// to sign challenge-bound proofs (jti chosen by the server) that dpop.Key
// does not make.
type stepUpEnv struct {
	srv     *Server
	clock   *fakeClock
	c       *client
	priv    *ecdsa.PrivateKey
	refresh string
	access  string
}

func newStepUpEnv(t *testing.T) *stepUpEnv {
	t.Helper()
	clock := newFakeClock()
	srv := NewServer(t, Options{Now: clock.Now, StepUpGrantedFor: 10 * time.Minute})
	priv, key := newRawKey(t)
	c := &client{t: t, base: srv.URL, key: key, now: clock.Now}
	e := &stepUpEnv{srv: srv, clock: clock, c: c, priv: priv}
	e.refresh, e.access = c.login(stepUpEmail, "")
	return e
}

// challengeClaimsOf reads a challenge token's claims as an SDK does,
// without verifying it.
func challengeClaimsOf(t testing.TB, token string) stepUpClaims {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var c stepUpClaims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// request starts a step-up for scope and checks the challenge's shape.
func (e *stepUpEnv) request(scope string) string {
	t := e.c.t
	t.Helper()
	r := e.c.dpopCall("POST", "/v1/session/stepup/request", bearer(e.access), fmt.Sprintf(`{"scope":%q}`, scope))
	expect(t, r, http.StatusOK, "")
	var body struct {
		Status         string `json:"status"`
		ChallengeToken string `json:"challenge_token"`
	}
	r.decode(t, &body)
	c := challengeClaimsOf(t, body.ChallengeToken)
	if body.Status != "review" || c.CurrentStep != "verify_email" || c.GrantMode != "session-bound" || c.ChallengeID == "" || c.Scope != scope ||
		len(c.Steps) != 1 || c.Steps[0].Key != "verify_email" || c.Steps[0].Done {
		t.Fatalf("step-up request: %v, claims %+v", r, c)
	}
	return body.ChallengeToken
}

// sendOTP asks for the challenge's code and returns X-Verification-Token.
func (e *stepUpEnv) sendOTP(challenge string) string {
	t := e.c.t
	t.Helper()
	r := call(t, "POST", e.srv.URL+"/v1/session/otp", nil, fmt.Sprintf(`{"challenge_token":%q}`, challenge))
	expect(t, r, http.StatusNoContent, "")
	if e.srv.LastOTP(stepUpEmail) != DefaultOTPCode || r.Header.Get("X-Verification-Token") == "" {
		t.Fatalf("no code sent: %v %v", r, r.Header)
	}
	return r.Header.Get("X-Verification-Token")
}

// boundProof signs the proof /otp/check wants for challenge: its jti, no
// nonce; mutate may change the claims.
func (e *stepUpEnv) boundProof(challenge string, mutate func(map[string]any)) string {
	claims := map[string]any{"jti": challengeClaimsOf(e.c.t, challenge).ID, "htm": "POST",
		"htu": e.srv.URL + "/v1/session/otp/check", "iat": e.clock.Now().Unix()}
	if mutate != nil {
		mutate(claims)
	}
	hdr := map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": publicJWK(e.c.t, e.priv)}
	return forge(e.c.t, e.priv, hdr, claims)
}

func (e *stepUpEnv) check(challenge, vt, code, proof string) reply {
	hdr := http.Header{"X-Verification-Token": {vt}}
	if proof != "" {
		hdr.Set("DPoP", proof)
	}
	return call(e.c.t, "POST", e.srv.URL+"/v1/session/otp/check", hdr, fmt.Sprintf(`{"code":%q,"challenge_token":%q}`, code, challenge))
}

// complete runs a requested challenge to its final token.
func (e *stepUpEnv) complete(challenge string) string {
	t := e.c.t
	t.Helper()
	vt := e.sendOTP(challenge)
	final := challengeFrom(t, e.check(challenge, vt, DefaultOTPCode, e.boundProof(challenge, nil)))
	if c := challengeClaimsOf(t, final); c.CurrentStep != "completed" {
		t.Fatalf("final challenge at step %q", c.CurrentStep)
	}
	return final
}

func (e *stepUpEnv) refreshWith(stepUpToken string) reply {
	return e.c.dpopCall("POST", "/v1/session/refresh", http.Header{"X-Refresh-Token": {e.refresh}}, fmt.Sprintf(`{"step_up_token":%q}`, stepUpToken))
}

func (e *stepUpEnv) scopeOf(access string) string {
	c, err := e.srv.VerifyAccessToken(access)
	if err != nil {
		e.c.t.Fatal(err)
	}
	return c.Scope
}

// TestStepUpFlow: request → OTP (a wrong code first, retried with the same
// challenge and proof jti) → refresh with step_up_token mints an access
// token with the scope, which later refreshes keep for granted_for only.
func TestStepUpFlow(t *testing.T) {
	e := newStepUpEnv(t)
	if s := e.scopeOf(e.access); s != "" {
		t.Fatalf("scope before step-up = %q", s)
	}
	challenge := e.request("transfer:write")
	expect(t, e.refreshWith(challenge), http.StatusBadRequest, "step_not_completed")
	vt := e.sendOTP(challenge)
	expect(t, e.check(challenge, vt, "000000", e.boundProof(challenge, nil)), http.StatusBadRequest, "bad_check_code")
	final := challengeFrom(t, e.check(challenge, vt, DefaultOTPCode, e.boundProof(challenge, nil)))
	if c := challengeClaimsOf(t, final); c.CurrentStep != "completed" || !c.Steps[0].Done || c.ID == challengeClaimsOf(t, challenge).ID {
		t.Fatalf("final challenge %+v", c)
	}
	// The code is spent with its step.
	expect(t, e.check(challenge, vt, DefaultOTPCode, e.boundProof(challenge, nil)), http.StatusUnauthorized, "invalid_challenge_token")

	r := e.refreshWith(final)
	expect(t, r, http.StatusOK, "")
	e.refresh, e.access = e.c.grant(r)
	if s := e.scopeOf(e.access); s != "transfer:write" {
		t.Fatalf("scope after step-up = %q", s)
	}
	e.clock.Advance(9 * time.Minute)
	e.refresh, e.access = e.c.mustRefresh(e.refresh)
	if s := e.scopeOf(e.access); s != "transfer:write" {
		t.Fatalf("scope within granted_for = %q", s)
	}
	e.clock.Advance(2 * time.Minute)
	e.refresh, e.access = e.c.mustRefresh(e.refresh)
	if s := e.scopeOf(e.access); s != "" {
		t.Fatalf("scope after granted_for = %q", s)
	}
}

// TestStepUpTokenReplayed: a step_up_token grants once; shown again it is
// token_reused and spends nothing, and another session cannot use it.
func TestStepUpTokenReplayed(t *testing.T) {
	e := newStepUpEnv(t)
	final := e.complete(e.request("transfer:write"))

	other := &client{t: t, base: e.srv.URL, key: newKey(t), now: e.clock.Now}
	otherRefresh, _ := other.login(stepUpEmail, "")
	r := other.dpopCall("POST", "/v1/session/refresh", http.Header{"X-Refresh-Token": {otherRefresh}}, fmt.Sprintf(`{"step_up_token":%q}`, final))
	expect(t, r, http.StatusBadRequest, "token_mismatch")

	r = e.refreshWith(final)
	expect(t, r, http.StatusOK, "")
	e.refresh, _ = e.c.grant(r)
	expect(t, e.refreshWith(final), http.StatusConflict, "token_reused")
	// The refused refresh left the refresh token unspent.
	e.c.mustRefresh(e.refresh)
	if got := e.srv.Stats().ReuseEvents; got != 0 {
		t.Fatalf("a replayed step_up_token counted as refresh-token reuse (%d)", got)
	}
}

// TestStepUpChallengeBoundProof: /otp/check of a step-up takes only a proof
// with the challenge's jti, no nonce, by the session's key; a refused
// proof burns nothing.
func TestStepUpChallengeBoundProof(t *testing.T) {
	e := newStepUpEnv(t)
	challenge := e.request("transfer:write")
	vt := e.sendOTP(challenge)
	other, _ := newRawKey(t)
	otherHdr := map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": publicJWK(t, other)}
	before := e.srv.Stats().Rejections
	for _, tc := range []struct {
		name, proof, code string
	}{
		{"no proof", "", "missing_dpop_proof"},
		{"wrong jti", e.boundProof(challenge, func(c map[string]any) { c["jti"] = dpop.NewJTI() }), "invalid_dpop_proof"},
		{"fresh jti from dpop.Key", proofFor(t, e.c.key, "POST", e.srv.URL+"/v1/session/otp/check", dpop.ProofOptions{Now: e.clock.Now()}), "invalid_dpop_proof"},
		{"with nonce", e.boundProof(challenge, func(c map[string]any) { c["nonce"] = "n" }), "invalid_dpop_proof"},
		{"wrong htu", e.boundProof(challenge, func(c map[string]any) { c["htu"] = e.srv.URL + "/v1/session/otp" }), "invalid_dpop_proof"},
		{"another key", forge(t, other, otherHdr, map[string]any{"jti": challengeClaimsOf(t, challenge).ID, "htm": "POST",
			"htu": e.srv.URL + "/v1/session/otp/check", "iat": e.clock.Now().Unix()}), "dpop_key_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, e.check(challenge, vt, DefaultOTPCode, tc.proof), http.StatusUnauthorized, tc.code)
		})
	}
	got := rejectionDelta(before, e.srv.Stats().Rejections)
	for _, reason := range []string{"missing_dpop_proof", "jti_mismatch", "challenge_proof_nonce", "htu_mismatch", "key_mismatch"} {
		if got[reason] == 0 {
			t.Errorf("no rejection counted as %s: %v", reason, got)
		}
	}
	challengeFrom(t, e.check(challenge, vt, DefaultOTPCode, e.boundProof(challenge, nil)))
}

// TestStepUpNeedsBearer: step-up routes are for a live session's access
// token (and a proof, when sent, by its DPoP key); a step-up code cannot
// log in.
func TestStepUpNeedsBearer(t *testing.T) {
	e := newStepUpEnv(t)
	body := `{"scope":"transfer:write"}`
	expect(t, e.c.dpopCall("POST", "/v1/session/stepup/request", nil, body), http.StatusUnauthorized, "unauthorized")
	// Web SDK 0.6.0 sends no proof here; one that is sent must be the session's.
	expect(t, call(t, "POST", e.srv.URL+"/v1/session/stepup/request", bearer(e.access), body), http.StatusOK, "")
	stranger := &client{t: t, base: e.srv.URL, key: newKey(t), now: e.clock.Now}
	expect(t, stranger.dpopCall("POST", "/v1/session/stepup/request", bearer(e.access), body), http.StatusUnauthorized, "dpop_key_mismatch")

	challenge := e.request("transfer:write")
	cont := fmt.Sprintf(`{"challenge_token":%q,"verification_token":"v"}`, challenge)
	expect(t, call(t, "POST", e.srv.URL+"/v1/session/stepup/continue", nil, cont), http.StatusUnauthorized, "unauthorized")
	// The sandbox's one step is the OTP: a custom verification token cannot skip it.
	expect(t, call(t, "POST", e.srv.URL+"/v1/session/stepup/continue", bearer(e.access), cont), http.StatusBadRequest, "step_bypassed")

	vt := e.sendOTP(challenge)
	expect(t, call(t, "POST", e.srv.URL+"/v1/session/otp/check", http.Header{"X-Verification-Token": {vt}}, `{"code":"123456"}`),
		http.StatusBadRequest, "missing_challenge_token")
	// A step-up challenge is no login challenge.
	expect(t, e.c.dpopCall("POST", "/v1/session/login/finalize", nil, fmt.Sprintf(`{"challenge_token":%q}`, challenge)),
		http.StatusUnauthorized, "invalid_challenge_token")
	// Nor does it outlive its session.
	e.srv.RevokeSession(challengeClaimsOf(t, challenge).SessionID)
	expect(t, e.check(challenge, vt, DefaultOTPCode, e.boundProof(challenge, nil)), http.StatusUnauthorized, "invalid_challenge_token")
}
